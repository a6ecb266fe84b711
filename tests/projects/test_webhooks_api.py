"""Webhook endpoints through the API, the pages and the services, without a worker: who may do what, what
is validated, what an event writes to the outbox, and what a single delivery attempt records (against a real
receiver on loopback, run in this process as the Celery task would run it)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone
from svix.webhooks import Webhook, WebhookVerificationError

from projects.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from projects.roles import Role
from projects.webhooks import delivery as sending
from projects.webhooks import services, signing
from projects.webhooks.events import EVENT_TYPES, emit
from tests.factories import PASSWORD, MembershipFactory, UserFactory, api_client_for
from tests.projects.webhook_receiver import Receiver

HOOK = "https://receiver.invalid/pickwise"  # .invalid never resolves: nothing leaves the machine by mistake


@pytest.fixture(autouse=True)
def _webhook_settings(settings):
    settings.SITE_URL = "https://pickwise.example.org"
    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = False
    settings.WEBHOOK_TIMEOUT_SECONDS = 1
    settings.WEBHOOK_DISABLE_AFTER_FAILURES = 2


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


def base(project) -> str:
    return f"/api/projects/{project.pk}/webhooks/"


def endpoint_of(project, url: str = HOOK, **options) -> WebhookEndpoint:
    return services.webhook_endpoint_create(project=project, url=url, **options)


def queued(django_capture_on_commit_callbacks, call):
    """What ``call`` queues for after its commit (the delivery task's messages), without sending it."""
    with django_capture_on_commit_callbacks() as callbacks:
        result = call()
    return result, callbacks


# --- who may ---------------------------------------------------------------------------------------------


ROUTES = [
    ("get", ""), ("post", ""), ("get", "{e}/"), ("patch", "{e}/"), ("delete", "{e}/"), ("post", "{e}/secret/"),
    ("post", "{e}/test/"), ("get", "{e}/deliveries/"), ("get", "{e}/deliveries/{d}/"),
    ("post", "{e}/deliveries/{d}/redeliver/"),
]


@pytest.mark.parametrize(("method", "route"), ROUTES)
def test_only_the_projects_admins_reach_its_webhooks(project, other_project, admin_user, annotator, ml_engineer,
                                                     method, route):
    endpoint = endpoint_of(project)
    delivery = WebhookDelivery.objects.create(endpoint=endpoint, event_type="run.finished", webhook_id="msg_x",
                                              payload={}, status=DeliveryStatus.FAILED,
                                              retry_until=timezone.now())
    path = base(project) + route.format(e=endpoint.pk, d=delivery.pk)
    body = {"url": HOOK + "/2"} if (method, route) == ("post", "") else {}
    stranger = UserFactory(username="stranger-admin", role=Role.ADMIN)
    MembershipFactory(project=other_project, user=stranger, role=Role.ADMIN)
    assert getattr(api_client_for(stranger), method)(path, body, format="json").status_code == 404
    assert getattr(api_client_for(annotator), method)(path, body, format="json").status_code == 403
    assert getattr(api_client_for(ml_engineer), method)(path, body, format="json").status_code == 403
    assert getattr(api_client_for(admin_user), method)(path, body, format="json").status_code == {
        "get": 200, "post": 201 if route == "" else (200 if route.endswith("secret/") else 202),
        "patch": 200, "delete": 204}[method]
    # Another project's endpoint id under this project is unknown here.
    foreign = endpoint_of(other_project)
    assert api_client_for(admin_user).get(base(project) + f"{foreign.pk}/").status_code == 404


def test_pages_are_for_the_projects_admins(project, other_project, admin_user, annotator):
    endpoint = endpoint_of(project)
    pages = [f"/projects/{project.pk}/webhooks/", f"/projects/{project.pk}/webhooks/{endpoint.pk}/"]
    browser = Client()
    browser.force_login(annotator)
    assert [browser.get(page).status_code for page in pages] == [403, 403]
    assert browser.post(pages[1] + "test/").status_code == 403
    stranger = UserFactory(username="stranger-admin", role=Role.ADMIN)
    browser.force_login(stranger)
    assert [browser.get(page).status_code for page in pages] == [404, 404]
    browser.force_login(admin_user)
    assert [browser.get(page).status_code for page in pages] == [200, 200]
    assert Client().get(pages[0]).status_code == 302  # to the login page
    detail = Client()
    detail.force_login(admin_user)
    assert f'href="/projects/{project.pk}/webhooks/"' in detail.get(f"/projects/{project.pk}/").content.decode()


# --- registering and changing endpoints --------------------------------------------------------------------


def test_an_endpoint_is_registered_with_a_secret_shown_once(project, admin_user):
    client = api_client_for(admin_user)
    created = client.post(base(project), {"url": HOOK, "description": "CI trigger",
                                          "event_types": ["run.finished", "export.finished"]}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["secret"].startswith("whsec_") and len(signing.secret_key(body["secret"])) == 32
    assert body["event_types"] == ["export.finished", "run.finished"]  # catalogue order
    assert body["is_active"] is True and body["secret_hint"] == body["secret"][:10] + "…"
    assert body["deliveries_url"] == (f"https://pickwise.example.org/api/projects/{project.pk}/webhooks/"
                                      f"{body['id']}/deliveries/")
    listed = client.get(base(project)).json()
    assert listed["count"] == 1 and "secret" not in listed["results"][0]
    assert "secret" not in client.get(base(project) + f"{body['id']}/").json()
    every = client.post(base(project), {"url": HOOK + "/all"}, format="json").json()
    assert every["event_types"] == list(EVENT_TYPES)


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"url": "ftp://example.org/hook"}, "url", "Only http and https"),
    ({"url": "https:///nohost"}, "url", "names no host"),
    ({"url": "not a url"}, "url", "Only http and https"),
    ({"url": "http://10.1.2.3/hook"}, "url", "10.1.2.3 is a private"),
    ({"url": "http://[::1]:8080/hook"}, "url", "::1 is a private"),
    ({"url": "http://localhost:9000/hook"}, "url", "localhost is a private"),
    ({"url": "https://user:pw@example.org/hook"}, "url", "no user name or password"),
    ({"url": HOOK, "event_types": ["run.finished", "run.exploded"]}, "event_types", "Unknown event 'run.exploded'"),
    ({"url": HOOK, "event_types": []}, "event_types", "at least one event"),
    ({"url": HOOK, "description": "x" * 201}, "description", "200"),
    ({"url": HOOK, "is_active": False}, "is_active", "A new endpoint is active"),
])
def test_bad_input_is_a_400_naming_the_field_and_stores_nothing(project, admin_user, body, field, words):
    response = api_client_for(admin_user).post(base(project), body, format="json")
    assert response.status_code == 400
    error = response.json()
    message = error["detail"] if "detail" in error else " ".join(error[field])
    assert error.get("field", field) == field and words in message, error
    assert not WebhookEndpoint.objects.exists()


def test_private_addresses_are_accepted_when_the_setting_allows_them(project, admin_user, settings):
    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = True
    response = api_client_for(admin_user).post(base(project), {"url": "http://10.1.2.3/hook"}, format="json")
    assert response.status_code == 201


def test_one_url_once_per_project_and_changes_are_checked(project, other_project, admin_user):
    client = api_client_for(admin_user)
    first = client.post(base(project), {"url": HOOK}, format="json").json()
    again = client.post(base(project), {"url": HOOK}, format="json")
    assert again.status_code == 400 and again.json()["field"] == "url"
    assert endpoint_of(other_project).url == HOOK  # another project may use it
    second = client.post(base(project), {"url": HOOK + "/b"}, format="json").json()
    clash = client.patch(base(project) + f"{second['id']}/", {"url": HOOK}, format="json")
    assert clash.status_code == 400 and clash.json()["field"] == "url"
    changed = client.patch(base(project) + f"{first['id']}/", {"event_types": ["task.completed"],
                                                                "description": "labels"}, format="json").json()
    assert changed["event_types"] == ["task.completed"] and changed["description"] == "labels"
    assert changed["url"] == HOOK
    off = client.patch(base(project) + f"{first['id']}/", {"is_active": False}, format="json").json()
    assert off["is_active"] is False and off["disabled_reason"] == f"Disabled by {admin_user.username}."
    assert off["disabled_automatically"] is False
    on = client.patch(base(project) + f"{first['id']}/", {"is_active": True}, format="json").json()
    assert on["is_active"] is True and on["disabled_at"] is None and on["consecutive_failures"] == 0
    assert client.delete(base(project) + f"{first['id']}/").status_code == 204
    assert list(WebhookEndpoint.objects.filter(project=project).values_list("pk", flat=True)) == [second["id"]]


def test_a_new_secret_signs_beside_the_old_one_for_a_day_unless_revoked(project, admin_user):
    client = api_client_for(admin_user)
    endpoint = client.post(base(project), {"url": HOOK}, format="json").json()
    old = endpoint["secret"]
    rotated = client.post(base(project) + f"{endpoint['id']}/secret/", {}, format="json").json()
    new = rotated["secret"]
    assert new != old and rotated["previous_secret_expires_at"]
    row = WebhookEndpoint.objects.get(pk=endpoint["id"])
    now = timezone.now()
    body = b'{"type":"ping"}'
    headers = signing.signature_headers(message_id="msg_1", timestamp=int(now.timestamp()), body=body,
                                        secrets=sending.signing_secrets(row, now))
    assert len(headers["webhook-signature"].split()) == 2
    Webhook(old).verify(body, headers)  # receivers still on the old secret accept it
    Webhook(new).verify(body, headers)
    later = sending.signing_secrets(row, now + timedelta(hours=25))
    assert later == [new]
    revoked = client.post(base(project) + f"{endpoint['id']}/secret/", {"keep_previous": False}, format="json")
    assert revoked.json()["previous_secret_expires_at"] is None
    row.refresh_from_db()
    headers = signing.signature_headers(message_id="msg_2", timestamp=int(now.timestamp()), body=body,
                                        secrets=sending.signing_secrets(row, now))
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body, headers)
    bad = client.post(base(project) + f"{endpoint['id']}/secret/", {"keep_previous": "perhaps"}, format="json")
    assert bad.status_code == 400 and bad.json()["field"] == "keep_previous"


def test_the_event_catalogue_is_listed_for_anyone_signed_in(annotator, api_client):
    assert api_client.get("/api/webhook-events/").status_code == 401
    events = api_client_for(annotator).get("/api/webhook-events/").json()
    assert [e["name"] for e in events] == [*EVENT_TYPES, "ping"]
    assert all(e["description"] for e in events)


# --- the outbox --------------------------------------------------------------------------------------------


def test_an_event_writes_one_delivery_per_subscribed_active_endpoint_sent_after_commit(
        project, other_project, django_capture_on_commit_callbacks):
    wants = endpoint_of(project, HOOK + "/runs", event_types=["run.finished"])
    everything = endpoint_of(project, HOOK + "/all")
    endpoint_of(project, HOOK + "/labels", event_types=["annotation.created"])
    off = endpoint_of(project, HOOK + "/off")
    services.webhook_endpoint_disable(endpoint=off)
    endpoint_of(other_project, HOOK + "/other")

    def finish():
        with transaction.atomic():
            return emit("run.finished", project_id=project.pk, data={"run": {"id": 7, "kind": "reward"}})

    count, callbacks = queued(django_capture_on_commit_callbacks, finish)
    assert count == 2 and len(callbacks) == 2
    deliveries = WebhookDelivery.objects.order_by("endpoint_id")
    assert [d.endpoint_id for d in deliveries] == [wants.pk, everything.pk]
    first, second = deliveries
    assert first.webhook_id != second.webhook_id and first.webhook_id.startswith("msg_")
    assert first.status == DeliveryStatus.PENDING and first.attempts == 0
    assert first.payload == second.payload
    assert first.payload["type"] == "run.finished" and first.payload["timestamp"].endswith("Z")
    assert first.payload["data"] == {"project": {"id": project.pk,
                                                 "url": f"https://pickwise.example.org/projects/{project.pk}/"},
                                     "run": {"id": 7, "kind": "reward"}}
    assert first.retry_until - first.next_attempt_at == timedelta(seconds=86400)  # WEBHOOK_RETRY_FOR_SECONDS


def test_a_rolled_back_event_sends_nothing_and_lazy_data_is_built_only_for_subscribers(
        project, django_capture_on_commit_callbacks):
    built = []

    def data():
        built.append(1)
        return {"n": 1}

    assert emit("export.failed", project_id=project.pk, data=data) == 0 and built == []  # nobody subscribes
    endpoint_of(project)
    with pytest.raises(RuntimeError), transaction.atomic():
        emit("export.failed", project_id=project.pk, data=data)
        raise RuntimeError("the export's transaction fails")
    assert built == [1] and not WebhookDelivery.objects.exists()
    assert emit("export.failed", project_id=project.pk, data=lambda: None) == 0  # it did not happen after all
    assert emit("export.failed", project_id=None, data=data) == 0
    with pytest.raises(ValueError, match="unknown webhook event"):
        emit("export.exploded", project_id=project.pk, data={})


# --- one attempt, in this process -----------------------------------------------------------------------


def _pending(endpoint, event="export.finished") -> WebhookDelivery:
    with transaction.atomic():
        emit(event, project_id=endpoint.project_id, data={"export": {"id": 3}})
    return WebhookDelivery.objects.filter(endpoint=endpoint).latest("pk")


def test_a_private_address_is_refused_when_not_allowed_with_a_clear_error(project, receiver, settings):
    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = True  # registered on-premise ...
    endpoint = endpoint_of(project, receiver.url("/hook"))
    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = False  # ... and the setting turned off since
    pending = _pending(endpoint)
    done = sending.delivery_send(delivery_id=pending.pk)
    assert receiver.received() == []
    assert done.status == DeliveryStatus.FAILED and done.attempts == 1  # no retry: it cannot help
    (attempt,) = done.attempt_log.all()
    assert attempt.status_code is None and not attempt.succeeded
    assert attempt.error == done.last_error
    assert "127.0.0.1 resolves to 127.0.0.1, a private, loopback or link-local address" in attempt.error
    assert "OUTBOUND_ALLOW_PRIVATE_ADDRESSES" in attempt.error
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 1 and endpoint.is_active  # the threshold is 2


def test_one_attempt_is_signed_and_recorded_with_its_answer(project, receiver, settings,
                                                            django_capture_on_commit_callbacks):
    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = True
    endpoint = endpoint_of(project, receiver.url("/hook"))
    receiver.respond("/hook", 503)
    pending = _pending(endpoint)
    retried, callbacks = queued(django_capture_on_commit_callbacks,
                                lambda: sending.delivery_send(delivery_id=pending.pk))
    (first,) = receiver.received()
    body = first.verified(endpoint.secret)
    assert body["type"] == "export.finished" and body["data"]["export"] == {"id": 3}
    assert first.headers["webhook-id"] == pending.webhook_id
    assert first.headers["content-type"] == "application/json"
    assert retried.status == DeliveryStatus.PENDING and retried.attempts == 1 and len(callbacks) == 1
    assert retried.last_status_code == 503 and retried.last_response == "receiver says 503"
    assert timedelta(seconds=5) <= retried.next_attempt_at - timezone.now() <= timedelta(seconds=10)
    assert sending.delivery_send(delivery_id=pending.pk) is None  # not due yet: an early message does nothing
    WebhookDelivery.objects.filter(pk=pending.pk).update(next_attempt_at=timezone.now())
    delivered = sending.delivery_send(delivery_id=pending.pk)
    second = receiver.received()[1]
    assert second.headers["webhook-id"] == first.headers["webhook-id"] and second.body == first.body
    second.verified(endpoint.secret)
    assert delivered.status == DeliveryStatus.SUCCEEDED and delivered.attempts == 2
    assert [(a.number, a.succeeded, a.status_code) for a in delivered.attempt_log.all()] == [
        (1, False, 503), (2, True, 200)]
    assert delivered.last_latency_ms is not None and delivered.delivered_at is not None
    assert sending.delivery_send(delivery_id=pending.pk) is None  # delivered: a redelivered message is a no-op


def test_disabling_emails_the_admins_when_email_is_configured(project, admin_user, receiver, settings, mailoutbox,
                                                              django_capture_on_commit_callbacks):
    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = True
    settings.EMAIL_HOST = "smtp.example.org"
    settings.WEBHOOK_DISABLE_AFTER_FAILURES = 1
    admin_user.email = "alice@example.org"
    admin_user.save()
    endpoint = endpoint_of(project, receiver.url("/gone"))
    receiver.respond("/gone", 410)
    pending = _pending(endpoint)
    WebhookDelivery.objects.filter(pk=pending.pk).update(retry_until=timezone.now())  # its last chance
    with django_capture_on_commit_callbacks(execute=True):
        sending.delivery_send(delivery_id=pending.pk)
    endpoint.refresh_from_db()
    assert not endpoint.is_active and endpoint.disabled_automatically
    assert "1 deliveries in a row failed" in endpoint.disabled_reason and "Answered 410." in endpoint.disabled_reason
    (mail,) = mailoutbox
    assert mail.to == ["alice@example.org"] and endpoint.url in mail.subject
    assert f"https://pickwise.example.org/projects/{project.pk}/webhooks/{endpoint.pk}/" in mail.body


def test_the_sweeper_queues_what_a_dead_worker_or_a_lost_message_left(project, django_capture_on_commit_callbacks):
    endpoint = endpoint_of(project)
    lost, dead, waiting, sending_now, later = (_pending(endpoint) for _ in range(5))
    now = timezone.now()
    WebhookDelivery.objects.filter(pk=lost.pk).update(queued_at=now - timedelta(minutes=11))
    WebhookDelivery.objects.filter(pk=dead.pk).update(attempts=1, lease_expires_at=now - timedelta(seconds=1))
    WebhookDelivery.objects.filter(pk=sending_now.pk).update(attempts=1, lease_expires_at=now + timedelta(seconds=30))
    WebhookDelivery.objects.filter(pk=later.pk).update(next_attempt_at=now + timedelta(hours=1), queued_at=None)
    count, callbacks = queued(django_capture_on_commit_callbacks, sending.deliveries_sweep)
    assert count == 2 and len(callbacks) == 2  # not the one just queued, the one being sent, nor the later one
    assert WebhookDelivery.objects.get(pk=dead.pk).lease_expires_at is None
    (note,) = WebhookDelivery.objects.get(pk=dead.pk).attempt_log.all()
    assert note.number == 1 and "stopped before" in note.error
    old = now - timedelta(days=31)
    WebhookDelivery.objects.filter(pk=waiting.pk).update(status=DeliveryStatus.SUCCEEDED, finished_at=old,
                                                         next_attempt_at=None)
    sending.deliveries_sweep()
    assert not WebhookDelivery.objects.filter(pk=waiting.pk).exists()  # past WEBHOOK_LOG_DAYS


def test_retry_waits_double_with_jitter_up_to_an_hour(settings):
    import random

    settings.WEBHOOK_RETRY_BASE_SECONDS = 10
    rng = random.Random(0)
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (10, 3600), (40, 3600)]:
        waits = [sending.retry_delay(attempt, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits) and len(set(waits)) == 50


# --- the pages ---------------------------------------------------------------------------------------------


def test_adding_an_endpoint_in_the_browser_shows_its_secret_once(project, admin_user, django_capture_on_commit_callbacks):
    browser = Client()
    assert browser.login(username=admin_user.username, password=PASSWORD)
    page = f"/projects/{project.pk}/webhooks/"
    refused = browser.post(page, {"url": "gopher://x", "event_types": ["run.finished"]})
    assert refused.status_code == 400 and "Only http and https" in refused.content.decode()
    added = browser.post(page, {"url": HOOK, "description": "CI", "event_types": ["run.finished", "run.failed"]})
    endpoint = WebhookEndpoint.objects.get()
    assert added.status_code == 303 and added["Location"] == f"{page}{endpoint.pk}/"
    assert endpoint.event_types == ["run.finished", "run.failed"] and endpoint.description == "CI"
    first = browser.get(added["Location"]).content.decode()
    assert endpoint.secret in first and "not shown again" in first
    again = browser.get(added["Location"]).content.decode()
    assert endpoint.secret not in again and signing.mask(endpoint.secret) in again
    _, callbacks = queued(django_capture_on_commit_callbacks,
                          lambda: browser.post(f"{page}{endpoint.pk}/test/", HTTP_HX_REQUEST="true"))
    assert len(callbacks) == 1 and WebhookDelivery.objects.get().event_type == "ping"
    listing = browser.get(page).content.decode()
    assert HOOK in listing and "2 of 12" in listing and "1 pending" in listing


def test_the_delivery_log_polls_while_something_is_pending_and_then_stops(project, admin_user):
    endpoint = endpoint_of(project)
    delivery = _pending(endpoint)
    browser = Client()
    browser.force_login(admin_user)
    url = f"/projects/{project.pk}/webhooks/{endpoint.pk}/"
    fragment = browser.get(url, HTTP_HX_REQUEST="true")
    html = fragment.content.decode()
    assert fragment.status_code == 200 and "<html" not in html and 'hx-trigger="every 2s"' in html
    assert delivery.webhook_id in html
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.FAILED, next_attempt_at=None,
                                                          last_error="Answered 500.")
    done = browser.get(url, HTTP_HX_REQUEST="true")
    assert done.status_code == 286 and "hx-trigger" not in done.content.decode()
    assert "Answered 500." in done.content.decode() and "Redeliver" in done.content.decode()
    full = browser.get(url).content.decode()
    assert "<html" in full and "Redeliver" in full


def test_redeliver_sends_a_finished_delivery_again_with_its_webhook_id(project, admin_user,
                                                                       django_capture_on_commit_callbacks):
    endpoint = endpoint_of(project)
    delivery = _pending(endpoint)
    client = api_client_for(admin_user)
    path = base(project) + f"{endpoint.pk}/deliveries/{delivery.pk}/redeliver/"
    busy = client.post(path)
    assert busy.status_code == 400 and busy.json()["field"] == "delivery"
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.FAILED, next_attempt_at=None,
                                                          attempts=9, finished_at=timezone.now())
    response, callbacks = queued(django_capture_on_commit_callbacks, lambda: client.post(path))
    assert response.status_code == 202 and len(callbacks) == 1
    body = response.json()
    assert body["status"] == "pending" and body["webhook_id"] == delivery.webhook_id and body["attempts"] == 9
    listed = client.get(base(project) + f"{endpoint.pk}/deliveries/", {"status": "pending"}).json()
    assert [d["id"] for d in listed["results"]] == [delivery.pk]
    assert client.get(base(project) + f"{endpoint.pk}/deliveries/", {"status": "lost"}).status_code == 400
    detail = client.get(base(project) + f"{endpoint.pk}/deliveries/{delivery.pk}/").json()
    assert detail["attempt_log"] == [] and detail["payload"]["type"] == "export.finished"
    services.webhook_endpoint_disable(endpoint=endpoint)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.FAILED, next_attempt_at=None)
    refused = client.post(path)
    assert refused.status_code == 400 and "enable it first" in refused.json()["detail"]
