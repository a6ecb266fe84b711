"""The Python client against the live test server (real HTTP, real PostgreSQL): every resource that needs
no worker, and the errors a user meets (401, 403, 404, 400 naming the field)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pickwise_client import (
    AuthenticationError,
    Client,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)

from annotate.models import Annotation, AnnotationTask, Prompt, PromptSet
from annotate.workflow.access import workflow_of
from projects.roles import Role
from tests.annotate.factories_workflow import RANK_SCHEMA, images_for
from tests.client.conftest import token_for
from tests.factories import PASSWORD, MembershipFactory, ProjectFactory


def test_projects_are_listed_across_pages_and_their_settings_change(admin_api, project, admin_user, other_project):
    for n in range(55):  # more than one page of 50
        MembershipFactory(project=ProjectFactory(name=f"Bulk {n:02d}"), user=admin_user, role=Role.ANNOTATOR)
    created = admin_api.projects.create("Made by the client", description="from a notebook")
    assert created["description"] == "from a notebook"
    assert admin_api.projects.get(created["id"])["role"] == "admin"  # the creator is its admin

    listed = list(admin_api.projects.list())
    assert len(listed) == 57 and len({p["id"] for p in listed}) == 57  # every page followed, none twice
    assert other_project.pk not in {p["id"] for p in listed}
    assert admin_api.projects.get(project.pk)["name"] == "Shapes"

    changed = admin_api.projects.update_settings(created["id"], images_per_task=2, overlap=3, instructions="Rank!")
    assert (changed["images_per_task"], changed["overlap"], changed["instructions"]) == (2, 3, "Rank!")
    assert admin_api.projects.settings(created["id"])["overlap"] == 3
    assert admin_api.projects.archive(created["id"])["archived_at"] is not None
    assert admin_api.projects.unarchive(created["id"])["archived_at"] is None
    assert admin_api.me()["permissions"] == {"manage": True, "annotate": True, "export": True, "train": True}


def test_api_errors_are_typed_with_status_field_and_message(live_server, admin_api, annotator_api, project,
                                                            other_project, admin_user):
    with Client(live_server.url, "not-a-token") as stranger, pytest.raises(AuthenticationError) as denied:
        list(stranger.projects.list())
    assert denied.value.status == 401 and denied.value.message == "Invalid token."

    with pytest.raises(NotFoundError) as missing:
        admin_api.projects.get(other_project.pk)  # exists, but not theirs: 404, never 403
    assert missing.value.status == 404 and missing.value.url == f"/api/projects/{other_project.pk}/"

    with pytest.raises(ValidationError) as invalid:
        admin_api.projects.update_settings(project.pk, overlap=0)
    assert (invalid.value.status, invalid.value.field) == (400, "overlap")
    assert invalid.value.message == "Overlap must be 1 to 100 annotators per task."
    assert "400 (PATCH /api/projects/" in str(invalid.value) and "overlap: Overlap must be" in str(invalid.value)
    assert admin_api.projects.settings(project.pk)["overlap"] == workflow_of(project).overlap  # nothing half-written

    with pytest.raises(ValidationError) as blank:  # a serializer error: {"name": ["This field may not be blank."]}
        admin_api.projects.create("")
    assert blank.value.field == "name" and blank.value.message == "This field may not be blank."

    with pytest.raises(PermissionDeniedError) as forbidden:
        annotator_api.projects.create("Not mine to create")
    assert forbidden.value.status == 403 and forbidden.value.message == "Only project admins may create projects."

    with pytest.raises(AuthenticationError) as refused:
        Client.login(live_server.url, admin_user.username, "wrong password")
    assert refused.value.status == 400 and "refused the username or password" in refused.value.message
    with Client.login(live_server.url, admin_user.username, PASSWORD) as logged_in:
        assert logged_in.token == token_for(admin_user) and logged_in.me()["username"] == admin_user.username


def test_prompts_import_from_a_list_files_and_a_dataframe(admin_api, project, tmp_path):
    report = admin_api.prompt_sets.upload(project.pk, ["a red circle", {"prompt": "a blue square", "seed": 7}],
                                          name="from a list")
    assert report["created"] == 2 and report["duplicates"] == []

    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text("prompt,negative_prompt,seed,tags\na green cross,blurry,3,small;green\na red circle,,,\n")
    report = admin_api.prompt_sets.upload(project.pk, csv_file, deduplicate=True)
    assert report["created"] == 1
    assert report["duplicates"] == [{"line": 3, "text": "a red circle", "first_line": None}]  # already in the project
    jsonl_file = tmp_path / "more.jsonl"
    jsonl_file.write_text('{"prompt": "a yellow diamond", "tags": ["large"]}\n')
    assert admin_api.prompt_sets.upload(project.pk, jsonl_file)["created"] == 1

    frame = pd.DataFrame({"prompt": ["a purple triangle", "an orange circle"],
                          "seed": [np.int64(11), np.nan], "style": ["flat", None]})
    report = admin_api.prompt_sets.upload(project.pk, frame, name="from pandas")
    assert report["created"] == 2
    stored = Prompt.objects.get(project=project, text="a purple triangle")
    assert (stored.seed, stored.metadata) == (11, {"style": "flat"})
    assert Prompt.objects.get(project=project, text="an orange circle").seed is None
    assert Prompt.objects.get(project=project, text="a green cross").tags == ["small", "green"]

    sets = list(admin_api.prompt_sets.list(project.pk))
    assert {s["name"] for s in sets} == {"from a list", "prompts.csv", "more.jsonl", "from pandas"}
    assert AnnotationTask.objects.filter(project=project).count() == 6  # every new prompt became a task


def test_a_bad_prompt_row_imports_nothing_and_is_named(admin_api, project, tmp_path):
    bad_file = tmp_path / "bad.csv"
    bad_file.write_text("prompt,seed\nfine,1\nbroken,x\n,2\n")
    with pytest.raises(ValidationError) as invalid:
        admin_api.prompt_sets.upload(project.pk, bad_file)
    assert invalid.value.field == "file"
    assert [(e.line, e.message) for e in invalid.value.errors] == [
        (3, "seed 'x' is not a whole number"), (4, "the prompt is empty")]

    frame = pd.DataFrame({"prompt": ["fine", "also fine", "bad seed"], "seed": [1, 2, -5]},
                         index=["r1", "r2", "r3"])
    with pytest.raises(ValidationError) as invalid_row:
        admin_api.prompt_sets.upload(project.pk, frame)
    assert invalid_row.value.field == "row r3"
    assert invalid_row.value.message.startswith("seed must be between 0 and ")
    assert not PromptSet.objects.filter(project=project).exists() and not Prompt.objects.exists()


def test_templates_round_trip_and_name_the_broken_component(admin_api, annotator_api, project, tmp_path):
    preset = admin_api.templates.from_preset(project.pk, "pairwise_ab_with_tie")
    assert (preset["name"], preset["latest_version"]["status"]) == ("Pairwise A/B with tie", "draft")

    broken = {"schema_version": 1, "components": [
        {"type": "images", "name": "images", "config": {"source": "task", "count": 4}},
        {"type": "ranking", "name": "ranking", "config": {"images": "nowhere", "mode": "full"}}]}
    assert admin_api.templates.validate(broken)["valid"] is False
    with pytest.raises(ValidationError) as invalid:
        admin_api.templates.create(project.pk, "Broken", schema=broken)
    assert invalid.value.field == "ranking.images"

    template = admin_api.templates.create(project.pk, "Rank four", schema=RANK_SCHEMA)
    assert admin_api.templates.validate(RANK_SCHEMA) == {"valid": True, "errors": []}
    published = admin_api.templates.publish(template["id"])
    assert (published["number"], published["status"]) == (1, "published")
    draft = admin_api.templates.save_draft(template["id"], RANK_SCHEMA)
    assert (draft["number"], draft["status"]) == (2, "draft")

    exported = admin_api.templates.export(template["id"], version=1, path=tmp_path / "rank.json")
    assert exported["schema"] == published["schema"] and (tmp_path / "rank.json").is_file()
    copy = admin_api.templates.import_from(project.pk, tmp_path / "rank.json")
    assert copy["id"] != template["id"] and copy["latest_version"]["schema"] == published["schema"]
    assert {t["id"] for t in admin_api.templates.list(project=project.pk)} >= {template["id"], copy["id"]}
    assert [v["number"] for v in admin_api.templates.versions(template=template["id"])] == [2, 1]
    assert admin_api.templates.version(published["id"])["status"] == "published"

    with pytest.raises(PermissionDeniedError):
        list(annotator_api.templates.list())


def _rank_template(api: Client, project) -> None:
    template = api.templates.create(project.pk, "Rank", schema=RANK_SCHEMA)
    version = api.templates.publish(template["id"])
    api.projects.update_settings(project.pk, template_version=version["id"], overlap=1)


def test_the_annotator_loop_and_review(admin_api, annotator_api, project, annotator):
    _rank_template(admin_api, project)
    tasks = [admin_api.tasks.create(project.pk, f"a shape {n}", image_ids=[str(i.pk) for i in images_for(project)])
             for n in range(2)]
    assert [len(t["images"]) for t in tasks] == [4, 4]
    image_id = tasks[0]["images"][0]["id"]
    assert admin_api.images.read(image_id)[:8] == b"\x89PNG\r\n\x1a\n"  # the permission-checked image view

    handout = annotator_api.tasks.next(project.pk)
    assert handout is not None and handout["ranking_rules"]["mode"] == "full"
    assert annotator_api.tasks.next(project.pk)["task_id"] == handout["task_id"]  # the same lease back
    ranking = [[image["id"]] for image in handout["images"]]
    result = annotator_api.tasks.submit(project.pk, handout["task_id"], ranking,
                                        idempotency_key=handout["idempotency_key"], rationale="biggest first")
    again = annotator_api.tasks.submit(project.pk, handout["task_id"], ranking,
                                       idempotency_key=handout["idempotency_key"])
    assert result is not None and again is not None
    first = result["submitted"]
    assert (result["submitted_created"], again["submitted_created"]) == (True, False)
    assert first["id"] == again["submitted"]["id"] and Annotation.objects.count() == 1  # stores nothing new

    second = annotator_api.tasks.next(project.pk)
    assert second["task_id"] == result["task_id"]  # submit handed out the next task already
    assert annotator_api.tasks.skip(project.pk, second["task_id"], "images did not load")["status"] == "skipped"
    with pytest.raises(ValidationError) as bad_ranking:
        annotator_api.tasks.submit(project.pk, handout["task_id"], [["not-an-image"]])
    assert bad_ranking.value.status == 400

    assert admin_api.tasks.count(project.pk) == 2 and admin_api.tasks.get(project.pk, tasks[1]["id"])["is_open"]
    assert [a["id"] for a in admin_api.annotations.list(project.pk, status="submitted")] == [first["id"]]
    assert admin_api.annotations.get(project.pk, first["id"])["annotator"] == annotator.username
    assert admin_api.annotations.wait(project.pk, at_least=1, progress=False) == 1
    amended = annotator_api.annotations.amend(project.pk, first["id"], list(reversed(ranking)))
    assert amended["supersedes"] == first["id"]
    rejected = admin_api.annotations.reject(project.pk, amended["id"], note="reversed by mistake?")
    assert rejected["status"] == "rejected" and rejected["review_note"] == "reversed by mistake?"
    assert {a["status"] for a in annotator_api.annotations.list(project.pk)} == {"superseded", "rejected"}
    stats = admin_api.projects.agreement(project.pk)["annotators"]
    assert [(s["username"], s["rejected"], s["skipped"]) for s in stats] == [(annotator.username, 1, 1)]

    with pytest.raises(NotFoundError):
        annotator_api.tasks.get(project.pk, 999_999)
    with pytest.raises(PermissionDeniedError):
        list(annotator_api.tasks.list(project.pk))  # reviewing is for admins
