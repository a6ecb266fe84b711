"""The migration that makes TaskImport a core LeasedJob keeps every import: its free-text phase becomes a
JobPhase (the rows it had checked kept in step/total_steps), and one that was running under the old code
gets an expired lease, so the reaper takes it back."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from annotate.models import TaskImport
from annotate.workflow.imports import services as import_services

BEFORE = [("annotate", "0009_external_tasks_and_imports")]
AFTER = [("annotate", "0010_task_import_leased_job")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_old_imports_keep_their_phase_and_a_running_one_is_reaped(project, monkeypatch):
    old = migrate(BEFORE)
    old_import = old.get_model("annotate", "TaskImport")
    later = timezone.now() + timedelta(hours=1)  # a lease the old code had just renewed
    made = {
        phase: old_import.objects.create(project_id=project.pk, name=phase or "new", source_format="csv",
                                         status=status, phase=phase, **extra).pk
        for phase, status, extra in [
            ("", "queued", {}),
            ("Checking images: 1,200 of 2,500 rows", "running",
             {"lease_token": uuid.uuid4(), "lease_expires_at": later, "attempts": 1, "progress": 0.43}),
            ("Done", "succeeded", {"progress": 1.0}),
            ("Nothing was imported", "failed", {"error": "line 2: missing image. Nothing was imported."}),
            ("Cancelled; nothing was imported", "cancelled", {}),
        ]
    }
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    phases = {text: TaskImport.objects.get(pk=pk) for text, pk in made.items()}
    assert {text: row.phase for text, row in phases.items()} == {
        "": "queued", "Checking images: 1,200 of 2,500 rows": "checking_images", "Done": "done",
        "Nothing was imported": "starting", "Cancelled; nothing was imported": "starting"}
    running = phases["Checking images: 1,200 of 2,500 rows"]
    assert (running.step, running.total_steps, running.progress) == (1200, 2500, 0.43)
    assert running.phase_text == "Checking the images: 1,200 of 2,500 rows"
    assert running.lease_expires_at <= timezone.now()  # expired: its old worker no longer renews it
    queued = []
    monkeypatch.setattr("annotate.tasks.run_task_import.delay_on_commit", lambda *args: queued.append(args))
    assert import_services.task_imports_reap() == 1
    running.refresh_from_db()
    assert (running.status, running.phase, running.lease_token, queued) == ("queued", "queued", None,
                                                                             [(running.pk,)])
