"""Sending deliveries: claim, sign and POST, record; retries with backoff; the sweeper; disabling.

A worker *claims* a pending delivery whose time has come (row lock, ``SKIP LOCKED``), counts the attempt
and takes a lease of ``2 * WEBHOOK_TIMEOUT_SECONDS + 10`` seconds, then sends outside any transaction and
*records* what came back. A 2xx delivers it. Anything else (another status, a redirect, no answer within
``WEBHOOK_TIMEOUT_SECONDS``, no connection) schedules the next attempt after an exponential backoff with
jitter (``WEBHOOK_RETRY_BASE_SECONDS`` doubling, at most an hour) until ``retry_until`` (the event's time
plus ``WEBHOOK_RETRY_FOR_SECONDS``), after which the delivery fails. An address that outbound requests may
not reach (``core.outbound``) fails it at once: retrying cannot help.

At least once: a worker killed mid-send leaves its lease to expire, and the sweeper (a reaper that beat
runs every ``REAPER_INTERVAL_SECONDS``) queues the delivery again, as it does deliveries whose Celery
message was lost. Every attempt carries the same ``webhook-id``, so receivers drop repeats.

An endpoint is disabled once ``WEBHOOK_DISABLE_AFTER_FAILURES`` of its deliveries in a row failed for good;
its page says so and, when ``EMAIL_HOST`` is set, the project's admins get an email.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core import outbound
from core.tasks import register_reaper
from projects.models import (
    DeliveryStatus,
    ProjectMembership,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from projects.roles import Role
from projects.webhooks import signing
from projects.webhooks.events import PING, queue_delivery, url_for

logger = logging.getLogger(__name__)

LEASE_MARGIN_SECONDS = 10
MAX_RETRY_DELAY_SECONDS = 3600
# Waits up to this long ride on a Celery countdown; longer ones are left to the sweeper (a Celery message
# held past the broker's visibility timeout would be handed out again and again).
COUNTDOWN_LIMIT_SECONDS = 600
# A pending delivery whose message should have run this long ago is queued again by the sweeper.
REQUEUE_AFTER = timedelta(minutes=10)
SWEEP_LIMIT = 1000
READ_BYTES = 4096
EXCERPT_CHARS = 1000
USER_AGENT = "Pickwise-Webhooks/1"


def lease_seconds() -> int:
    return 2 * settings.WEBHOOK_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS


def retry_delay(attempt: int, *, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...): ``base * 2**(attempt-1)``, at
    most an hour, of which the second half is random (so many deliveries failing at once spread out)."""
    ceiling = min(MAX_RETRY_DELAY_SECONDS, settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** min(attempt - 1, 30))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def payload_bytes(payload: Any) -> bytes:
    """The body sent for a stored payload: compact JSON with sorted keys, the same bytes on every attempt."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The endpoint's secret, and its previous one while a rotation lets it sign too."""
    valid = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > now:
        valid.append(endpoint.previous_secret)
    return valid


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: a 2xx, or the reason it did not (``permanent``: retrying cannot help)."""

    succeeded: bool
    status_code: int | None = None
    latency_ms: int | None = None
    excerpt: str = ""
    error: str = ""
    permanent: bool = False


def post(*, url: str, body: bytes, headers: dict[str, str], timeout: float) -> Outcome:
    """POST ``body`` to ``url`` through ``core.outbound`` (public addresses only unless allowed, no redirects,
    no proxies); reads at most the first few kilobytes of the answer."""
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        target = outbound.check_url(url, field="url")
        with outbound.client(timeout=timeout) as http, http.stream("POST", target, content=body,
                                                                    headers=headers) as response:
            raw = b""
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) >= READ_BYTES:
                    break
            status, location = response.status_code, response.headers.get("location", "")
    except outbound.OutboundError as exc:
        return Outcome(False, latency_ms=elapsed(), error=exc.message, permanent=True)
    except httpx.TimeoutException:
        return Outcome(False, latency_ms=elapsed(),
                       error=f"No answer within {timeout:g} s (WEBHOOK_TIMEOUT_SECONDS).")
    except httpx.HTTPError as exc:
        if outbound.refused_address(exc):
            return Outcome(False, latency_ms=elapsed(), permanent=True, error=(
                f"Not sent: {exc}. Webhooks go only to public addresses unless OUTBOUND_ALLOW_PRIVATE_ADDRESSES "
                "is on (on-premise receivers)."))
        return Outcome(False, latency_ms=elapsed(), error=f"Could not deliver: {exc or type(exc).__name__}")
    latency = elapsed()
    excerpt = raw.decode("utf-8", errors="replace")[:EXCERPT_CHARS]
    if 200 <= status < 300:
        return Outcome(True, status_code=status, latency_ms=latency, excerpt=excerpt)
    if 300 <= status < 400:
        where = f" to {location[:500]}" if location else ""
        return Outcome(False, status_code=status, latency_ms=latency, excerpt=excerpt, error=(
            f"Answered {status} (a redirect{where}); webhooks never follow redirects: register the final URL."))
    return Outcome(False, status_code=status, latency_ms=latency, excerpt=excerpt, error=f"Answered {status}.")


# --- one attempt: claim, send, record ------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    delivery: WebhookDelivery
    number: int
    started_at: datetime


def _claim(delivery_id: int) -> Claim | None:
    """Take a due, pending, unleased delivery for one attempt; None when there is nothing to do now."""
    with transaction.atomic():
        delivery = (WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
                    .select_related("endpoint").filter(pk=delivery_id, status=DeliveryStatus.PENDING).first())
        if delivery is None:
            return None  # sent already, failed, or another worker holds its row this instant
        now = timezone.now()
        if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
            return None  # an early copy of a retry's message; the one due later sends it
        if delivery.lease_expires_at is not None and delivery.lease_expires_at > now:
            return None  # another worker is sending it
        if not delivery.endpoint.is_active and delivery.event_type != PING:
            delivery.status, delivery.finished_at = DeliveryStatus.FAILED, now
            delivery.next_attempt_at = delivery.lease_expires_at = None
            delivery.last_error = "Not sent: the endpoint is disabled."
            delivery.save(update_fields=["status", "finished_at", "next_attempt_at", "lease_expires_at",
                                         "last_error", "updated_at"])
            return None
        delivery.attempts += 1
        delivery.lease_expires_at = now + timedelta(seconds=lease_seconds())
        delivery.save(update_fields=["attempts", "lease_expires_at", "updated_at"])
    return Claim(delivery=delivery, number=delivery.attempts, started_at=now)


def _send(claim: Claim) -> Outcome:
    delivery, endpoint = claim.delivery, claim.delivery.endpoint
    body = payload_bytes(delivery.payload)
    headers = signing.signature_headers(message_id=delivery.webhook_id, timestamp=int(time.time()), body=body,
                                        secrets=signing_secrets(endpoint, timezone.now()))
    headers.update({"content-type": "application/json", "user-agent": USER_AGENT})
    return post(url=endpoint.url, body=body, headers=headers, timeout=float(settings.WEBHOOK_TIMEOUT_SECONDS))


def delivery_send(*, delivery_id: int) -> WebhookDelivery | None:
    """One attempt at a delivery (the Celery task's body); None when it was not due or not pending."""
    claim = _claim(delivery_id)
    if claim is None:
        return None
    try:
        outcome = _send(claim)
    except Exception as exc:  # a bug must not leave the delivery leased until the sweeper: record it
        logger.exception("webhook delivery %s failed unexpectedly", delivery_id)
        outcome = Outcome(False, error=f"Could not send: {type(exc).__name__}: {exc}")
    return _record(claim=claim, outcome=outcome)


@transaction.atomic
def _record(*, claim: Claim, outcome: Outcome) -> WebhookDelivery:
    delivery = (WebhookDelivery.objects.select_for_update(of=("self",)).select_related("endpoint")
                .filter(pk=claim.delivery.pk).first())
    if delivery is None:  # its endpoint was removed while the request was out
        return claim.delivery
    WebhookAttempt.objects.create(
        delivery=delivery, number=claim.number, started_at=claim.started_at, succeeded=outcome.succeeded,
        status_code=outcome.status_code, latency_ms=outcome.latency_ms, response_excerpt=outcome.excerpt,
        error=outcome.error,
    )
    now = timezone.now()
    delivery.last_status_code, delivery.last_latency_ms = outcome.status_code, outcome.latency_ms
    delivery.last_response, delivery.last_error = outcome.excerpt, outcome.error
    fields = ["last_status_code", "last_latency_ms", "last_response", "last_error", "updated_at"]
    latest = delivery.attempts == claim.number  # no newer attempt started after this one's lease ran out
    if outcome.succeeded:
        if delivery.status != DeliveryStatus.SUCCEEDED:
            delivery.status, delivery.delivered_at, delivery.finished_at = DeliveryStatus.SUCCEEDED, now, now
            delivery.next_attempt_at = None
            fields += ["status", "delivered_at", "finished_at", "next_attempt_at"]
        if latest:
            delivery.lease_expires_at = None
            fields.append("lease_expires_at")
        delivery.save(update_fields=fields)
        _endpoint_succeeded(delivery.endpoint_id, now)
        return delivery
    if delivery.status != DeliveryStatus.PENDING or not latest:
        delivery.save(update_fields=fields)  # delivered meanwhile, or a newer attempt decides what follows
        return delivery
    delay = retry_delay(claim.number)
    next_at = now + timedelta(seconds=delay)
    single_shot = delivery.event_type == PING  # a test says at once whether the endpoint works
    delivery.lease_expires_at = None
    fields.append("lease_expires_at")
    if outcome.permanent or single_shot or next_at > delivery.retry_until:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = DeliveryStatus.FAILED, now, None
        delivery.save(update_fields=[*fields, "status", "finished_at", "next_attempt_at"])
        if not single_shot:
            _endpoint_failed(delivery.endpoint_id, now, outcome.error)
        return delivery
    delivery.next_attempt_at = next_at
    fields.append("next_attempt_at")
    if delay <= COUNTDOWN_LIMIT_SECONDS:
        delivery.queued_at = next_at
        queue_delivery(delivery.pk, countdown=delay)
    else:
        delivery.queued_at = None  # the sweeper queues it once it is due
    delivery.save(update_fields=[*fields, "queued_at"])
    return delivery


def _endpoint_succeeded(endpoint_id: int, now: datetime) -> None:
    WebhookEndpoint.objects.filter(pk=endpoint_id).update(consecutive_failures=0, last_success_at=now, updated_at=now)


def _endpoint_failed(endpoint_id: int, now: datetime, error: str) -> None:
    """Count a delivery that failed for good; disable the endpoint at the threshold and tell its admins."""
    # FOR NO KEY UPDATE: events being emitted meanwhile (their deliveries' foreign keys take KEY SHARE
    # locks on the endpoint, inside the annotator loop's submit) never wait on it.
    endpoint = WebhookEndpoint.objects.select_for_update(no_key=True).get(pk=endpoint_id)
    endpoint.consecutive_failures += 1
    endpoint.last_failure_at = now
    fields = ["consecutive_failures", "last_failure_at", "updated_at"]
    threshold = settings.WEBHOOK_DISABLE_AFTER_FAILURES
    if endpoint.is_active and endpoint.consecutive_failures >= threshold:
        endpoint.is_active, endpoint.disabled_at, endpoint.disabled_automatically = False, now, True
        endpoint.disabled_reason = (
            f"Disabled automatically: {endpoint.consecutive_failures} deliveries in a row failed after every "
            f"retry (WEBHOOK_DISABLE_AFTER_FAILURES is {threshold}). The last: {error}")[:2000]
        fields += ["is_active", "disabled_at", "disabled_automatically", "disabled_reason"]
        transaction.on_commit(lambda: endpoint_disabled_followup(endpoint_id=endpoint.pk))
    endpoint.save(update_fields=fields)


def pending_deliveries_fail(*, endpoint_id: int, reason: str) -> int:
    """Fail the endpoint's pending deliveries that no worker is sending (a disabled endpoint's). Runs in its
    own statement, holding no endpoint lock: a worker recording an attempt locks its delivery, then the
    endpoint, and must never wait on us the other way round."""
    now = timezone.now()
    return WebhookDelivery.objects.filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now),
        endpoint_id=endpoint_id, status=DeliveryStatus.PENDING,
    ).exclude(event_type=PING).update(status=DeliveryStatus.FAILED, finished_at=now, next_attempt_at=None,
                                      last_error=reason, updated_at=now)


def endpoint_disabled_followup(*, endpoint_id: int) -> None:
    """After an automatic disable commits: fail what was waiting, then email the project's admins."""
    pending_deliveries_fail(endpoint_id=endpoint_id, reason="Not sent: the endpoint was disabled.")
    endpoint = WebhookEndpoint.objects.select_related("project").filter(pk=endpoint_id).first()
    if endpoint is None or endpoint.is_active:
        return
    try:
        notify_admins_disabled(endpoint)
    except Exception:  # the page shows the notice whatever the mail server does
        logger.exception("could not email the admins of project %s about webhook %s", endpoint.project_id,
                         endpoint_id)


def notify_admins_disabled(endpoint: WebhookEndpoint) -> int:
    """Email the project's admins (those with an address) that ``endpoint`` was disabled; only when
    ``EMAIL_HOST`` is set. Returns how many emails went out."""
    if not settings.EMAIL_HOST:
        return 0
    recipients = sorted(set(
        ProjectMembership.objects.filter(project_id=endpoint.project_id, role=Role.ADMIN, user__is_active=True)
        .exclude(user__email="").values_list("user__email", flat=True)))
    if not recipients:
        return 0
    page = url_for("webhooks:endpoint_detail", endpoint.project_id, endpoint.pk)
    send_mail(
        subject=f"[Pickwise] Webhook disabled in {endpoint.project.name}: {endpoint.url}"[:200],
        message=(f"The webhook endpoint {endpoint.url} of project {endpoint.project.name!r} was disabled.\n\n"
                 f"{endpoint.disabled_reason}\n\nCheck the receiver, send a test and enable it again at {page}\n"),
        from_email=settings.DEFAULT_FROM_EMAIL, recipient_list=recipients,
    )
    return len(recipients)


# --- the sweeper ----------------------------------------------------------------------------------------


def _note_lost_attempts(ids: list[int], now: datetime) -> None:
    """Log the attempts whose worker died (their lease ran out with nothing recorded), so the log says why
    the delivery is sent again."""
    dead = WebhookDelivery.objects.filter(pk__in=ids, lease_expires_at__lt=now, attempts__gt=0)
    rows = list(dead.values_list("pk", "attempts", "lease_expires_at"))
    recorded = set(WebhookAttempt.objects.filter(delivery_id__in=[pk for pk, _, _ in rows])
                   .values_list("delivery_id", "number"))
    WebhookAttempt.objects.bulk_create([
        WebhookAttempt(delivery_id=pk, number=number, started_at=(lease or now) - timedelta(seconds=lease_seconds()),
                       error="The worker sending it stopped before it recorded an answer (its lease ran out); "
                             "sent again with the same webhook-id.")
        for pk, number, lease in rows if (pk, number) not in recorded
    ])


@register_reaper("projects.webhook_deliveries")
def deliveries_sweep() -> int:
    """Queue every due delivery that no live worker holds and no message will bring: its sender died (the
    lease ran out), its message was lost, or it waits longer than a countdown carries. Then drop finished
    deliveries older than ``WEBHOOK_LOG_DAYS``. Returns how many were queued."""
    now = timezone.now()
    never_queued = Q(queued_at__isnull=True) | Q(queued_at__lt=now - REQUEUE_AFTER)
    stranded = Q(lease_expires_at__lt=now) | (Q(lease_expires_at__isnull=True) & never_queued)
    due = WebhookDelivery.objects.filter(stranded, status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
    with transaction.atomic():
        ids = list(due.select_for_update(skip_locked=True).order_by("next_attempt_at")
                   .values_list("pk", flat=True)[:SWEEP_LIMIT])
        if ids:
            _note_lost_attempts(ids, now)
            WebhookDelivery.objects.filter(pk__in=ids).update(queued_at=now, lease_expires_at=None)
            for pk in ids:
                queue_delivery(pk)
    old = now - timedelta(days=settings.WEBHOOK_LOG_DAYS)
    expired = list(WebhookDelivery.objects.filter(finished_at__lt=old).exclude(status=DeliveryStatus.PENDING)
                   .values_list("pk", flat=True)[:SWEEP_LIMIT])
    if expired:
        WebhookDelivery.objects.filter(pk__in=expired).delete()
    return len(ids)
