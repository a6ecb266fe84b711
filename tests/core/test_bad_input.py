"""Bad input is a 400 naming the field (or a 404 for an id in the path), never a 500 (issue 21 items 3-5, 7)."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from annotate.builder import services as template_services
from tests.factories import PASSWORD, api_client_for

HUGE = 2**63  # one past a bigint
SUPERSCRIPT_TWO = "²"  # str.isdigit() says yes, int() says no


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.fixture
def api(admin_user):
    return api_client_for(admin_user)


QUERY_PARAMETERS = [
    ("/api/exports/?project={v}", "project"),
    ("/api/templates/?project={v}", "project"),
    ("/api/finetune-runs/?project={v}", "project"),
    ("/api/template-versions/?template={v}", "template"),
    ("/api/projects/{p}/tasks/?prompt_set={v}", "prompt_set"),
    ("/api/projects/{p}/annotations/?task={v}", "task"),
    ("/api/projects/{p}/tasks/?page={v}", "page"),
    ("/api/projects/{p}/tasks/?page_size={v}", "page_size"),
    ("/api/exports/?page={v}", "page"),
]


def test_query_parameters_are_parsed_in_one_place(api, project):
    for url, field in QUERY_PARAMETERS:
        for value in (SUPERSCRIPT_TWO, str(HUGE), "", "-1"):
            response = api.get(url.format(p=project.pk, v=value))
            assert (response.status_code, response.json().get("field")) == (400, field), (url, value)


def test_a_template_export_version_of_superscript_two_is_a_400(api, project, admin_user):
    template = template_services.template_create_from_preset(project=project, preset="rlhf_image_generation",
                                                             created_by=admin_user)
    response = api.get(f"/api/templates/{template.pk}/export/?version={SUPERSCRIPT_TWO}")
    assert (response.status_code, response.json()["field"]) == (400, "version")


PATHS = [
    "/api/projects/{huge}/tasks/next/", "/api/projects/{huge}/tasks/1/skip/", "/api/projects/{huge}/settings/",
    "/api/exports/{huge}/", "/api/projects/{huge}/", "/api/templates/{huge}/", "/api/reward-runs/{huge}/",
    "/api/finetune-runs/{sup}/retry/", "/api/generation-jobs/{huge}/", "/api/reward-models/{sup}/",
]


def test_ids_in_the_path_out_of_range_are_not_found(api, project):
    for path in PATHS:
        url = path.format(p=project.pk, huge=HUGE, sup=SUPERSCRIPT_TWO)
        response = api.post(url, {"reason": "x"}, format="json") if url.endswith(("next/", "skip/", "retry/")) \
            else api.get(url)
        assert response.status_code == 404, (url, response.content)


@pytest.mark.parametrize(("body", "field"), [
    ({"base_version": SUPERSCRIPT_TWO, "method": "dpo"}, "base_version"),
    ({"base_version": str(HUGE), "method": "dpo"}, "base_version"),
    ({"base_version": "x", "method": "dpo", "export": HUGE}, "export"),
])
def test_run_bodies_name_the_bad_id(api, project, body, field):
    response = api.post("/api/finetune-runs/", body, format="json")
    assert (response.status_code, response.json().get("field") or next(iter(response.json()))) == (400, field)


def test_deep_json_is_a_400_on_validate_and_the_body(api):
    nested = json.loads(deep(50))
    response = api.post("/api/templates/validate/", {"schema": {"schema_version": 1, "components": nested}},
                        format="json")
    assert response.status_code == 200
    assert response.json()["valid"] is False
    assert "deeper than" in response.json()["errors"][0]["message"]
    response = api.post("/api/templates/validate/", data=f'{{"schema": {deep(100_000)}}}',
                        content_type="application/json")
    assert response.status_code == 400
    assert "deeper than" in response.json()["detail"]


def test_deep_json_in_the_template_import_form_names_the_file(client, admin_user, project):
    assert client.login(username=admin_user.username, password=PASSWORD)
    response = client.post(reverse("annotate:template_import", args=[project.pk]), {"json": deep(100_000)})
    assert response.status_code == 400
    assert "deeper than" in response.content.decode()
    assert not project.annotation_templates.exists()


def test_deep_jsonl_metadata_names_its_line(api, project):
    lines = [json.dumps({"prompt": "a red circle"}), '{"prompt": "a blue square", "metadata": {"a": ' + deep(5000) + "}}"]
    upload = ("prompts.jsonl", "\n".join(lines).encode())
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api.post(f"/api/projects/{project.pk}/prompt-sets/",
                        {"file": SimpleUploadedFile(*upload)}, format="multipart")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"line": 2, "message": "the line nests deeper than 20 levels"}]
    assert not project.prompts.exists()


@pytest.mark.parametrize(("settings_body", "field"), [
    ({"generation_settings": {"steps": 1e9}}, "generation_settings.steps"),
    ({"generation_settings": {"steps": 10**9}}, "generation_settings.steps"),
    ({"generation_settings": {"width": 100_000}}, "generation_settings.width"),
    ({"generation_settings": {"sampler": "x"}}, "generation_settings.sampler"),
    ({"lease_seconds": HUGE}, "lease_seconds"),
    ({"gold_rate": 2}, "gold_rate"),
])
def test_workflow_settings_are_held_to_the_workers_limits(api, project, settings_body, field):
    response = api.patch(f"/api/projects/{project.pk}/settings/", settings_body, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body.get("field", next(iter(body))) == field
    assert api.get(f"/api/projects/{project.pk}/settings/").json()["generation_settings"] == {}


@pytest.mark.parametrize(("body", "field"), [
    ({"template_versions": [1e30]}, "template_versions"),
    ({"template_versions": [10**30]}, "template_versions"),
    ({"name": "x" * 100_000}, "name"),
])
def test_exports_are_validated_at_the_door(api, project, body, field):
    response = api.post("/api/exports/", {"project": project.pk, "format": "pickapic", **body}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not project.exports.exists()


def test_a_serializer_error_names_its_first_field_dotted_and_indexed():
    from rest_framework import serializers

    from core.api import exception_handler

    class Row(serializers.Serializer):
        prompt = serializers.CharField(max_length=5)

    class Body(serializers.Serializer):
        name = serializers.CharField(required=False)
        rows = Row(many=True)

    body = Body(data={"name": "ok", "rows": [{"prompt": "fine"}, {"prompt": "far too long"}]})
    assert not body.is_valid()
    response = exception_handler(serializers.ValidationError(body.errors), {})
    assert response.status_code == 400
    assert response.data["field"] == "rows[1].prompt"
    assert response.data["detail"] == "Ensure this field has no more than 5 characters."
    assert response.data["rows"][1]["prompt"] == ["Ensure this field has no more than 5 characters."]
