"""Celery entry points of the annotation workflow.

``AnnotateConfig.ready()`` imports this module, which imports :mod:`annotate.workflow.queue` and so
registers its expired-lease reaper (``annotate.expired_leases``) that beat runs every
``REAPER_INTERVAL_SECONDS`` through ``core.tasks.run_reapers``.
"""

from __future__ import annotations

from annotate.workflow.queue import leases_reap
from core.tasks import pickwise_task


@pickwise_task(name="annotate.tasks.reap_expired_leases")
def reap_expired_leases() -> int:
    """Return expired annotation leases to the queue now; returns how many."""
    return leases_reap()
