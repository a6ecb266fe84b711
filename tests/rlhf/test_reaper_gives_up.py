"""A job the reaper gives up on (its workers kept dying) is announced like any other failure: the project's
webhooks receive run.failed and export.failed with the reason (a round, loop_round.failed, the same way)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import JobPhase, JobStatus
from projects.models import WebhookDelivery
from projects.webhooks import services as webhooks
from rlhf.datasets.services import (
    export_request_parse,
    preference_export_create,
    preference_exports_reap_expired,
)
from rlhf.models import RewardModelRun
from rlhf.runs.reward import reward_runs_reap_expired

GAVE_UP = "The worker stopped 3 times while {what} (last on gpu-1:42); giving up."


@pytest.fixture
def endpoint(project, settings):
    settings.SITE_URL = "https://pickwise.example.org"
    return webhooks.webhook_endpoint_create(project=project, url="https://receiver.invalid/hook",
                                            event_types=["run.failed", "export.failed"])


def abandoned(model, pk: int) -> None:
    """Running, its lease expired, every attempt used: the reaper's next pass fails it."""
    model.objects.filter(pk=pk).update(
        status=JobStatus.RUNNING, phase=JobPhase.TRAINING if model is RewardModelRun else JobPhase.EXPORTING,
        lease_token=uuid.uuid4(), lease_expires_at=timezone.now() - timedelta(minutes=1), leased_by="gpu-1:42",
        attempts=3, max_attempts=3)


def test_runs_and_exports_the_reaper_gives_up_on_are_announced(project, ml_engineer, endpoint,
                                                               django_capture_on_commit_callbacks):
    run = RewardModelRun.objects.create(project=project, created_by=ml_engineer, name="doomed", backbone="tiny",
                                        data_path="pairs.parquet")
    export = preference_export_create(project=project, user=ml_engineer,
                                      request=export_request_parse({"format": "pickapic"}))
    abandoned(RewardModelRun, run.pk)
    abandoned(type(export), export.pk)
    with django_capture_on_commit_callbacks(execute=False) as sends:  # the deliveries' sends, not made here
        assert reward_runs_reap_expired() == 1 and preference_exports_reap_expired() == 1
    deliveries = {d.event_type: d for d in WebhookDelivery.objects.filter(endpoint=endpoint)}
    assert set(deliveries) == {"run.failed", "export.failed"} and len(sends) == 2
    failed_run = deliveries["run.failed"].payload["data"]["run"]
    assert (failed_run["id"], failed_run["status"], failed_run["error"]) == (
        run.pk, "failed", GAVE_UP.format(what="training this reward model"))
    failed_export = deliveries["export.failed"].payload["data"]["export"]
    assert (failed_export["id"], failed_export["status"], failed_export["error"]) == (
        export.pk, "failed", GAVE_UP.format(what="writing this export"))
