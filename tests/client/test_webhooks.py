"""Webhooks from the Python client and the ``pickwise webhooks`` commands, against the live test server:
register, change, rotate, test, read the delivery log, redeliver, remove; and who may."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone
from pickwise_client import NotFoundError, PermissionDeniedError, ValidationError
from pickwise_client.cli import ExitCode, app
from typer.testing import CliRunner

from projects.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from projects.roles import Role
from tests.client.conftest import token_for
from tests.factories import MembershipFactory, ProjectFactory

HOOK = "https://receiver.invalid/pickwise"  # never resolves: nothing leaves the machine


@pytest.fixture(autouse=True)
def _no_webhook_worker(settings):
    """Deliveries queue where no worker listens: these tests read what the server recorded."""
    settings.WEBHOOK_QUEUE = "webhooks-client-tests-unconsumed"
    settings.SITE_URL = "https://pickwise.example.org"


def cli(live_server, user, *args: str):
    env = {"PICKWISE_URL": live_server.url, "PICKWISE_TOKEN": token_for(user)}
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def test_the_client_manages_a_projects_webhooks(admin_api, annotator_api, connect, project, admin_user):
    events = admin_api.webhooks.events()
    assert "run.finished" in [e["name"] for e in events] and events[-1]["name"] == "ping"

    made = admin_api.webhooks.create(project.pk, HOOK, events=["run.finished", "run.failed"], description="CI")
    assert made["secret"].startswith("whsec_") and made["event_types"] == ["run.finished", "run.failed"]
    (listed,) = admin_api.webhooks.list(project.pk)
    assert listed["id"] == made["id"] and "secret" not in listed and listed["secret_hint"] == made["secret"][:10] + "…"
    assert admin_api.webhooks.get(project.pk, made["id"])["description"] == "CI"

    changed = admin_api.webhooks.update(project.pk, made["id"], events=["run.finished"], active=False)
    assert changed["event_types"] == ["run.finished"] and changed["is_active"] is False
    assert admin_api.webhooks.update(project.pk, made["id"], active=True)["is_active"] is True
    rotated = admin_api.webhooks.rotate_secret(project.pk, made["id"])
    assert rotated["secret"] != made["secret"] and rotated["previous_secret_expires_at"]

    ping = admin_api.webhooks.test(project.pk, made["id"])
    assert ping["event_type"] == "ping" and ping["status"] == "pending" and ping["webhook_id"].startswith("msg_")
    (logged,) = admin_api.webhooks.deliveries(project.pk, made["id"])
    assert logged["id"] == ping["id"] and logged["payload"]["data"]["webhook"]["id"] == made["id"]
    assert list(admin_api.webhooks.deliveries(project.pk, made["id"], status="failed")) == []
    assert admin_api.webhooks.delivery(project.pk, made["id"], ping["id"])["attempt_log"] == []
    with pytest.raises(ValidationError) as busy:
        admin_api.webhooks.redeliver(project.pk, made["id"], ping["id"])
    assert busy.value.field == "delivery"
    WebhookDelivery.objects.filter(pk=ping["id"]).update(status=DeliveryStatus.FAILED, next_attempt_at=None,
                                                         finished_at=timezone.now())
    again = admin_api.webhooks.redeliver(project.pk, made["id"], ping["id"])
    assert again["status"] == "pending" and again["webhook_id"] == ping["webhook_id"]

    with pytest.raises(ValidationError) as bad:
        admin_api.webhooks.create(project.pk, "ftp://example.org/x")
    assert bad.value.field == "url" and "http and https" in bad.value.message
    with pytest.raises(ValidationError) as unknown:
        admin_api.webhooks.create(project.pk, HOOK + "/2", events=["run.exploded"])
    assert unknown.value.field == "event_types"
    with pytest.raises(PermissionDeniedError):
        list(annotator_api.webhooks.list(project.pk))  # a listing is lazy: its first page is read here
    stranger = MembershipFactory(project=ProjectFactory(), role=Role.ADMIN).user
    stranger.groups.add(*admin_user.groups.all())
    with pytest.raises(NotFoundError):
        connect(stranger).webhooks.get(project.pk, made["id"])

    admin_api.webhooks.remove(project.pk, made["id"])
    assert not WebhookEndpoint.objects.exists()


def test_pickwise_webhooks_commands(live_server, project, admin_user, annotator):
    added = cli(live_server, admin_user, "webhooks", "add", HOOK, "-p", str(project.pk), "--event", "run.finished",
                "--event", "loop_round.finished", "--description", "trainer")
    assert added.exit_code == 0, added.stderr
    endpoint = WebhookEndpoint.objects.get()
    assert added.stdout.strip() == endpoint.secret and "shown this once" in added.stderr
    assert endpoint.event_types == ["run.finished", "loop_round.finished"] and endpoint.description == "trainer"

    listed = cli(live_server, admin_user, "webhooks", "list", "-p", str(project.pk), "--json")
    assert [e["url"] for e in json.loads(listed.stdout)] == [HOOK]
    table = cli(live_server, admin_user, "webhooks", "list", "-p", str(project.pk)).stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "URL", "EVENTS", "ACTIVE"]
    assert table[1].split()[:4] == [str(endpoint.pk), HOOK, "run.finished,loop_round.finished", "yes"]

    tested = cli(live_server, admin_user, "webhooks", "test", str(endpoint.pk), "-p", str(project.pk))
    delivery = WebhookDelivery.objects.get()
    assert tested.exit_code == 0 and tested.stdout.strip() == str(delivery.pk)
    log = json.loads(cli(live_server, admin_user, "webhooks", "deliveries", str(endpoint.pk), "-p", str(project.pk),
                         "--json").stdout)
    assert [(d["id"], d["event_type"], d["status"]) for d in log] == [(delivery.pk, "ping", "pending")]
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.FAILED, next_attempt_at=None,
                                                          last_error="Answered 500.")
    failed = cli(live_server, admin_user, "webhooks", "deliveries", str(endpoint.pk), "-p", str(project.pk),
                 "--status", "failed")
    assert "Answered 500." in failed.stdout and delivery.webhook_id in failed.stdout
    redone = cli(live_server, admin_user, "webhooks", "redeliver", str(endpoint.pk), str(delivery.pk),
                 "-p", str(project.pk))
    assert redone.stdout.strip() == f"{delivery.pk} pending"

    refused = cli(live_server, annotator, "webhooks", "list", "-p", str(project.pk))
    assert refused.exit_code == ExitCode.PERMISSION and refused.stdout == ""
    invalid = cli(live_server, admin_user, "webhooks", "add", "gopher://x", "-p", str(project.pk))
    assert invalid.exit_code == ExitCode.API_ERROR and "url" in invalid.stderr
    missing = cli(live_server, admin_user, "webhooks", "remove", "999999", "-p", str(project.pk))
    assert missing.exit_code == ExitCode.NOT_FOUND
    removed = cli(live_server, admin_user, "webhooks", "remove", str(endpoint.pk), "-p", str(project.pk))
    assert removed.exit_code == 0 and not WebhookEndpoint.objects.exists()
