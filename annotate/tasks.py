"""Celery entry points of the annotation workflow.

``AnnotateConfig.ready()`` imports this module, which imports :mod:`annotate.workflow.queue` and
:mod:`annotate.workflow.imports.services` and so registers their reapers (``annotate.expired_leases``,
``annotate.task_imports``) that beat runs every ``REAPER_INTERVAL_SECONDS`` through
``core.tasks.run_reapers``.
"""

from __future__ import annotations

from annotate.workflow.imports.services import task_import_run
from annotate.workflow.queue import leases_reap
from core.tasks import pickwise_task


@pickwise_task(name="annotate.tasks.reap_expired_leases")
def reap_expired_leases() -> int:
    """Return expired annotation leases to the queue now; returns how many."""
    return leases_reap()


@pickwise_task(name="annotate.tasks.run_task_import")
def run_task_import(import_id: int) -> str:
    """Run one task import (a no-op when it already finished or another worker holds its lease)."""
    return task_import_run(import_id=import_id).status
