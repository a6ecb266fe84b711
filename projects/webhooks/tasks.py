"""Celery entry points of webhooks: one delivery attempt, on ``WEBHOOK_QUEUE`` (``default`` unless set).

``ProjectsConfig.ready()`` imports this module, which imports :mod:`projects.webhooks.delivery` and so
registers the sweeper (``projects.webhook_deliveries``) that beat runs every ``REAPER_INTERVAL_SECONDS``
through ``core.tasks.run_reapers``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from core.tasks import pickwise_task
from projects.webhooks.delivery import deliveries_sweep, delivery_send
from projects.webhooks.events import DELIVER_TASK

# Time for the connection, the request and the answer's first bytes, with room to record the outcome.
_LIMIT = 4 * settings.WEBHOOK_TIMEOUT_SECONDS + 60


@pickwise_task(name=DELIVER_TASK, ignore_result=True, time_limit=_LIMIT, soft_time_limit=_LIMIT - 15)
def deliver(delivery_id: int) -> dict[str, Any]:
    """One attempt at a delivery; a no-op when it is not due, already sent, or being sent by another worker."""
    delivery = delivery_send(delivery_id=delivery_id)
    if delivery is None:
        return {"delivery": delivery_id, "sent": False}
    return {"delivery": delivery_id, "sent": True, "status": delivery.status, "attempts": delivery.attempts}


@pickwise_task(name="projects.webhooks.sweep", ignore_result=True)
def sweep() -> int:
    """The sweeper now (beat runs it with every other reaper)."""
    return deliveries_sweep()
