"""Webhooks end to end: real services make events, a real Celery worker (one of these tests' own, on a queue
of its own, allowed to reach loopback) sends them to a real HTTP receiver on loopback, and every request is
checked with svix's verifier. Retries on 500 and on timeouts, disabling after repeated failures, every event
type, and a worker killed mid-delivery (at least once, the same webhook-id again)."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections import Counter

import pytest
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from annotate.models import Annotation
from annotate.workflow.services import Submission, annotation_amend, annotation_reject
from core.exceptions import ApplicationError
from projects.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from projects.webhooks import delivery as sending
from projects.webhooks import services
from projects.webhooks.events import EVENT_TYPES, emit
from rlhf.datasets.services import export_request_parse, preference_export_build, preference_export_create
from rlhf.loop.rounds import RoundConfig, loop_round_create, loop_round_execute, round_run
from rlhf.models import RunStatus
from rlhf.runs.paths import export_data_path
from rlhf.runs.reward import reward_run_create, reward_run_execute
from tests.projects.webhook_receiver import HOLD, Receiver, Sleep, new_queue, start_worker, stop
from tests.rlhf.conftest import TINY_GENERATION
from tests.rlhf.test_loop_round import DPO_FAST, ready_to_rank

# One xdist worker runs the module: its tests share the module's worker process (``webhook_worker``).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.xdist_group("webhooks_delivery")]

QUEUE = new_queue()
SITE = "https://pickwise.example.org"


@pytest.fixture(scope="module")
def webhook_worker(django_db_setup, django_db_blocker, tmp_path_factory):
    """A worker of these tests only: loopback allowed, 3 s timeout, retries after 1 s doubling, endpoints
    disabled after 2 deliveries in a row fail (tests/projects/webhook_receiver.py)."""
    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
    proc = start_worker(database=database, queue=QUEUE, log=tmp_path_factory.mktemp("webhooks") / "worker.log")
    yield proc
    stop(proc)


@pytest.fixture(autouse=True)
def _webhook_settings(settings):
    """This process emits to the worker's queue; the retry window it stamps on each delivery (``retry_until``)
    is generous unless a test wants deliveries to give up soon."""
    settings.WEBHOOK_QUEUE = QUEUE
    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = True
    settings.WEBHOOK_RETRY_FOR_SECONDS = 120
    settings.SITE_URL = SITE


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


def wait_until(predicate, *, timeout: float = 60, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def finished(endpoint, count: int):
    """The endpoint's deliveries once ``count`` of them exist and none is pending."""
    deliveries = list(WebhookDelivery.objects.filter(endpoint=endpoint).prefetch_related("attempt_log")
                      .order_by("pk"))
    done = len(deliveries) >= count and all(d.status != DeliveryStatus.PENDING for d in deliveries)
    return deliveries if done else None


def test_a_delivery_is_retried_on_500_and_on_a_timeout_with_the_same_webhook_id(webhook_worker, project, receiver):
    endpoint = services.webhook_endpoint_create(project=project, url=receiver.url("/flaky"))
    receiver.respond("/flaky", 500, Sleep(4.5))  # then 200
    with transaction.atomic():
        emit("export.finished", project_id=project.pk, data={"export": {"id": 41}})
    (delivery,) = wait_until(lambda: finished(endpoint, 1), what="the delivery")
    requests = receiver.received("/flaky")
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.attempts == len(requests) == 3
    bodies = [r.verified(endpoint.secret) for r in requests]  # svix accepts every attempt's signature
    assert {r.headers["webhook-id"] for r in requests} == {delivery.webhook_id}
    assert bodies[0] == bodies[2] and bodies[0]["data"]["export"] == {"id": 41}
    assert requests[1].at - requests[0].at >= 0.5  # a wait of 0.5-1 s after the first failure
    assert requests[2].at - requests[1].at >= 3 + 1  # the 3 s timeout, then a wait of 1-2 s
    assert [(a.number, a.succeeded, a.status_code) for a in delivery.attempt_log.all()] == [
        (1, False, 500), (2, False, None), (3, True, 200)]
    first, second, third = delivery.attempt_log.all()
    assert first.error == "Answered 500." and first.response_excerpt == "receiver says 500"
    assert second.error == "No answer within 3 s (WEBHOOK_TIMEOUT_SECONDS)." and second.latency_ms >= 3000
    assert third.response_excerpt == "ok" and third.latency_ms < 3000
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 0 and endpoint.last_success_at is not None


def test_repeated_failures_disable_the_endpoint_and_its_page_says_so(webhook_worker, project, admin_user, receiver,
                                                                     ml_engineer, settings):
    settings.WEBHOOK_RETRY_FOR_SECONDS = 6  # each delivery gives up 6 s after its event
    endpoint = services.webhook_endpoint_create(project=project, url=receiver.url("/down"))
    healthy = services.webhook_endpoint_create(project=project, url=receiver.url("/up"))
    receiver.answer_always("/down", 500)
    for number in (1, 2):
        with transaction.atomic():
            emit("run.failed", project_id=project.pk, data={"run": {"id": number}})
    wait_until(lambda: not WebhookEndpoint.objects.get(pk=endpoint.pk).is_active, timeout=90, what="the disabling")
    deliveries = wait_until(lambda: finished(endpoint, 2), what="both deliveries to give up")
    assert [d.status for d in deliveries] == [DeliveryStatus.FAILED] * 2
    assert all(d.attempts >= 2 and d.last_error == "Answered 500." for d in deliveries)  # retried for 6 s
    endpoint.refresh_from_db()
    assert endpoint.disabled_automatically and endpoint.consecutive_failures == 2
    assert endpoint.disabled_reason.startswith("Disabled automatically: 2 deliveries in a row failed")
    assert wait_until(lambda: finished(healthy, 2), what="the healthy endpoint")[0].status == "succeeded"

    browser = Client()
    browser.force_login(admin_user)
    page = browser.get(f"/projects/{project.pk}/webhooks/").content.decode()
    notice = page.split('role="alert"', 1)[1].split("</div>", 1)[0]
    assert endpoint.url in notice and "disabled automatically" in notice and "Answered 500." in notice
    project_page = browser.get(f"/projects/{project.pk}/").content.decode()  # where admins look first
    assert "after repeated failed deliveries" in project_page and endpoint.url in project_page
    browser.force_login(ml_engineer)  # not theirs to fix
    assert "after repeated failed deliveries" not in browser.get(f"/projects/{project.pk}/").content.decode()
    with transaction.atomic():
        assert emit("run.failed", project_id=project.pk, data={"run": {"id": 3}}) == 1  # only the healthy one

    receiver.answer_always("/down", 204)  # the receiver is fixed: a test, then enable it
    ping = services.webhook_endpoint_test(endpoint=endpoint, user=admin_user)
    assert wait_until(lambda: WebhookDelivery.objects.get(pk=ping.pk).status == "succeeded", what="the ping")
    ping_body = receiver.received("/down")[-1].verified(endpoint.secret)
    assert ping_body["type"] == "ping" and ping_body["data"]["sent_by"] == admin_user.username
    services.webhook_endpoint_enable(endpoint=endpoint)
    failed = deliveries[0]
    services.webhook_delivery_redeliver(delivery=failed)
    again = wait_until(lambda: WebhookDelivery.objects.filter(pk=failed.pk, status="succeeded").first(),
                       what="the redelivery")
    last = receiver.received("/down")[-1]
    assert last.headers["webhook-id"] == failed.webhook_id and last.verified(endpoint.secret)["data"]["run"] == {"id": 1}
    assert again.attempts == failed.attempts + 1


@pytest.fixture
def tiny_base(db, tmp_path_factory, settings):
    from generation.services import model_version_register
    from generation.tiny import build_tiny_pipeline

    settings.PICKWISE_MODEL_CACHE_DIR = tmp_path_factory.mktemp("models")
    pipeline = build_tiny_pipeline(tmp_path_factory.mktemp("webhooks-tiny") / "pipeline", seed=0)
    return model_version_register(name="tiny-base", source=str(pipeline), dtype="float32", **TINY_GENERATION)


def test_every_event_type_is_delivered_signed(webhook_worker, project, admin_user, ml_engineer, tiny_base, receiver):
    endpoint = services.webhook_endpoint_create(project=project, url=receiver.url("/all"))  # every event
    ready_to_rank(project, admin_user)

    # One reduced round: its annotators' answers (each task reaching the overlap), an export, a reward run and
    # a DPO run (both start and finish), the LoRA version it registers, the round itself.
    config = RoundConfig(prompts=3, images_per_prompt=4, annotators=2, preference="brighter", method="dpo",
                         reward_model=True, reward_hyperparameters={"max_steps": 2, "batch_size": 4},
                         hyperparameters=DPO_FAST, eval_prompts=0)
    loop_round = round_run(project=project, user=admin_user, config=config, start_version=tiny_base)
    assert loop_round.status == RunStatus.SUCCEEDED, loop_round.error

    # A reviewer rejects one answer and an annotator amends another.
    first, second = Annotation.objects.filter(project=project).order_by("pk")[:2]
    annotation_reject(project=project, annotation_id=first.pk, reviewer=admin_user, note="rushed")
    annotation_amend(project=project, user=second.annotator, annotation_id=second.pk, submission=Submission(
        idempotency_key="amend-1", ranking=list(reversed(second.ranking))))

    # A run whose data went missing fails (after it started), and so does an export of images that went missing.
    run = reward_run_create(user=ml_engineer, export=loop_round.export, hyperparameters={"max_steps": 2},
                            enqueue=False)
    data = export_data_path(loop_round.export)
    shutil.move(data, data.with_name("moved-away"))
    assert reward_run_execute(run_id=run.pk).status == RunStatus.FAILED
    default_storage.delete(first.task.task_images.first().image.storage_key)
    export = preference_export_create(project=project, user=ml_engineer, request=export_request_parse(
        {"format": "pickapic"}))
    with pytest.raises(FileNotFoundError):
        preference_export_build(export_id=export.pk)

    # A round whose creator has gone stops at once.
    orphan = loop_round_create(project=project, user=None, config=config)
    with pytest.raises(ApplicationError, match="creator"):
        loop_round_execute(round_id=orphan.pk)

    expected = Counter({"annotation.created": 6, "task.completed": 3, "export.finished": 1, "run.started": 3,
                        "run.finished": 2, "model_version.registered": 1, "loop_round.finished": 1,
                        "annotation.rejected": 1, "annotation.amended": 1, "run.failed": 1, "export.failed": 1,
                        "loop_round.failed": 1})
    assert set(expected) == set(EVENT_TYPES)
    deliveries = wait_until(lambda: finished(endpoint, expected.total()), what="every delivery")
    assert Counter(d.event_type for d in deliveries) == expected
    assert all(d.status == DeliveryStatus.SUCCEEDED for d in deliveries)
    received = {}  # by webhook-id, as a receiver de-duplicates (a busy receiver may have seen a retry too)
    for request in receiver.received("/all"):
        received.setdefault(request.headers["webhook-id"], request)
    assert sorted(received) == sorted(d.webhook_id for d in deliveries)
    events = {}
    for request in received.values():
        body = request.verified(endpoint.secret)
        assert len(request.body) < 8000  # ids, figures and URLs; never image bytes
        assert body["data"]["project"] == {"id": project.pk, "url": f"{SITE}/projects/{project.pk}/"}
        events.setdefault(body["type"], []).append(body["data"])
    assert Counter({name: len(items) for name, items in events.items()}) == expected

    created = events["annotation.created"][0]["annotation"]
    assert created["api_url"] == f"{SITE}/api/projects/{project.pk}/annotations/{created['id']}/"
    assert created["annotator"]["username"].startswith("sim-annotator-") and created["ranking"]
    completed = events["task.completed"]
    assert sorted(t["task"]["id"] for t in completed) == sorted(
        loop_round.export.project.tasks.values_list("pk", flat=True))
    assert all(t["task"]["answers"] == t["task"]["overlap"] == 2 for t in completed)
    (rejected,) = events["annotation.rejected"]
    assert rejected["annotation"]["id"] == first.pk and rejected["annotation"]["status"] == "rejected"
    assert rejected["reviewer"]["username"] == admin_user.username and rejected["review_note"] == "rushed"
    (amended,) = events["annotation.amended"]
    assert amended["annotation"]["supersedes_id"] == second.pk
    (exported,) = events["export.finished"]
    assert exported["export"]["id"] == loop_round.export_id and exported["export"]["counts"]["pairs"] > 0
    assert exported["export"]["api_download_url"] == f"{SITE}/api/exports/{loop_round.export_id}/download/"
    (broken,) = events["export.failed"]
    assert broken["export"]["id"] == export.pk and "FileNotFoundError" in broken["export"]["error"]
    assert broken["export"]["download_url"] is None
    finishes = {d["run"]["kind"]: d for d in events["run.finished"]}
    assert finishes["reward"]["run"]["id"] == loop_round.reward_run_id
    assert finishes["reward"]["reward_model"]["id"] == loop_round.reward_run.registered_version.pk
    tuned = finishes["finetune"]
    assert tuned["run"]["id"] == loop_round.finetune_run_id and tuned["run"]["method"] == "dpo"
    assert tuned["model_version"]["name"] == loop_round.output_version.name
    (registered,) = events["model_version.registered"]
    assert registered["model_version"]["id"] == loop_round.output_version_id
    assert registered["model_version"]["parent"] == {"id": tiny_base.pk, "name": "tiny-base"}
    assert sorted((d["run"]["kind"], d["run"]["id"]) for d in events["run.started"]) == sorted(
        [("reward", loop_round.reward_run_id), ("finetune", loop_round.finetune_run_id), ("reward", run.pk)])
    (failed_run,) = events["run.failed"]
    assert failed_run["run"]["id"] == run.pk and failed_run["run"]["status"] == "failed"
    assert failed_run["run"]["url"] == f"{SITE}/ml/reward-runs/{run.pk}/"
    (round_done,) = events["loop_round.finished"]
    assert round_done["round"]["id"] == loop_round.pk and round_done["round"]["status"] == "succeeded"
    assert round_done["round"]["output_version"] == {"id": loop_round.output_version_id,
                                                     "name": loop_round.output_version.name}
    (round_failed,) = events["loop_round.failed"]
    assert round_failed["round"]["id"] == orphan.pk and "creator" in round_failed["round"]["error"]
    assert json.dumps(events)  # plain JSON all the way down


@pytest.mark.slow
def test_a_worker_killed_mid_delivery_leaves_it_to_a_new_worker_with_the_same_webhook_id(
        project, receiver, settings, tmp_path):
    queue = new_queue()
    settings.WEBHOOK_QUEUE = queue
    settings.WEBHOOK_TIMEOUT_SECONDS = 5  # the lease: 2 x 5 + 10 s
    log = tmp_path / "worker.log"
    database = connection.settings_dict["NAME"]
    endpoint = services.webhook_endpoint_create(project=project, url=receiver.url("/slow"))
    receiver.respond("/slow", HOLD)
    first = start_worker(database=database, queue=queue, log=log, WEBHOOK_TIMEOUT_SECONDS="5")
    try:
        with transaction.atomic():
            emit("loop_round.finished", project_id=project.pk, data={"round": {"id": 5}})
        receiver.wait_for(1, "/slow")  # the worker sent it and waits for the answer the receiver holds ...
        stop(first, signal.SIGKILL)  # ... when it is killed
    finally:
        stop(first, signal.SIGKILL)
    receiver.release()
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts == 1 and delivery.lease_expires_at
    assert not delivery.attempt_log.exists()

    # Nothing is lost: once the dead worker's lease lapses, the sweeper (beat's reaper) queues it again, and a
    # new worker sends it.
    second = start_worker(database=database, queue=queue, log=log, WEBHOOK_TIMEOUT_SECONDS="5")
    try:
        assert sending.deliveries_sweep() == 0  # the lease still holds: the dead worker might be alive
        wait_until(lambda: WebhookDelivery.objects.get(pk=delivery.pk).lease_expires_at < timezone.now(),
                   timeout=30, what="the lease to lapse")
        assert WebhookDelivery.objects.get(pk=delivery.pk).status == "pending"  # nobody sent it meanwhile
        assert sending.deliveries_sweep() == 1
        wait_until(lambda: WebhookDelivery.objects.get(pk=delivery.pk).status == "succeeded", what="the delivery")
    finally:
        stop(second)
    delivery.refresh_from_db()
    before, after = receiver.received("/slow")
    assert before.headers["webhook-id"] == after.headers["webhook-id"] == delivery.webhook_id  # receivers dedupe
    assert before.body == after.body and after.verified(endpoint.secret)["data"]["round"] == {"id": 5}
    assert delivery.attempts == 2
    lost, sent = delivery.attempt_log.all()
    assert (lost.number, lost.succeeded, sent.number, sent.succeeded) == (1, False, 2, True)
    assert "stopped before it recorded an answer" in lost.error
