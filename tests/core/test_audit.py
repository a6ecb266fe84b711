"""The audit trail (issue 21 item 10): services write entries; project admins read them on a page and in the
API; entries outlive what they name."""

from __future__ import annotations

from auditlog.models import LogEntry
from django.urls import reverse

from annotate.builder import services as template_services
from annotate.workflow import queue
from annotate.workflow.services import Submission, annotation_reject, annotation_submit
from generation.services import model_version_set_enabled
from projects.roles import Role
from projects.services import membership_set
from rlhf.datasets import services as export_services
from tests.annotate.factories_workflow import RANK_SCHEMA, model_version, set_workflow, task_with_images
from tests.factories import PASSWORD, UserFactory, api_client_for


def events(project) -> list[str]:
    return [e.additional_data["event"] for e in LogEntry.objects.filter(additional_data__project=project.pk)
            .order_by("pk")]


def test_services_write_who_did_what_and_entries_outlive_the_object(project, admin_user, annotator, ml_engineer):
    newcomer = UserFactory(username="newcomer")
    membership_set(project=project, user=newcomer, role=Role.ANNOTATOR, by=admin_user)
    membership_set(project=project, user=newcomer, role=Role.ML_ENGINEER, by=admin_user)
    membership_set(project=project, user=newcomer, role=Role.ML_ENGINEER, by=admin_user)  # no change, no entry
    template = template_services.template_create(project=project, name="Rank", created_by=admin_user,
                                                 schema=RANK_SCHEMA, strict=True)
    version = template_services.template_version_publish(template=template, created_by=admin_user)
    set_workflow(project, template_version=version, overlap=1)
    task = task_with_images(project)
    queue.task_next(project=project, user=annotator)
    ids = [str(ti.image_id) for ti in task.task_images.order_by("position")]
    answer, _ = annotation_submit(project=project, user=annotator, task_id=task.pk, submission=Submission(
        idempotency_key="k1", ranking=[[i] for i in ids]))
    annotation_reject(project=project, annotation_id=answer.pk, reviewer=admin_user, note="sloppy")
    export = export_services.preference_export_create(
        project=project, user=ml_engineer, request=export_services.export_request_parse({"format": "pickapic"}))
    assert events(project) == ["member.added", "member.role_changed", "template.published",
                               "annotation.rejected", "export.created"]
    role_change = LogEntry.objects.get(additional_data__event="member.role_changed")
    assert (role_change.actor, role_change.changes) == (admin_user, {"role": ["annotator", "ml_engineer"]})
    export_pk = export.pk
    export.delete()
    kept = LogEntry.objects.get(additional_data__event="export.created")
    assert (kept.object_pk, kept.additional_data["actor"]) == (str(export_pk), ml_engineer.username)

    version = model_version()
    model_version_set_enabled(version=version, enabled=False, by=admin_user)
    disabled = LogEntry.objects.get(additional_data__event="model_version.disabled")
    assert (disabled.object_pk, disabled.changes) == (str(version.pk), {"enabled": [True, False]})


def test_only_project_admins_read_the_trail(client, project, admin_user, annotator, other_project):
    membership_set(project=project, user=UserFactory(username="newcomer"), role=Role.ANNOTATOR, by=admin_user)
    url = reverse("project_audit", args=[project.pk])
    assert client.login(username=admin_user.username, password=PASSWORD)
    page = client.get(url)
    assert page.status_code == 200
    assert 'data-event="member.added"' in page.content.decode() and "newcomer" in page.content.decode()
    assert client.get(reverse("project_audit", args=[other_project.pk])).status_code == 404
    body = api_client_for(admin_user).get(f"/api/projects/{project.pk}/audit/").json()
    assert body["count"] == 1
    (entry,) = body["results"]
    assert (entry["event"], entry["actor"], entry["changes"]) == ("member.added", admin_user.username,
                                                                  {"role": [None, "annotator"]})
    assert api_client_for(annotator).get(f"/api/projects/{project.pk}/audit/").status_code == 403
    assert api_client_for(admin_user).get(f"/api/projects/{other_project.pk}/audit/").status_code == 404
    client.logout()
    assert client.login(username=annotator.username, password=PASSWORD)
    assert client.get(url).status_code == 403
