"""The one-request streamed export of a project's annotations: every annotation, filters, formats, access,
and memory that stays flat as the number of annotations grows (1M rows: bench/streamed_export.py)."""

from __future__ import annotations

import io
import json
import tracemalloc
from datetime import timedelta

import pandas as pd
import pytest
from django.utils import timezone

from annotate.models import Annotation, AnnotationTask
from annotate.workflow import queue
from annotate.workflow.services import Submission, annotation_reject, annotation_submit
from bench.streamed_export import seed_annotations
from projects.roles import Role
from tests.annotate.factories_workflow import set_workflow, tasks_with_images
from tests.factories import MembershipFactory, UserFactory, api_client_for

pytestmark = pytest.mark.django_db


def url(project, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"/api/projects/{project.pk}/annotations/export/" + (f"?{query}" if query else "")


def body(response) -> bytes:
    assert response.status_code == 200, response.content if not response.streaming else response.status_code
    return b"".join(response.streaming_content)


@pytest.fixture
def annotated(project, annotator, admin_user):
    """Three tasks (one with a key and metadata), each ranked by two annotators; one answer rejected."""
    set_workflow(project, overlap=2)
    tasks = tasks_with_images(project, 3)
    AnnotationTask.objects.filter(pk=tasks[0].pk).update(external_key="row-1", metadata={"source": "lab"})
    second = UserFactory(username="bob-annotator", role=Role.ANNOTATOR)
    MembershipFactory(project=project, user=second, role=Role.ANNOTATOR)
    for user in (annotator, second):
        while (handout := queue.task_next(project=project, user=user)).task is not None:
            ids = [str(ti.image_id) for ti in handout.task.task_images.order_by("position")]
            annotation_submit(project=project, user=user, task_id=handout.task.pk, submission=Submission(
                idempotency_key=f"{user.pk}-{handout.task.pk}", ranking=[[i] for i in ids], rationale="why"))
    rejected = Annotation.objects.filter(annotator=second).order_by("pk").first()
    annotation_reject(project=project, annotation_id=rejected.pk, reviewer=admin_user)
    return project


def test_jsonl_export_holds_every_annotation_and_pandas_reads_it(annotated, ml_engineer):
    data = body(api_client_for(ml_engineer).get(url(annotated)))
    frame = pd.read_json(io.BytesIO(data), lines=True)
    assert len(frame) == Annotation.objects.filter(project=annotated).count() == 6
    first = json.loads(data.splitlines()[0])
    stored = Annotation.objects.order_by("pk").first()
    assert first["id"] == stored.pk and first["ranking"] == stored.ranking
    assert (first["task_key"], first["task_metadata"], first["annotator"]) == ("row-1", {"source": "lab"},
                                                                               "anna-annotator")
    assert [image["id"] for image in first["images"]] == [group[0] for group in stored.ranking]
    assert first["images"][0]["url"].startswith("/generation/images/") and first["images"][0]["origin"] == "generated"
    assert sorted(frame["status"]) == ["rejected"] + ["submitted"] * 5


def test_filters_status_annotator_template_version_and_since(annotated, ml_engineer):
    client = api_client_for(ml_engineer)

    def ids(**params):
        return [json.loads(line)["id"] for line in body(client.get(url(annotated, **params))).splitlines()]

    assert len(ids(status="submitted")) == 5 and len(ids(status="rejected")) == 1
    assert len(ids(status="submitted,rejected")) == 6
    assert len(ids(annotator="bob-annotator")) == 3
    assert ids(template_version=999) == []
    later = (timezone.now() + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert ids(since=later) == []
    rejected = Annotation.objects.get(status="rejected")
    Annotation.objects.exclude(pk=rejected.pk).update(updated_at=timezone.now() - timedelta(days=1))
    since = (timezone.now() - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert ids(since=since) == [rejected.pk]  # changed since: the rejection


@pytest.mark.parametrize(("params", "field"), [({"status": "done"}, "status"), ({"since": "yesterday"}, "since"),
                                               ({"format": "xml"}, "format"), ({"template_version": "x"},
                                                                           "template_version")])
def test_bad_filters_get_a_400_naming_the_parameter(annotated, ml_engineer, params, field):
    response = api_client_for(ml_engineer).get(url(annotated, **params))
    assert response.status_code == 400 and response.json()["field"] == field


def test_label_studio_json_groups_annotations_by_task(annotated, admin_user):
    tasks = json.loads(body(api_client_for(admin_user).get(url(annotated, format="json"))))
    assert [len(task["annotations"]) for task in tasks] == [2, 2, 2]
    first = tasks[0]
    assert first["data"]["task_key"] == "row-1" and first["data"]["metadata"] == {"source": "lab"}
    ranker = first["annotations"][0]["result"][0]
    assert ranker["type"] == "ranker" and ranker["value"]["ranker"]["rank"][0] == [first["data"]["image_ids"][0]]
    assert first["annotations"][0]["result"][1]["value"]["text"] == ["why"]


def test_only_ml_engineers_and_admins_export_and_outsiders_see_nothing(annotated, annotator, other_project,
                                                                       ml_engineer):
    assert api_client_for(annotator).get(url(annotated)).status_code == 403
    assert api_client_for(ml_engineer).get(url(other_project)).status_code == 404


def _peak_bytes(client, project) -> tuple[int, int]:
    tracemalloc.start()
    try:
        response = client.get(url(project))
        rows = sum(block.count(b"\n") for block in response.streaming_content)
        return rows, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_as_the_export_grows(project, other_project, ml_engineer):
    """Ten times the annotations, about the same peak: rows stream from a server-side cursor in chunks."""
    MembershipFactory(project=other_project, user=ml_engineer, role=Role.ML_ENGINEER)
    seed_annotations(project, tasks=20, annotators=150)  # 3,000 annotations (about one and a half chunks)
    seed_annotations(other_project, tasks=100, annotators=300)  # 30,000
    client = api_client_for(ml_engineer)
    small_rows, small_peak = _peak_bytes(client, project)
    big_rows, big_peak = _peak_bytes(client, other_project)
    assert (small_rows, big_rows) == (3_000, 30_000)
    assert big_peak < 1.5 * small_peak, (small_peak, big_peak)
