"""The template API: same schema, located errors, immutability, permissions, OpenAPI."""

from __future__ import annotations

import pytest

from annotate.builder.presets import rlhf_image_generation
from annotate.builder.selectors import render_annotation_form
from tests.factories import api_client_for

pytestmark = pytest.mark.django_db


def test_create_publish_edit_cycle(admin_user, project):
    api = api_client_for(admin_user)
    created = api.post("/api/templates/", {"project": project.pk, "name": "API made",
                                           "schema": rlhf_image_generation()}, format="json")
    assert created.status_code == 201, created.json()
    template_id = created.json()["id"]
    assert created.json()["latest_version"]["status"] == "draft"
    published = api.post(f"/api/templates/{template_id}/publish/")
    assert published.status_code == 200 and published.json()["number"] == 1
    v1 = published.json()

    schema = rlhf_image_generation()
    schema["components"].pop()
    draft = api.put(f"/api/templates/{template_id}/draft/", {"schema": schema}, format="json")
    assert draft.status_code == 200 and draft.json()["number"] == 2 and draft.json()["status"] == "draft"
    again = api.get(f"/api/template-versions/{v1['id']}/").json()
    assert again["schema"] == v1["schema"] and again["status"] == "published"


def test_api_errors_name_component_and_field(admin_user, project):
    api = api_client_for(admin_user)
    schema = {"schema_version": 1, "components": [
        {"type": "images", "name": "pics", "config": {"source": "task", "count": 99}},
        {"type": "ranking", "name": "rank", "config": {}},
    ]}
    response = api.post("/api/templates/", {"project": project.pk, "name": "Bad", "schema": schema}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == "pics.count"
    assert {e["location"] for e in body["errors"]} == {"pics.count", "rank.images"}
    check = api.post("/api/templates/validate/", {"schema": schema}, format="json").json()
    assert check["valid"] is False and len(check["errors"]) == 2


def test_preset_import_export(admin_user, project):
    api = api_client_for(admin_user)
    made = api.post("/api/templates/preset/", {"project": project.pk, "preset": "pairwise_ab_with_tie"},
                    format="json")
    assert made.status_code == 201
    exported = api.get(f"/api/templates/{made.json()['id']}/export/").json()
    imported = api.post("/api/templates/import/", {"project": project.pk, "data": exported}, format="json")
    assert imported.status_code == 201
    assert imported.json()["latest_version"]["schema"] == exported["schema"]


def test_api_template_renders_like_builder_preset(admin_user, project, client):
    """A template made through the API renders exactly as the same preset does in the builder preview."""
    api = api_client_for(admin_user)
    made = api.post("/api/templates/", {"project": project.pk, "name": "Same", "schema": rlhf_image_generation()},
                    format="json").json()
    client.force_login(admin_user)
    page = client.get(f"/projects/{project.pk}/templates/{made['id']}/").content.decode()
    assert str(render_annotation_form(schema=rlhf_image_generation(), preview=True)) in page


def test_annotator_and_non_members(annotator, admin_user, other_project, project):
    api = api_client_for(annotator)
    assert api.get("/api/templates/").status_code == 403
    assert api.post("/api/templates/", {"project": project.pk, "name": "x"}, format="json").status_code == 403
    admin_api = api_client_for(admin_user)
    response = admin_api.post("/api/templates/preset/", {"project": other_project.pk, "preset": "pairwise_ab_with_tie"},
                              format="json")
    assert response.status_code == 404


def test_openapi_describes_templates(admin_user):
    api = api_client_for(admin_user)
    schema = api.get("/api/schema/?format=json").json()
    assert "/api/templates/" in schema["paths"]
    assert "/api/templates/{id}/publish/" in schema["paths"]
    assert "/api/template-versions/{id}/" in schema["paths"]
