"""The one job lifecycle (core.jobs): claim, heartbeat, finish, fail, cancel, retry, reap, under a lease token.

Reward-model runs stand in for every kind (they are plain ``LeasedJob`` rows); the worker-kill tests run the
lifecycle of each kind end to end.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from core import jobs
from core.exceptions import ApplicationError
from core.models import JobPhase, JobStatus
from rlhf.models import RewardModelRun

TASK = "rlhf.tasks.train_reward_model"


@pytest.fixture
def run(project):
    return RewardModelRun.objects.create(project=project, data_path="/data/pairs.parquet", backbone="tiny",
                                         total_steps=10)


def expire(run) -> None:
    RewardModelRun.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_a_claimed_job_runs_under_its_lease_and_finishes(run):
    job, lease = jobs.job_claim(RewardModelRun, run.pk, lease_seconds=60)
    assert job.status == JobStatus.RUNNING and job.attempts == 1 == lease.attempt
    assert job.lease_token == lease.token and job.lease_expires_at > timezone.now() + timedelta(seconds=50)
    assert [entry["phase"] for entry in job.progress_history] == [JobPhase.STARTING]
    assert jobs.job_claim(RewardModelRun, run.pk) is None  # running: a redelivered task finds nothing to do
    assert jobs.job_heartbeat(lease, phase=JobPhase.TRAINING, step=4)
    assert jobs.job_heartbeat(lease, step=5)
    job.refresh_from_db()
    assert (job.step, job.phase) == (5, JobPhase.TRAINING)
    assert [(e["phase"], e.get("step")) for e in job.progress_history] == [("starting", 0), ("training", 4)]
    assert jobs.job_finish(lease, results={"ok": True})
    job.refresh_from_db()
    assert (job.status, job.phase, job.progress, job.results) == (JobStatus.SUCCEEDED, JobPhase.DONE, 1.0,
                                                                  {"ok": True})
    assert job.lease_expires_at is None and job.finished_at is not None
    assert not jobs.job_heartbeat(lease, step=6)  # a finished job is nobody's


def test_a_retried_jobs_old_worker_writes_nothing_and_learns_to_stop(run, django_capture_on_commit_callbacks):
    """The live bug: a "stale" run retried while its old worker still runs. The old worker's heartbeat,
    progress, finish and fail are refused (they name the old token), it is told to stop, and the new
    attempt has a directory of its own."""
    _, old = jobs.job_claim(RewardModelRun, run.pk, lease_seconds=60)
    with pytest.raises(ApplicationError) as refused:  # its lease is live: the worker is alive
        jobs.job_retry(RewardModelRun, run.pk, task_name=TASK)
    assert refused.value.field == "status"
    expire(run)  # the old worker stalls past its lease (it is still alive)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        jobs.job_retry(RewardModelRun, run.pk, task_name=TASK)
    assert len(queued) == 1
    _, new = jobs.job_claim(RewardModelRun, run.pk, lease_seconds=60)
    assert (old.attempt, new.attempt) == (1, 2) and old.token != new.token

    assert not jobs.job_heartbeat(old, step=9, history=[{"step": 9}])
    assert not jobs.job_heartbeat(old, phase=JobPhase.TRAINING, step=9)
    assert not jobs.job_fail(old, "the old worker failed")
    assert not jobs.job_finish(old, results={"old": True})
    stale = jobs.JobHeartbeat(old, interval=60)
    stale.set(step=9)
    assert not stale.flush() and stale.lost and stale.should_stop()
    assert jobs.job_heartbeat(new, step=2)
    run.refresh_from_db()
    assert (run.status, run.step, run.history, run.results, run.error) == (JobStatus.RUNNING, 2, [], {}, "")
    assert run.lease_token == new.token and run.attempts == 2
    assert jobs.attempt_name(old.attempt) != jobs.attempt_name(new.attempt)


def test_cancel_takes_the_job_from_its_worker(run):
    _, lease = jobs.job_claim(RewardModelRun, run.pk)
    cancelled = jobs.job_cancel(RewardModelRun, run.pk)
    assert cancelled.status == JobStatus.CANCELLED and cancelled.lease_token is None
    assert not jobs.job_heartbeat(lease, step=1) and not jobs.job_finish(lease)
    heartbeat = jobs.JobHeartbeat(lease, interval=60)
    assert heartbeat.should_stop()
    with pytest.raises(ApplicationError, match="already cancelled"):
        jobs.job_cancel(RewardModelRun, run.pk)


def test_the_reaper_requeues_an_abandoned_job_until_its_attempts_are_used(run, django_capture_on_commit_callbacks):
    RewardModelRun.objects.filter(pk=run.pk).update(max_attempts=2)
    for attempt in (1, 2):
        _, lease = jobs.job_claim(RewardModelRun, run.pk, worker="gpu-1:42")
        with django_capture_on_commit_callbacks(execute=False) as queued:
            assert jobs.jobs_reap(RewardModelRun, task_name=TASK) == 0  # the lease is live
        expire(run)
        with django_capture_on_commit_callbacks(execute=False) as queued:
            assert jobs.jobs_reap(RewardModelRun, task_name=TASK) == 1
        run.refresh_from_db()
        if attempt == 1:
            assert run.status == JobStatus.QUEUED and run.lease_token is None and len(queued) == 1
            assert not jobs.job_heartbeat(lease, step=1)
    assert run.status == JobStatus.FAILED and len(queued) == 0
    assert run.error == ("The worker stopped 2 times while running this job (last on gpu-1:42); giving up.")


def test_the_eta_comes_from_the_pace_of_the_current_phase(run):
    _, lease = jobs.job_claim(RewardModelRun, run.pk)
    start = timezone.now() - timedelta(seconds=20)
    RewardModelRun.objects.filter(pk=run.pk).update(
        phase=JobPhase.TRAINING, step=4, total_steps=10, heartbeat_at=start + timedelta(seconds=20),
        progress_history=[jobs.history_entry(JobPhase.TRAINING, attempt=1, at=start, step=0)])
    run.refresh_from_db()
    # 4 steps in 20 s, 6 to go: about 30 s (less the time since the heartbeat)
    assert jobs.eta_seconds(run, now=run.heartbeat_at) == pytest.approx(30.0)
    shown = jobs.job_progress(run)
    assert shown["phase_label"] == "Training" and shown["eta"] in ("30 s", "29 s")
    RewardModelRun.objects.filter(pk=run.pk).update(step=0)
    run.refresh_from_db()
    assert jobs.eta_seconds(run) is None  # no pace yet
    assert jobs.format_duration(3725) == "1 h 02 min" and jobs.format_duration(95) == "1 min 35 s"


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_thread_renews_the_lease_and_writes_progress_on_a_timer(project):
    run = RewardModelRun.objects.create(project=project, data_path="/data/pairs.parquet", backbone="tiny")
    _, lease = jobs.job_claim(RewardModelRun, run.pk, lease_seconds=2)
    first = RewardModelRun.objects.get(pk=run.pk).lease_expires_at
    with jobs.JobHeartbeat(lease, interval=0.2) as heartbeat:
        heartbeat.set(step=7)  # no write of its own: the timer carries it
        deadline = time.monotonic() + 10
        while RewardModelRun.objects.get(pk=run.pk).step != 7:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(2.5)  # longer than the lease: the timer keeps renewing it
        row = RewardModelRun.objects.get(pk=run.pk)
        assert row.lease_expires_at > first and row.lease_expires_at > timezone.now()
        jobs.job_cancel(RewardModelRun, run.pk)
        deadline = time.monotonic() + 10
        while not heartbeat.lost:  # its next write finds the job taken back
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert heartbeat.should_stop()
