"""The events a project's webhooks receive, and :func:`emit`, which higher layers call when one happens.

Every layer above ``projects`` may emit (``core <- projects <- generation <- annotate <- rlhf``): a service
calls ``emit(event, project_id=..., data=...)`` inside the transaction that makes the event. That writes one
delivery row per active endpoint of the project subscribed to ``event`` (the outbox) and queues each one's
send for when the transaction commits, so a rolled-back change sends nothing and a committed one is not
lost (the sweeper sends what a lost message or a dead worker left behind).

Payloads carry ids and absolute URLs (from ``SITE_URL``), never image bytes. The envelope is Standard
Webhooks': ``{"type": ..., "timestamp": ..., "data": {"project": {"id", "url"}, ...}}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from core import rawsql
from core.tasks import registered_task
from projects.models import WebhookDelivery, WebhookEndpoint
from projects.webhooks.signing import new_message_id

DELIVER_TASK = "projects.webhooks.deliver"

# name -> when it is sent. The order is the order pages and the README list them in.
EVENT_TYPES: dict[str, str] = {
    "annotation.created": "An annotator submitted an answer to a task.",
    "annotation.amended": "An annotator replaced one of their answers (the old one is kept, superseded).",
    "annotation.rejected": "A reviewer rejected an answer; its task goes back to the queue.",
    "task.completed": "A task has as many current answers as the project's overlap asks for.",
    "export.finished": "A preference export was built and can be downloaded.",
    "export.failed": "A preference export failed.",
    "run.started": "A reward-model or fine-tune run started on a worker (again after a retry).",
    "run.finished": "A reward-model or fine-tune run succeeded and registered its model.",
    "run.failed": "A reward-model or fine-tune run failed.",
    "model_version.registered": "A fine-tune run registered a new model version (a LoRA on its base).",
    "loop_round.finished": "A loop round ran every stage and made a new current model version.",
    "loop_round.failed": "A loop round stopped at one of its stages.",
}
# Sent only by an endpoint's Test button, whatever the endpoint subscribes to.
PING = "ping"

Data = Mapping[str, Any] | Callable[[], Mapping[str, Any] | None]


def site_url(path: str) -> str:
    """``path`` (absolute, as ``reverse`` gives it) on the app's public address, ``SITE_URL``."""
    return settings.SITE_URL.rstrip("/") + path


def url_for(name: str, *args: Any) -> str:
    """The absolute URL of a named route."""
    return site_url(reverse(name, args=args))


def envelope(*, event: str, project_id: int, data: Mapping[str, Any], timestamp: datetime) -> dict[str, Any]:
    """The JSON body of an event: type, time, and ``data`` with the project first. Values that JSON lacks
    (UUIDs, datetimes, decimals) become strings, as Django's JSON encoder writes them."""
    body = {
        "type": event,
        "timestamp": timestamp.isoformat().replace("+00:00", "Z"),
        "data": {"project": {"id": project_id, "url": url_for("annotate:project_detail", project_id)}, **data},
    }
    parsed: dict[str, Any] = json.loads(json.dumps(body, cls=DjangoJSONEncoder))
    return parsed


Subscribers = list[tuple[int, list[str]]]


def subscribers(*, project_id: int) -> Subscribers:
    """The project's active endpoints and the events each receives: one statement (it runs in the annotator
    loop's submit, where compiling an ORM query costs more than running it). A caller emitting several
    events at once looks them up once and hands them to each :func:`emit`."""
    rows = rawsql.fetchall(
        rawsql.query("SELECT {e.pk}, {e.event_types} FROM {e} WHERE {e.project} = %s AND {e.is_active} = %s",
                     e=WebhookEndpoint),
        [project_id, True],
    )
    return [(pk, list(rawsql.value(WebhookEndpoint, "event_types", raw) or ())) for pk, raw in rows]


def has_subscribers_sql(*, project_id: int) -> tuple[str, list[Any]]:
    """A select-list expression saying whether the project has any active endpoint, with its parameters: a
    hot path folds it into a statement it runs anyway and calls :func:`subscribers` only when it is true."""
    return (rawsql.query("EXISTS (SELECT 1 FROM {e} WHERE {e.project} = %s AND {e.is_active} = %s)",
                         e=WebhookEndpoint), [project_id, True])


def queue_delivery(delivery_id: int, *, countdown: float | None = None) -> None:
    """Send a delivery from a worker (on ``WEBHOOK_QUEUE``) once the current transaction commits.

    ``robust``: a broker that cannot take the message is logged, not raised, so it never fails the request
    whose change already committed; the sweeper queues the delivery again later.
    """
    queue, task = settings.WEBHOOK_QUEUE, registered_task(DELIVER_TASK)
    options: dict[str, Any] = {"queue": queue}
    if countdown:
        options["countdown"] = countdown
    transaction.on_commit(lambda: task.apply_async(args=[delivery_id], **options), robust=True)


def deliveries_create(*, endpoint_ids: list[int], event: str, payload: dict[str, Any], now: datetime
                      ) -> list[WebhookDelivery]:
    """One pending delivery of ``payload`` per endpoint, each with its own message id, queued on commit."""
    retry_until = now + timedelta(seconds=settings.WEBHOOK_RETRY_FOR_SECONDS)
    made = WebhookDelivery.objects.bulk_create([
        WebhookDelivery(endpoint_id=pk, event_type=event, webhook_id=new_message_id(), payload=payload,
                        next_attempt_at=now, retry_until=retry_until, queued_at=now)
        for pk in endpoint_ids
    ])
    for delivery in made:
        queue_delivery(delivery.pk)
    return made


def emit(event: str, *, project_id: int | None, data: Data, endpoints: Subscribers | None = None) -> int:
    """Queue ``event`` for every active endpoint of the project that subscribes to it; returns how many.

    Call it inside the transaction that makes the event. ``data`` is the payload's ``data`` (the project is
    added), or a function returning it, called only when some endpoint subscribes; a function may return
    None to send nothing (an event that turned out not to happen). No project (a run outside any), no event.
    ``endpoints`` is what :func:`subscribers` returned for the project in this transaction, when the caller
    emits several events and looked them up once.
    """
    if event not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event {event!r}; add it to projects.webhooks.events.EVENT_TYPES")
    if project_id is None:
        return 0
    found = subscribers(project_id=project_id) if endpoints is None else endpoints
    endpoint_ids = [pk for pk, events in found if event in events]
    if not endpoint_ids:
        return 0
    values = data() if callable(data) else data
    if values is None:
        return 0
    now = timezone.now()
    with transaction.atomic():
        payload = envelope(event=event, project_id=project_id, data=values, timestamp=now)
        return len(deliveries_create(endpoint_ids=endpoint_ids, event=event, payload=payload, now=now))
