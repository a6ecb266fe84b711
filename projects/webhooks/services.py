"""What a project's admins do with webhooks: register, change, rotate a secret, disable and enable, test,
redeliver, remove. Every function takes the project (already checked by ``projects.access``) and raises
``ApplicationError`` naming the field for bad input, before anything is written. Endpoint rows are locked
``FOR NO KEY UPDATE``: events emitted meanwhile (their deliveries' foreign keys take ``KEY SHARE`` locks on
the endpoint, in the annotator loop's submit among others) never wait on an admin's change."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.db import IntegrityError, transaction
from django.utils import timezone

from core import outbound
from core.exceptions import ApplicationError
from projects.models import DeliveryStatus, Project, WebhookDelivery, WebhookEndpoint
from projects.webhooks import signing
from projects.webhooks.delivery import pending_deliveries_fail
from projects.webhooks.events import EVENT_TYPES, PING, deliveries_create, envelope, queue_delivery

MAX_ENDPOINTS_PER_PROJECT = 20
MAX_URL_CHARS = 2000
MAX_DESCRIPTION_CHARS = 200
ROTATION_OVERLAP = timedelta(hours=24)  # how long a replaced secret still signs, unless revoked at once


def check_endpoint_url(url: Any) -> str:
    """``url`` stripped, when it is an http(s) URL with a host that webhooks may reach; else an error naming
    ``url``. Addresses written as numbers (and ``localhost``) are checked here; names are resolved and checked
    on every delivery, since their addresses can change."""
    if not isinstance(url, str) or not url.strip():
        raise ApplicationError("Give the URL that should receive the events.", field="url")
    url = url.strip()
    if len(url) > MAX_URL_CHARS:
        raise ApplicationError(f"A webhook URL is at most {MAX_URL_CHARS} characters.", field="url")
    parsed = outbound.check_url(url, field="url")
    if parsed.userinfo:
        raise ApplicationError("Put no user name or password in the URL; the signature authenticates Pickwise.",
                               field="url")
    if outbound.private_addresses_allowed():
        return url
    host = parsed.host.strip("[]")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if (literal is not None and not outbound.address_is_public(str(literal))) or host.lower() == "localhost" \
            or host.lower().endswith(".localhost"):
        raise ApplicationError(
            f"{host} is a private, loopback or link-local address; webhooks go only to public addresses unless "
            "OUTBOUND_ALLOW_PRIVATE_ADDRESSES is on.", field="url")
    return url


def check_event_types(values: Any) -> list[str]:
    """The event names as a list in catalogue order; an error naming ``event_types`` for anything else."""
    if isinstance(values, str):
        values = [v for v in values.replace(",", " ").split() if v]
    if not isinstance(values, Iterable) or isinstance(values, dict):
        raise ApplicationError("event_types is a list of event names.", field="event_types")
    names = list(values)
    if not names:
        raise ApplicationError("Choose at least one event to receive.", field="event_types")
    unknown = [str(n) for n in names if n not in EVENT_TYPES]
    if unknown:
        raise ApplicationError(f"Unknown event {unknown[0]!r}; the events are {', '.join(EVENT_TYPES)}.",
                               field="event_types")
    return [name for name in EVENT_TYPES if name in names]


def _check_description(description: Any) -> str:
    if not isinstance(description, str):
        raise ApplicationError("A description is text.", field="description")
    description = description.strip()
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise ApplicationError(f"A description is at most {MAX_DESCRIPTION_CHARS} characters.", field="description")
    return description


def _url_taken(project: Project, url: str, *, other_than: int | None = None) -> None:
    taken = WebhookEndpoint.objects.filter(project=project, url=url)
    if other_than is not None:
        taken = taken.exclude(pk=other_than)
    if taken.exists():
        raise ApplicationError("This project already sends its events to that URL.", field="url")


@transaction.atomic
def webhook_endpoint_create(*, project: Project, url: Any, event_types: Any = None, description: Any = "",
                            created_by: AbstractBaseUser | AnonymousUser | None = None) -> WebhookEndpoint:
    """A new active endpoint with a fresh secret (every event when ``event_types`` is None)."""
    Project.objects.select_for_update().filter(pk=project.pk).first()  # one count at a time per project
    if WebhookEndpoint.objects.filter(project=project).count() >= MAX_ENDPOINTS_PER_PROJECT:
        raise ApplicationError(f"A project has at most {MAX_ENDPOINTS_PER_PROJECT} webhook endpoints.", field="url")
    url = check_endpoint_url(url)
    events = list(EVENT_TYPES) if event_types is None else check_event_types(event_types)
    description = _check_description(description)
    _url_taken(project, url)
    try:
        with transaction.atomic():
            return WebhookEndpoint.objects.create(
                project=project, url=url, event_types=events, description=description, secret=signing.new_secret(),
                created_by=created_by if isinstance(created_by, User) else None,
            )
    except IntegrityError:  # the same URL added at the same moment
        raise ApplicationError("This project already sends its events to that URL.", field="url") from None


@transaction.atomic
def webhook_endpoint_update(*, endpoint: WebhookEndpoint, url: Any = None, event_types: Any = None,
                            description: Any = None, is_active: bool | None = None,
                            user: AbstractBaseUser | AnonymousUser | None = None) -> WebhookEndpoint:
    """Change what is given (None leaves a field as it is); ``is_active`` enables or disables it."""
    locked = WebhookEndpoint.objects.select_for_update(no_key=True).get(pk=endpoint.pk)
    fields = ["updated_at"]
    if url is not None:
        locked.url = check_endpoint_url(url)
        _url_taken(locked.project, locked.url, other_than=locked.pk)
        fields.append("url")
    if event_types is not None:
        locked.event_types = check_event_types(event_types)
        fields.append("event_types")
    if description is not None:
        locked.description = _check_description(description)
        fields.append("description")
    locked.save(update_fields=fields)
    if is_active is True and not locked.is_active:
        locked = webhook_endpoint_enable(endpoint=locked)
    elif is_active is False and locked.is_active:
        locked = webhook_endpoint_disable(endpoint=locked, user=user)
    return locked


@transaction.atomic
def webhook_endpoint_disable(*, endpoint: WebhookEndpoint,
                             user: AbstractBaseUser | AnonymousUser | None = None) -> WebhookEndpoint:
    """Stop sending (what is waiting fails, and can be redelivered once the endpoint is enabled again)."""
    locked = WebhookEndpoint.objects.select_for_update(no_key=True).get(pk=endpoint.pk)
    if not locked.is_active:
        return locked
    who = user.get_username() if user is not None and user.is_authenticated else "an admin"
    locked.is_active, locked.disabled_at, locked.disabled_automatically = False, timezone.now(), False
    locked.disabled_reason = f"Disabled by {who}."
    locked.save(update_fields=["is_active", "disabled_at", "disabled_automatically", "disabled_reason",
                               "updated_at"])
    endpoint_id = locked.pk
    transaction.on_commit(lambda: pending_deliveries_fail(endpoint_id=endpoint_id,
                                                          reason="Not sent: the endpoint was disabled."))
    return locked


@transaction.atomic
def webhook_endpoint_enable(*, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """Send again from now on, with a clean failure count (redeliver what failed meanwhile from the log)."""
    locked = WebhookEndpoint.objects.select_for_update(no_key=True).get(pk=endpoint.pk)
    if locked.is_active:
        return locked
    locked.is_active, locked.disabled_at, locked.disabled_reason = True, None, ""
    locked.disabled_automatically, locked.consecutive_failures = False, 0
    locked.save(update_fields=["is_active", "disabled_at", "disabled_reason", "disabled_automatically",
                               "consecutive_failures", "updated_at"])
    return locked


@transaction.atomic
def webhook_endpoint_rotate_secret(*, endpoint: WebhookEndpoint, keep_previous: bool = True) -> WebhookEndpoint:
    """A new secret. The old one keeps signing (a second signature) for 24 hours while receivers switch,
    unless ``keep_previous`` is false (a leaked secret)."""
    locked = WebhookEndpoint.objects.select_for_update(no_key=True).get(pk=endpoint.pk)
    if keep_previous:
        locked.previous_secret = locked.secret
        locked.previous_secret_expires_at = timezone.now() + ROTATION_OVERLAP
    else:
        locked.previous_secret, locked.previous_secret_expires_at = "", None
    locked.secret = signing.new_secret()
    locked.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    return locked


@transaction.atomic
def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Remove the endpoint and its delivery log; nothing more is sent to it."""
    WebhookEndpoint.objects.filter(pk=endpoint.pk).delete()


@transaction.atomic
def webhook_endpoint_test(*, endpoint: WebhookEndpoint,
                          user: AbstractBaseUser | AnonymousUser | None = None) -> WebhookDelivery:
    """Send one ``ping`` now (also to a disabled endpoint, to check it before enabling it again): one
    attempt, no retries, and it never counts towards disabling."""
    now = timezone.now()
    who = user.get_username() if user is not None and user.is_authenticated else None
    payload = envelope(event=PING, project_id=endpoint.project_id, timestamp=now, data={
        "webhook": {"id": endpoint.pk, "url": endpoint.url}, "sent_by": who,
        "message": "A test from Pickwise: this endpoint receives the project's events.",
    })
    (delivery,) = deliveries_create(endpoint_ids=[endpoint.pk], event=PING, payload=payload, now=now)
    return delivery


@transaction.atomic
def webhook_delivery_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a finished delivery again, with the same ``webhook-id`` (and the same body), retrying as a new
    event would; the attempts so far stay in its log."""
    locked = WebhookDelivery.objects.select_for_update(of=("self",)).select_related("endpoint").get(pk=delivery.pk)
    if locked.status == DeliveryStatus.PENDING:
        raise ApplicationError("This delivery is still being sent; wait for it to finish.", field="delivery")
    if not locked.endpoint.is_active and locked.event_type != PING:
        raise ApplicationError("The endpoint is disabled; enable it first.", field="delivery")
    now = timezone.now()
    locked.status, locked.next_attempt_at, locked.queued_at = DeliveryStatus.PENDING, now, now
    locked.retry_until = now + timedelta(seconds=settings.WEBHOOK_RETRY_FOR_SECONDS)
    locked.lease_expires_at = locked.finished_at = locked.delivered_at = None
    locked.save(update_fields=["status", "next_attempt_at", "queued_at", "retry_until", "lease_expires_at",
                               "finished_at", "delivered_at", "updated_at"])
    queue_delivery(locked.pk)
    return locked
