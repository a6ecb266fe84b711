"""The workflow API: the annotator loop, validation errors, filtering, and access on every endpoint."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotate.models import Annotation, AnnotationTask
from annotate.workflow import queue
from projects.roles import Role
from tests.annotate.factories_workflow import images_for, set_workflow, task_with_images, tasks_with_images
from tests.factories import MembershipFactory, UserFactory, api_client_for


def image_ids(task):
    return [str(pk) for pk in task.task_images.order_by("position").values_list("image_id", flat=True)]


def base(project):
    return f"/api/projects/{project.pk}/"


def test_annotator_loop_next_then_submit(project, annotator):
    task = task_with_images(project)
    client = api_client_for(annotator)
    response = client.post(base(project) + "tasks/next/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["task_id"] == task.pk and [i["id"] for i in body["images"]] == image_ids(task)
    assert body["ranking_rules"] == {"mode": "full", "allow_ties": False, "allow_partial": False}
    ranking = [[i] for i in reversed(image_ids(task))]
    payload = {"ranking": ranking, "idempotency_key": "k1", "rationale": "D is sharpest"}
    first = client.post(base(project) + f"tasks/{task.pk}/submit/", payload, format="json")
    assert first.status_code == 204, first.content  # stored, and no task left
    (stored,) = Annotation.objects.all()
    assert stored.ranking == ranking and first["Location"] == base(project) + f"annotations/{stored.pk}/"
    retry = client.post(base(project) + f"tasks/{task.pk}/submit/", payload, format="json")
    assert retry.status_code == 204 and retry["Location"] == first["Location"]
    assert Annotation.objects.count() == 1
    assert client.post(base(project) + "tasks/next/").status_code == 204


def test_submit_answers_with_the_next_task_in_one_round_trip(project, annotator):
    """The annotator loop through submit-returns-next: one request per annotation, by id or by task key."""
    tasks = tasks_with_images(project, 3)
    AnnotationTask.objects.filter(pk=tasks[1].pk).update(external_key="batch-7/row 2", metadata={"src": "lab"})
    client = api_client_for(annotator)
    handout = client.post(base(project) + "tasks/next/").json()
    seen, statuses = [], []
    while True:
        seen.append(handout["task_id"])
        ranking = [[image["id"]] for image in handout["images"]]
        path = (f"tasks/by-key/{handout['task_key']}/submit/" if handout["task_key"]
                else f"tasks/{handout['task_id']}/submit/")
        key = f"k-{handout['task_id']}"
        response = client.post(base(project) + path, {"ranking": ranking, "idempotency_key": key}, format="json")
        statuses.append(response.status_code)
        if response.status_code == 204:
            break
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["submitted"]["task"] == seen[-1] and body["submitted_created"] is True
        assert body["submitted"]["ranking"] == ranking
        retry = client.post(base(project) + path, {"ranking": ranking, "idempotency_key": key}, format="json")
        assert retry.json()["submitted_created"] is False and retry.json()["task_id"] == body["task_id"]
        handout = body
        if handout["task_id"] == tasks[1].pk:
            assert (handout["task_key"], handout["task_metadata"]) == ("batch-7/row 2", {"src": "lab"})
    assert seen == [t.pk for t in tasks] and statuses == [200, 200, 204]
    assert Annotation.objects.filter(annotator=annotator).count() == 3
    missing = client.post(base(project) + "tasks/by-key/nope/submit/", {"ranking": [], "idempotency_key": "z"},
                          format="json")
    assert missing.status_code == 404 and missing.json()["field"] == "task_key"


@pytest.mark.parametrize(
    ("ranking", "fragment"),
    [
        (lambda ids: [[ids[0]], [ids[1]]], "rank every image"),
        (lambda ids: [[ids[0]], [ids[0]], [ids[1]], [ids[2]], [ids[3]]], "more than once"),
        (lambda ids: [[ids[0], ids[1]], [ids[2]], [ids[3]]], "ties are not allowed"),
        (lambda ids: [[ids[0]], [ids[1]], [ids[2]], ["nope"]], "unknown image"),
        (lambda ids: {"a": 1}, "list of groups"),
    ],
)
def test_bad_rankings_get_a_400_that_says_what_is_wrong(project, annotator, ranking, fragment):
    task = task_with_images(project)
    client = api_client_for(annotator)
    client.post(base(project) + "tasks/next/")
    response = client.post(base(project) + f"tasks/{task.pk}/submit/",
                           {"ranking": ranking(image_ids(task)), "idempotency_key": "x"}, format="json")
    assert response.status_code == 400
    assert fragment in response.json()["detail"] and response.json()["field"] == "ranking"


def test_image_of_another_task_is_rejected(project, annotator):
    task, other = tasks_with_images(project, 2)
    client = api_client_for(annotator)
    client.post(base(project) + "tasks/next/")
    ranking = [[i] for i in image_ids(task)[:3]] + [[image_ids(other)[0]]]
    response = client.post(base(project) + f"tasks/{task.pk}/submit/", {"ranking": ranking, "idempotency_key": "x"},
                           format="json")
    assert response.status_code == 400 and "unknown image" in response.json()["detail"]


def test_query_counts_are_small_and_do_not_grow(project):
    """next and submit each run a fixed number of SQL statements, whatever the images/tasks/annotators."""
    def loop_counts(n_images, n_tasks, n_annotators):
        users = [UserFactory(role=Role.ANNOTATOR, password=None) for _ in range(n_annotators)]
        for user in users:
            MembershipFactory(project=project, user=user, role=Role.ANNOTATOR)
        tasks_with_images(project, n_tasks, count=n_images)
        counts = []
        for user in users:
            client = api_client_for(user)
            with CaptureQueriesContext(connection) as next_q:
                body = client.post(base(project) + "tasks/next/").json()
            ranking = [[image["id"]] for image in body["images"]]
            with CaptureQueriesContext(connection) as submit_q:
                response = client.post(base(project) + f"tasks/{body['task_id']}/submit/",
                                       {"ranking": ranking, "idempotency_key": "k"}, format="json")
            assert response.status_code == 200
            counts.append((len(statements(next_q)), len(statements(submit_q))))
        return counts

    def statements(captured):  # less the savepoints of the test's own transaction
        return [q for q in captured.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]

    small = loop_counts(2, 4, 2)  # each submit leases the next task too: two tasks an annotator
    big = loop_counts(8, 20, 6)
    assert len(set(small + big)) == 1, (small, big)
    # next: token, project with access and lease, lock the task with its prompt and images, count the slot,
    # insert the lease. submit: token, project, lock the lease with its replay, images and whether any webhook
    # endpoint listens, insert the annotation, end the lease, then next's last three (bench/annotation_loop.py)
    assert small[0] == (5, 8), small


def test_tasks_list_filters_and_paginates_for_reviewers(project, admin_user, annotator):
    tasks_with_images(project, 3)
    task_with_images(project, gold_ranking="identity")
    client = api_client_for(admin_user)
    body = client.get(base(project) + "tasks/", {"page_size": 2}).json()
    assert body["count"] == 4 and len(body["results"]) == 2 and body["next"]
    gold = client.get(base(project) + "tasks/", {"is_gold": "true"}).json()
    assert gold["count"] == 1 and gold["results"][0]["gold_ranking"]
    assert client.get(base(project) + "tasks/", {"is_gold": "maybe"}).status_code == 400
    assert api_client_for(annotator).get(base(project) + "tasks/").status_code == 403


def test_gold_is_blind_to_annotators(project, annotator):
    set_workflow(project, gold_rate=1.0)
    gold = task_with_images(project, gold_ranking="identity")
    client = api_client_for(annotator)
    body = client.post(base(project) + "tasks/next/").json()
    assert body["task_id"] == gold.pk and body["is_gold"] is False
    detail = client.get(base(project) + f"tasks/{gold.pk}/").json()
    assert detail["gold_ranking"] is None and detail["is_gold"] is False


def test_prompt_upload_through_the_api(project, admin_user):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = api_client_for(admin_user)
    good = SimpleUploadedFile("p.csv", b"prompt,seed\na cat,1\na dog,2\na cat,3\n", content_type="text/csv")
    response = client.post(base(project) + "prompt-sets/", {"file": good, "deduplicate": "true"}, format="multipart")
    assert response.status_code == 201, response.content
    assert response.json()["created"] == 2 and response.json()["duplicates"][0]["line"] == 4
    again = SimpleUploadedFile("q.csv", b"prompt\na cat\na cat\n", content_type="text/csv")
    response = client.post(base(project) + "prompt-sets/", {"file": again}, format="multipart")
    assert response.status_code == 201 and response.json()["created"] == 2 and response.json()["duplicates"] == []
    bad = SimpleUploadedFile("p.jsonl", b'{"prompt": "x"}\n{"seed": 1}\n', content_type="application/json")
    response = client.post(base(project) + "prompt-sets/", {"file": bad}, format="multipart")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"line": 2, "message": "missing the 'prompt' key"}]
    assert AnnotationTask.objects.filter(project=project).count() == 4
    assert client.get(base(project) + "prompt-sets/").json()["count"] == 2


def test_settings_archive_and_reject_through_the_api(project, admin_user, annotator):
    admin = api_client_for(admin_user)
    response = admin.patch(base(project) + "settings/", {"overlap": 3, "task_order": "random"}, format="json")
    assert response.status_code == 200 and response.json()["overlap"] == 3
    assert admin.patch(base(project) + "settings/", {"overlap": 0}, format="json").status_code == 400
    assert api_client_for(annotator).patch(base(project) + "settings/", {"overlap": 2}, format="json").status_code == 403
    task = task_with_images(project)
    queue.task_next(project=project, user=annotator)
    client = api_client_for(annotator)
    client.post(base(project) + f"tasks/{task.pk}/submit/",
                {"ranking": [[i] for i in image_ids(task)], "idempotency_key": "a"}, format="json")
    created = {"id": Annotation.objects.get(idempotency_key="a").pk}
    amended = client.post(base(project) + f"annotations/{created['id']}/amend/",
                          {"ranking": [[i] for i in reversed(image_ids(task))], "idempotency_key": "b"},
                          format="json")
    assert amended.status_code == 201 and amended.json()["supersedes"] == created["id"]
    assert client.post(base(project) + f"annotations/{amended.json()['id']}/reject/").status_code == 403
    rejected = admin.post(base(project) + f"annotations/{amended.json()['id']}/reject/", {"note": "no"}, format="json")
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    listing = admin.get(base(project) + "annotations/", {"status": "superseded"}).json()
    assert [a["id"] for a in listing["results"]] == [created["id"]]
    assert admin.get(base(project) + "agreement/").status_code == 200
    assert admin.post(base(project) + "archive/").json()["archived_at"]
    assert client.post(base(project) + "tasks/next/").status_code == 400  # archived
    assert admin.post(base(project) + "unarchive/").json()["archived_at"] is None


ENDPOINTS = [
    ("post", "tasks/next/", None),
    ("get", "tasks/", None),
    ("post", "tasks/", {"prompt": "x"}),
    ("get", "tasks/{task}/", None),
    ("post", "tasks/{task}/submit/", {"ranking": [], "idempotency_key": "k"}),
    ("post", "tasks/{task}/skip/", {"reason": "r"}),
    ("put", "tasks/{task}/images/", {"image_ids": []}),
    ("get", "prompt-sets/", None),
    ("post", "prompt-sets/", {}),
    ("get", "annotations/", None),
    ("get", "annotations/{annotation}/", None),
    ("post", "annotations/{annotation}/amend/", {"ranking": [], "idempotency_key": "k"}),
    ("post", "annotations/{annotation}/reject/", {}),
    ("get", "agreement/", None),
    ("get", "settings/", None),
    ("patch", "settings/", {"overlap": 2}),
    ("post", "archive/", None),
    ("post", "unarchive/", None),
]


@pytest.mark.parametrize(("method", "path", "payload"), ENDPOINTS)
def test_other_projects_are_invisible_on_every_endpoint(other_project, annotator, admin_user, method, path,
                                                        payload):
    """A user who is not a member of a project gets 404 everywhere in it (and no data)."""
    task = task_with_images(other_project)
    stranger = UserFactory(role=Role.ANNOTATOR, password=None)
    MembershipFactory(project=other_project, user=stranger, role=Role.ANNOTATOR)
    queue.task_next(project=other_project, user=stranger)
    from annotate.workflow import services as workflow_services
    from annotate.workflow.services import Submission

    annotation, _ = workflow_services.annotation_submit(
        project=other_project, user=stranger, task_id=task.pk,
        submission=Submission(idempotency_key="s", ranking=[[i] for i in image_ids(task)]))
    url = base(other_project) + path.format(task=task.pk, annotation=annotation.pk)
    for user in (annotator, admin_user):
        client = api_client_for(user)
        response = getattr(client, method)(url, payload, format="json") if payload is not None else getattr(
            client, method)(url)
        assert response.status_code == 404, (user.username, method, url, response.content)
    assert Annotation.objects.filter(project=other_project).count() == 1
    assert not Annotation.objects.filter(annotator__in=[annotator, admin_user]).exists()


def test_annotator_cannot_read_or_answer_another_annotators_task_in_the_same_project(project, annotator):
    task = task_with_images(project)
    other = UserFactory(role=Role.ANNOTATOR, password=None)
    MembershipFactory(project=project, user=other, role=Role.ANNOTATOR)
    queue.task_next(project=project, user=other)
    client = api_client_for(annotator)
    assert client.get(base(project) + f"tasks/{task.pk}/").status_code == 404
    response = client.post(base(project) + f"tasks/{task.pk}/submit/",
                           {"ranking": [[i] for i in image_ids(task)], "idempotency_key": "k"}, format="json")
    assert response.status_code == 400 and "not assigned" in response.json()["detail"]
    other_client = api_client_for(other)
    other_client.post(base(project) + f"tasks/{task.pk}/submit/",
                      {"ranking": [[i] for i in image_ids(task)], "idempotency_key": "k"}, format="json")
    (theirs,) = Annotation.objects.all()
    assert client.get(base(project) + f"annotations/{theirs.pk}/").status_code == 404
    assert client.get(base(project) + "annotations/").json()["count"] == 0
    assert client.post(base(project) + f"annotations/{theirs.pk}/amend/",
                       {"ranking": [[i] for i in image_ids(task)], "idempotency_key": "z"},
                       format="json").status_code == 400


def test_images_of_another_project_cannot_be_attached(project, other_project, admin_user):
    foreign = images_for(other_project, 2, store=False)
    response = api_client_for(admin_user).post(
        base(project) + "tasks/", {"prompt": "x", "image_ids": [str(i.pk) for i in foreign]}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "images"


def test_openapi_schema_describes_the_workflow(client, admin_user):
    client.force_login(admin_user)
    schema = client.get("/api/schema/").content.decode()
    for path in ("/api/projects/{project_id}/tasks/next/", "/api/projects/{project_id}/tasks/{task_id}/submit/",
                 "/api/projects/{project_id}/agreement/"):
        assert path in schema
