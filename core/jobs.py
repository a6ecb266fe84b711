"""The one lifecycle of every background job: claim, heartbeat, finish, fail, cancel, retry, reap.

Every kind of job (generation jobs, reward-model and fine-tune runs, exports, arena generations, loop
rounds, task imports) is a :class:`core.models.LeasedJob` and goes through these functions:

- :func:`job_claim` (or :func:`jobs_claim_rows` for rows a caller has locked, as the generation worker
  does to coalesce jobs) turns a queued job into a running one under a fresh ``lease_token``: a
  :class:`Lease`. Only a queued job can be claimed, so a redelivered task finds nothing to do.
- :func:`job_heartbeat` renews the lease and records progress. :class:`JobHeartbeat` does it on a timer
  (a background thread, or a time throttle when the caller is inside a transaction that another
  connection could not see), so a long step never lets the lease lapse and a short one never costs a
  write.
- :func:`job_finish` and :func:`job_fail` end it. Every heartbeat, finish and fail filters on the lease
  token: a worker whose job was taken from it writes nothing, and the ``False`` it gets back (or
  :class:`LeaseLost`) tells it to stop.
- :func:`job_cancel` (people), :func:`job_retry` (people) and :func:`jobs_reap` (beat, through the
  reaper each kind registers with :func:`core.tasks.register_reaper`) take a job back: each clears the
  token, so the worker that held it can no longer write.

A job is re-queued by its reaper when its lease expires (the worker died) until ``max_attempts``
claims, then failed with the reason. Work a job writes outside the database goes under a directory of
its attempt (:func:`attempt_name`), so two workers never write one directory even when a retried job's
old worker is still alive.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import connections, models, transaction
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.exceptions import ApplicationError
from core.locks import lock_objects
from core.models import JobPhase, JobStatus, LeasedJob
from core.tasks import enqueue_on_commit

logger = logging.getLogger(__name__)

J = TypeVar("J", bound=LeasedJob)

STOP_POLL_SECONDS = 1.0  # JobHeartbeat.should_stop() reads the row at most this often
MAX_HISTORY_ENTRIES = 200  # a job's phase history keeps its last entries


class LeaseLost(Exception):
    """The job is no longer leased to this worker (reaped, retried or cancelled): stop, write nothing."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Lease:
    """A worker's claim on one job: the job's model and id, the token its writes name, and its attempt."""

    model: type[LeasedJob]
    pk: int
    token: uuid.UUID
    attempt: int
    seconds: int

    def owned(self) -> models.QuerySet[Any]:
        """The job's row while it is still running under this lease (empty otherwise)."""
        return self.model._default_manager.filter(pk=self.pk, lease_token=self.token, status=JobStatus.RUNNING)


def attempt_name(attempt: int) -> str:
    """The folder of one attempt's own files inside a job's working directory."""
    return f"attempt-{attempt}"


def history_entry(phase: str, *, attempt: int, at: datetime | None = None, step: int | None = None,
                  progress: float | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"phase": str(phase), "at": (at or timezone.now()).isoformat(), "attempt": attempt}
    if step is not None:
        entry["step"] = int(step)
    if progress is not None:
        entry["progress"] = round(float(progress), 6)
    return entry


def _with_entry(history: list[dict[str, Any]] | None, entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(history or []), entry][-MAX_HISTORY_ENTRIES:]


# --- claim ----------------------------------------------------------------------------------------------


@transaction.atomic
def job_claim(model: type[J], pk: int, *, phase: str = JobPhase.STARTING, lease_seconds: int | None = None,
              worker: str | None = None) -> tuple[J, Lease] | None:
    """Claim the queued job ``pk``: running, a fresh lease token, one more attempt. None when it is not
    queued (finished, cancelled, or running under someone else's lease)."""
    job = model._default_manager.select_for_update().filter(pk=pk).first()
    if job is None or job.status != JobStatus.QUEUED:
        return None
    seconds = lease_seconds or settings.JOB_LEASE_SECONDS
    now = timezone.now()
    token = uuid.uuid4()
    job.status, job.phase, job.error = JobStatus.RUNNING, phase, ""
    job.attempts += 1
    job.lease_token, job.lease_expires_at = token, now + timedelta(seconds=seconds)
    job.leased_by = (worker or worker_name())[:200]
    job.heartbeat_at, job.started_at, job.finished_at = now, job.started_at or now, None
    job.progress_history = _with_entry(job.progress_history, history_entry(
        phase, attempt=job.attempts, at=now, step=getattr(job, "step", None), progress=job.progress))
    job.save(update_fields=["status", "phase", "error", "attempts", "lease_token", "lease_expires_at", "leased_by",
                            "heartbeat_at", "started_at", "finished_at", "progress_history", "updated_at"])
    return job, Lease(model=model, pk=job.pk, token=token, attempt=job.attempts, seconds=seconds)


def jobs_claim_rows(model: type[LeasedJob], pks: Iterable[int], *, lease_seconds: int, worker: str,
                    phase: str = JobPhase.STARTING, **fields: Any) -> uuid.UUID:
    """Claim the queued rows ``pks``, which the caller has locked in its transaction, under one new token
    (the generation worker's coalesced claim). ``fields`` are set on every row too."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("jobs_claim_rows() must run inside the transaction that locked the rows")
    token, now = uuid.uuid4(), timezone.now()
    model._default_manager.filter(pk__in=list(pks), status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, phase=phase, attempts=F("attempts") + 1, lease_token=token,
        lease_expires_at=now + timedelta(seconds=lease_seconds), leased_by=worker[:200], heartbeat_at=now,
        started_at=Coalesce("started_at", now), error="", updated_at=now, **fields,
    )
    return token


# --- heartbeat, finish, fail (the lease holder's writes: each names its token) ----------------------------


def job_heartbeat(lease: Lease, *, phase: str | None = None, **fields: Any) -> bool:
    """Renew the lease and write ``fields`` (progress, step, metrics...); a new ``phase`` is added to the
    job's history. False, and nothing written, when the job is no longer leased under ``lease.token``."""
    now = timezone.now()
    values = {"lease_expires_at": now + timedelta(seconds=lease.seconds), "heartbeat_at": now, "updated_at": now,
              **fields}
    if phase is None:
        return lease.owned().update(**values) > 0
    with transaction.atomic():
        job = lease.owned().select_for_update().only("pk", "phase", "progress_history", "progress").first()
        if job is None:
            return False
        if job.phase != phase:
            values["progress_history"] = _with_entry(job.progress_history, history_entry(
                phase, attempt=lease.attempt, at=now, step=fields.get("step"),
                progress=fields.get("progress", job.progress)))
        return lease.owned().update(phase=phase, **values) > 0


def jobs_heartbeat_token(model: type[LeasedJob], token: uuid.UUID, *, lease_seconds: int, **fields: Any) -> int:
    """Renew the lease of every row claimed under ``token`` (a coalesced claim); how many are still ours."""
    now = timezone.now()
    return model._default_manager.filter(lease_token=token, status=JobStatus.RUNNING).update(
        lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now, updated_at=now, **fields)


def job_lock_owned(lease: Lease) -> Any:
    """Inside a transaction: the job's row, locked, while it is still ours; None when it was taken back."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("job_lock_owned() must run inside a transaction")
    return lease.owned().select_for_update().first()


def job_finish(lease: Lease, **fields: Any) -> bool:
    """Mark the job succeeded (progress 1, phase done) with ``fields``; False, and nothing written, when it is
    no longer ours. Callers that register results first lock the row with :func:`job_lock_owned` in the same
    transaction."""
    now = timezone.now()
    with transaction.atomic():
        job = lease.owned().select_for_update().only("pk", "progress_history").first()
        if job is None:
            return False
        history = _with_entry(job.progress_history, history_entry(JobPhase.DONE, attempt=lease.attempt, at=now,
                                                                  step=fields.get("step"), progress=1.0))
        lease.owned().update(status=JobStatus.SUCCEEDED, phase=JobPhase.DONE, progress=1.0, finished_at=now,
                             heartbeat_at=now, lease_expires_at=None, progress_history=history, updated_at=now,
                             **fields)
    return True


def job_fail(lease: Lease, error: str, **fields: Any) -> bool:
    """Mark the job failed with a readable ``error``; False, and nothing written, when it is no longer ours."""
    now = timezone.now()
    return lease.owned().update(status=JobStatus.FAILED, error=error[:5000], finished_at=now, heartbeat_at=now,
                                lease_expires_at=None, updated_at=now, **fields) > 0


def jobs_fail_token(model: type[J], token: uuid.UUID, error: str) -> list[J]:
    """Fail every row claimed under ``token`` (a coalesced claim); returns them."""
    with transaction.atomic():
        jobs = lock_objects(model._default_manager.filter(lease_token=token, status=JobStatus.RUNNING))
        now = timezone.now()
        model._default_manager.filter(pk__in=[job.pk for job in jobs]).update(
            status=JobStatus.FAILED, error=error[:5000], finished_at=now, lease_expires_at=None, updated_at=now)
        for job in jobs:
            job.status, job.error, job.finished_at, job.lease_expires_at = JobStatus.FAILED, error[:5000], now, None
    return jobs


def job_fail_unclaimed(model: type[LeasedJob], pk: int, error: str) -> bool:
    """Fail a queued job that cannot start at all (its model does not load, its input is gone)."""
    now = timezone.now()
    return model._default_manager.filter(pk=pk, status=JobStatus.QUEUED).update(
        status=JobStatus.FAILED, error=error[:5000], finished_at=now, updated_at=now) > 0


# --- taking a job back: cancel, retry (people), reap (beat) ----------------------------------------------


def _requeue_values(job: LeasedJob, now: datetime) -> dict[str, Any]:
    return {"status": JobStatus.QUEUED, "phase": JobPhase.QUEUED, "lease_token": None, "lease_expires_at": None,
            "finished_at": None, "updated_at": now,
            "progress_history": _with_entry(job.progress_history, history_entry(
                JobPhase.QUEUED, attempt=job.attempts, at=now, progress=job.progress))}


@transaction.atomic
def job_cancel(model: type[J], pk: int) -> J:
    """Cancel a queued or running job; a worker running it learns at its next heartbeat or stop check."""
    [job] = lock_objects(model._default_manager.filter(pk=pk))
    if job.is_finished:
        raise ApplicationError(f"{job} has already {job.status}.", field="status")
    now = timezone.now()
    job.status, job.lease_token, job.lease_expires_at, job.finished_at = JobStatus.CANCELLED, None, None, now
    job.save(update_fields=["status", "lease_token", "lease_expires_at", "finished_at", "updated_at"])
    return job


@transaction.atomic
def job_retry(model: type[J], pk: int, *, task_name: str, args: tuple[Any, ...] | None = None) -> J:
    """Queue a failed, cancelled or abandoned (running, its lease expired) job again under task ``task_name``.

    The old lease token is cleared, so a worker still holding it (alive but stalled) writes nothing more
    and stops at its next heartbeat; the new attempt works in a directory of its own. A running job whose
    lease is still being renewed has a live worker and is refused.
    """
    [job] = lock_objects(model._default_manager.filter(pk=pk))
    now = timezone.now()
    if job.status == JobStatus.RUNNING and job.lease_expires_at is not None and job.lease_expires_at > now:
        raise ApplicationError(f"{job} is running; it can be retried once its worker is gone.", field="status")
    if job.status in (JobStatus.SUCCEEDED, JobStatus.QUEUED):
        raise ApplicationError(f"{job} is {job.status}; there is nothing to retry.", field="status")
    values = {**_requeue_values(job, now), "error": "",
              "max_attempts": max(job.max_attempts, job.attempts + settings.JOB_MAX_ATTEMPTS)}
    model._default_manager.filter(pk=job.pk).update(**values)
    job.refresh_from_db()
    enqueue_on_commit(task_name, *(args if args is not None else (job.pk,)))
    return job


def gave_up_message(job: LeasedJob, what: str) -> str:
    return (f"The worker stopped {job.attempts} time{'s' if job.attempts != 1 else ''} while {what} "
            f"(last on {job.leased_by or 'an unknown worker'}); giving up.")


def jobs_reap(model: type[J], *, task_name: str, what: str = "running this job",
              args_of: Callable[[J], tuple[Any, ...]] | None = None,
              on_fail: Callable[[J], None] | None = None) -> int:
    """Take back every running job of ``model`` whose lease expired (its worker died): re-queue it under task
    ``task_name`` until ``max_attempts`` claims, then fail it saying so. Returns how many were reaped."""
    with transaction.atomic():
        now = timezone.now()
        expired = lock_objects(
            model._default_manager.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now), skip_locked=True)
        requeued = 0
        for job in expired:
            if job.attempts >= job.max_attempts:
                message = gave_up_message(job, what)
                model._default_manager.filter(pk=job.pk).update(
                    status=JobStatus.FAILED, error=message, finished_at=now, lease_token=None, lease_expires_at=None,
                    updated_at=now)
                job.status, job.error = JobStatus.FAILED, message
                if on_fail is not None:
                    on_fail(job)
                continue
            model._default_manager.filter(pk=job.pk).update(**_requeue_values(job, now))
            enqueue_on_commit(task_name, *(args_of(job) if args_of is not None else (job.pk,)))
            requeued += 1
    if expired:
        logger.info("reaped %d expired %s lease(s); re-queued %d", len(expired), model.__name__, requeued)
    return len(expired)


# --- the lease holder's timer -----------------------------------------------------------------------------


class JobHeartbeat:
    """Keeps a claimed job's lease alive and carries its progress to the database.

    ``set(**fields)`` records progress (step, metrics, ...) in memory; a background thread writes it with
    the lease renewal every ``interval`` seconds (``JOB_HEARTBEAT_SECONDS``), so the lease outlives a long
    step and a fast loop costs one write per interval. ``phase(...)`` writes at once (people are waiting
    to see it), ``flush()`` writes what is pending now. When a write finds the job no longer ours (reaped,
    retried, cancelled), ``lost`` becomes true and ``should_stop()`` tells the worker to stop.

    Inside a transaction (tests, ``atomic`` in a shell) another connection could not see the job, so there
    is no thread: ``set`` writes on the caller's connection once ``interval`` has passed.

    Use it as a context manager; ``stop()`` (the end of the ``with``) ends the thread. Never call
    ``flush()`` or ``stop()`` while holding the job's row lock: the thread may be waiting for it.
    """

    def __init__(self, lease: Lease, *, interval: float | None = None) -> None:
        self.lease = lease
        self.interval = float(interval or settings.JOB_HEARTBEAT_SECONDS)
        self._inline = transaction.get_connection().in_atomic_block
        self._state_lock = threading.Lock()  # guards _pending; never held while writing
        self._write_lock = threading.Lock()  # one write at a time (thread or caller)
        self._pending: dict[str, Any] = {}
        self._lost = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_write = time.monotonic()
        self._last_poll = 0.0  # the first stop check reads the row

    # -- the caller's side
    def start(self) -> JobHeartbeat:
        if not self._inline and self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                             name=f"heartbeat-{self.lease.model.__name__}-{self.lease.pk}")
            self._thread.start()
        return self

    def set(self, **fields: Any) -> None:
        with self._state_lock:
            self._pending.update(fields)
        if self._inline and time.monotonic() - self._last_write >= self.interval:
            self.flush()

    def phase(self, phase: str, **fields: Any) -> bool:
        """Enter ``phase`` now (with ``fields``); False when the job is no longer ours."""
        with self._state_lock:
            self._pending.update(fields)
        return self._write(phase=phase)

    def flush(self) -> bool:
        return self._write()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def should_stop(self) -> bool:
        """True once the job is no longer ours (cancelled, retried, reaped); reads the row at most once a second."""
        if self._lost.is_set():
            return True
        if time.monotonic() - self._last_poll >= STOP_POLL_SECONDS:
            self._last_poll = time.monotonic()
            if not self.lease.owned().exists():
                self._lost.set()
        return self._lost.is_set()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> JobHeartbeat:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- writes
    def _write(self, *, phase: str | None = None) -> bool:
        with self._write_lock:
            if self._lost.is_set():
                return False
            with self._state_lock:
                fields, self._pending = self._pending, {}
            ours = job_heartbeat(self.lease, phase=phase, **fields)
            self._last_write = time.monotonic()
            if not ours:
                logger.warning("%s %s: lease %s was taken back; stopping", self.lease.model.__name__, self.lease.pk,
                               self.lease.token)
                self._lost.set()
            return ours

    def _run(self) -> None:
        try:
            while not self._stopping.wait(self.interval):
                if not self._write():
                    break
        except Exception:  # a database outage: the lease lapses and the reaper takes over
            logger.exception("heartbeat of %s %s failed", self.lease.model.__name__, self.lease.pk)
        finally:
            connections.close_all()  # this thread's own connections


# --- what people see: phase, ETA ------------------------------------------------------------------------


def _phase_start(job: LeasedJob) -> dict[str, Any] | None:
    for entry in reversed(job.progress_history or []):
        if entry.get("phase") == job.phase:
            return entry
    return None


def eta_seconds(job: LeasedJob, *, now: datetime | None = None) -> float | None:
    """Seconds left in the current phase, from its pace so far: by steps where the job counts them
    (``step``/``total_steps``), else by ``progress``. None until the phase has made progress."""
    if job.status != JobStatus.RUNNING or job.heartbeat_at is None:
        return None
    entry = _phase_start(job)
    if entry is None:
        return None
    started = datetime.fromisoformat(entry["at"])
    elapsed = (job.heartbeat_at - started).total_seconds()
    step, total = getattr(job, "step", None), getattr(job, "total_steps", None)
    if job.phase == JobPhase.TRAINING and step is not None and total:
        done, left = step - int(entry.get("step") or 0), total - step
    else:
        done, left = job.progress - float(entry.get("progress") or 0.0), 1.0 - job.progress
    if done <= 0 or elapsed <= 0 or left < 0:
        return None
    since = ((now or timezone.now()) - job.heartbeat_at).total_seconds()
    return max(0.0, elapsed / done * left - max(0.0, since))


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def phase_label(job: LeasedJob) -> str:
    """The job's phase in words."""
    return str(JobPhase(job.phase).label) if job.phase in JobPhase.values else job.phase


def job_progress(job: LeasedJob) -> dict[str, Any]:
    """What a page or API response says about where a job is: phase (code and words), step k/N, ETA."""
    eta = eta_seconds(job)
    step, total = getattr(job, "step", None), getattr(job, "total_steps", None)
    return {
        "phase": job.phase,
        "phase_label": phase_label(job),
        "step": step,
        "total_steps": total or None,
        "progress": job.progress,
        "eta_seconds": None if eta is None else round(eta, 1),
        "eta": None if eta is None else format_duration(eta),
        "attempt": job.attempts,
    }


__all__ = [
    "JobHeartbeat", "Lease", "LeaseLost", "attempt_name", "eta_seconds", "format_duration", "gave_up_message",
    "history_entry", "job_cancel", "job_claim", "job_fail", "job_fail_unclaimed", "job_finish", "job_heartbeat",
    "job_lock_owned", "job_progress", "job_retry", "jobs_claim_rows", "jobs_fail_token", "jobs_heartbeat_token",
    "jobs_reap", "phase_label", "worker_name",
]
