"""The annotator loop's plain SQL (core.rawsql) also runs on SQLite, the embedded default of `make run`.

The rest of the suite runs on PostgreSQL; this test runs the loop through the API in a child
process whose database is a fresh SQLite file.
"""

from __future__ import annotations

from tests.core.test_settings import run_python

SCRIPT = r"""
import uuid
import django
django.setup()
from django.core.management import call_command
from django.db import connection
assert connection.vendor == "sqlite", connection.vendor
call_command("migrate", verbosity=0)

from annotate.models import Annotation, AnnotationTask, TaskAssignment
from projects.roles import Role
from tests.annotate.factories_workflow import set_workflow, task_with_images
from tests.factories import MembershipFactory, ProjectFactory, UserFactory, api_client_for

project = ProjectFactory()
set_workflow(project, overlap=1)
annotator, stranger = UserFactory(role=Role.ANNOTATOR), UserFactory(role=Role.ANNOTATOR)
MembershipFactory(project=project, user=annotator, role=Role.ANNOTATOR)
task = task_with_images(project)
client, base = api_client_for(annotator), f"/api/projects/{project.pk}/"

assert api_client_for(stranger).post(base + "tasks/next/").status_code == 404
response = client.post(base + "tasks/next/")
assert response.status_code == 200, response.content
body = response.json()
ids = [image["id"] for image in body["images"]]
assert body["task_id"] == task.pk and len(ids) == 4 and all(str(uuid.UUID(i)) == i for i in ids), body
assert body["images"][0]["width"] == 16 and body["lease_expires_at"].endswith("Z"), body
assert client.post(base + "tasks/next/").json()["assignment_id"] == body["assignment_id"]  # same lease

bad = client.post(base + f"tasks/{task.pk}/submit/", {"ranking": [[i] for i in ids[:2]], "idempotency_key": "k"},
                  format="json")
assert bad.status_code == 400 and bad.json()["field"] == "ranking", bad.content
payload = {"ranking": [[i] for i in reversed(ids)], "idempotency_key": "k", "rationale": "d first"}
first = client.post(base + f"tasks/{task.pk}/submit/", payload, format="json")
assert first.status_code == 204, first.content  # stored; no task left
again = client.post(base + f"tasks/{task.pk}/submit/", payload, format="json")
assert again.status_code == 204 and again["Location"] == first["Location"], again.content
stored = client.get(first["Location"]).json()
assert stored["created_at"].endswith("Z") and stored["ranking"] == payload["ranking"]

annotation = Annotation.objects.get()
assert annotation.ranking == payload["ranking"] and annotation.rationale == "d first" and annotation.duration_ms >= 0
assignment = TaskAssignment.objects.get()
assert assignment.status == "submitted" and assignment.finished_at is not None
stored = AnnotationTask.objects.get(pk=task.pk)
assert stored.taken_count == 1 and stored.is_open is False
assert client.post(base + "tasks/next/").status_code == 204
print("ok")
"""


def test_annotator_loop_runs_on_sqlite(tmp_path):
    result = run_python(SCRIPT, PICKWISE_VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"
