"""The lease reaper runs in a real Celery worker through beat's run_reapers task."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotate.models import AssignmentStatus, TaskAssignment
from annotate.workflow import queue
from tests.annotate.factories_workflow import tasks_with_images

pytestmark = pytest.mark.django_db(transaction=True)


def test_worker_reaps_expired_leases(celery_worker_process, project, annotator):
    from core.tasks import run_reapers

    (task,) = tasks_with_images(project, 1)
    handout = queue.task_next(project=project, user=annotator)
    TaskAssignment.objects.filter(pk=handout.assignment.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=5))
    result = run_reapers.delay().get(timeout=60)
    assert result["annotate.expired_leases"] == 1
    handout.assignment.refresh_from_db()
    task.refresh_from_db()
    assert handout.assignment.status == AssignmentStatus.EXPIRED and task.is_open and task.taken_count == 0
