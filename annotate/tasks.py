"""Celery entry points of the annotation workflow.

Celery autodiscovers this module, so importing it here registers the expired-lease reaper
(``annotate.queue.leases_reap``) that beat runs every ``REAPER_INTERVAL_SECONDS`` through
``core.tasks.run_reapers``.
"""

from __future__ import annotations

from annotate.queue import leases_reap
from core.tasks import pickwise_task


@pickwise_task(name="annotate.tasks.reap_expired_leases")
def reap_expired_leases() -> int:
    """Return expired annotation leases to the queue now; returns how many."""
    return leases_reap()
