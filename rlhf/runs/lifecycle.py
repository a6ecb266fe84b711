"""The life of a run: cancel, retry, claim (start), progress and heartbeat, failure.

Runs work in a directory of their own and the training code resumes from the newest checkpoint
there, so a run whose worker died continues where it left off when it is retried. A running run
without a heartbeat for ``STALE_RUN_SECONDS`` has lost its worker.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction
from django.utils import timezone

from core.exceptions import ApplicationError
from core.tasks import enqueue_on_commit
from projects.access import project_check
from projects.models import Project
from projects.webhooks.events import emit, url_for
from rlhf.models import RunStatus
from rlhf.runs.hyperparams import json_safe
from rlhf.training.checkpoint import latest_checkpoint, read_metadata

METRICS_FLUSH_SECONDS = 2.0  # metric points are written at most this often (plus the final one)
STOP_POLL_SECONDS = 1.0  # should_stop() reads the run's status at most this often
STALE_RUN_SECONDS = 120  # a running run without a heartbeat for this long has lost its worker
MAX_HISTORY_POINTS = 2000  # longer histories are thinned (every other point) to stay small

OnLog = Callable[[int, Mapping[str, float]], None]


def run_event(run: Any, **extra: Any) -> dict[str, Any]:
    """The ``data`` of a run's webhook events (``run.started``, ``run.finished``, ``run.failed``): ids and
    URLs; ``kind`` is ``reward`` or ``finetune``."""
    kind = "reward" if run._meta.model_name == "rewardmodelrun" else "finetune"
    described: dict[str, Any] = {
        "id": run.pk, "kind": kind, "name": run.name, "status": run.status, "attempt": run.attempts,
        "export_id": run.export_id, "error": run.error or None,
        "url": url_for(f"rlhf:{kind}_run_detail", run.pk), "api_url": url_for(f"{kind}-run-detail", run.pk),
    }
    if kind == "finetune":
        described.update(method=run.method, base_version_id=run.base_version_id)
    return {"run": described, **extra}


def check_user_may_train(user: AbstractBaseUser | None, project: Project | None) -> None:
    """``user=None`` is trusted code (management commands); everyone else needs ``train`` in the project."""
    if user is None:
        return
    if project is None:
        if not getattr(user, "is_superuser", False):
            raise ApplicationError("Only superusers may train from a file outside a project.", field="data_path")
        return
    project_check(user=user, project=project, action="train")


def run_cancel(model: type[models.Model], run: Any) -> Any:
    locked = model._default_manager.select_for_update().get(pk=run.pk)
    if locked.is_finished:
        raise ApplicationError(f"{locked} has already {locked.status}.", field="status")
    locked.status = RunStatus.CANCELLED
    locked.finished_at = timezone.now()
    locked.save(update_fields=["status", "finished_at", "updated_at"])
    return locked


def run_retry(model: type[models.Model], run: Any, task_name: str) -> Any:
    """Queue a failed, cancelled or abandoned run again (task ``task_name``); it resumes from its last checkpoint."""
    locked = model._default_manager.select_for_update().get(pk=run.pk)
    stale = locked.heartbeat_at is None or timezone.now() - locked.heartbeat_at > timedelta(seconds=STALE_RUN_SECONDS)
    if locked.status == RunStatus.RUNNING and not stale:
        raise ApplicationError(f"{locked} is running; it can be retried once its worker is gone.", field="status")
    if locked.status in (RunStatus.SUCCEEDED, RunStatus.QUEUED):
        raise ApplicationError(f"{locked} is {locked.status}; there is nothing to retry.", field="status")
    locked.status = RunStatus.QUEUED
    locked.error = ""
    locked.finished_at = None
    locked.save(update_fields=["status", "error", "finished_at", "updated_at"])
    enqueue_on_commit(task_name, locked.pk)
    return locked


def run_start(model: type[models.Model], run_id: int) -> tuple[Any, bool] | None:
    """Claim the run; None when it has finished or another live worker holds it. Returns (run, fresh)."""
    with transaction.atomic():
        run = model._default_manager.select_for_update().filter(pk=run_id).first()
        if run is None or run.is_finished:
            return None
        now = timezone.now()
        if (run.status == RunStatus.RUNNING and run.heartbeat_at is not None
                and now - run.heartbeat_at < timedelta(seconds=STALE_RUN_SECONDS)):
            return None
        fresh = run.attempts == 0
        run.status = RunStatus.RUNNING
        run.attempts += 1
        run.started_at = run.started_at or now
        run.heartbeat_at = now
        run.error = ""
        run.save(update_fields=["status", "attempts", "started_at", "heartbeat_at", "error", "updated_at"])
        emit("run.started", project_id=run.project_id, data=lambda: run_event(run))
    return run, fresh


class RunProgress:
    """``on_log``/``should_stop`` for the trainers: throttled metric writes and a throttled status poll.

    Points are kept in memory and written with the step, progress and heartbeat at most every
    ``METRICS_FLUSH_SECONDS`` (and by :meth:`flush` with ``force``). A write that finds the run no
    longer running (cancelled) makes ``should_stop()`` true.
    """

    def __init__(self, model: type[models.Model], run: Any, *, total_steps: int, resume_step: int = 0,
                 echo: OnLog | None = None, checkpoint_every: int = 0) -> None:
        self.model, self.run_id, self.total_steps = model, run.pk, max(total_steps, 1)
        self.checkpoint_every = checkpoint_every  # points up to a checkpoint are always written
        self.history: list[dict[str, Any]] = [p for p in (run.history or []) if p.get("step", 0) <= resume_step]
        self.last: dict[str, Any] = dict(run.last_metrics or {})
        self.step = resume_step
        self.echo = echo
        self.stopped = False
        self._last_flush = 0.0
        self._last_poll = time.monotonic()
        self._dirty = False

    def on_log(self, step: int, metrics: Mapping[str, float]) -> None:
        point = {"step": int(step), **json_safe(dict(metrics))}
        if self.history and self.history[-1]["step"] == point["step"]:
            self.history[-1].update(point)  # evaluation metrics logged at the same step
        else:
            self.history.append(point)
        if len(self.history) > MAX_HISTORY_POINTS:
            self.history = self.history[::2] + ([self.history[-1]] if len(self.history) % 2 == 0 else [])
        self.last.update(point)
        self.step = int(step)
        self._dirty = True
        if self.echo is not None:
            self.echo(step, metrics)
        at_checkpoint = bool(self.checkpoint_every) and step % self.checkpoint_every == 0
        if at_checkpoint or time.monotonic() - self._last_flush >= METRICS_FLUSH_SECONDS:
            self.flush()

    def flush(self, *, force: bool = False) -> bool:
        if not (self._dirty or force):
            return not self.stopped
        updated = self.model._default_manager.filter(pk=self.run_id, status=RunStatus.RUNNING).update(
            history=self.history, last_metrics=self.last, step=self.step,
            progress=min(0.99, self.step / self.total_steps), heartbeat_at=timezone.now(), updated_at=timezone.now(),
        )
        self._last_flush = self._last_poll = time.monotonic()
        self._dirty = False
        if not updated:
            self.stopped = True
        return bool(updated)

    def should_stop(self) -> bool:
        if self.stopped:
            return True
        if time.monotonic() - self._last_poll >= STOP_POLL_SECONDS:
            self._last_poll = time.monotonic()
            status = self.model._default_manager.filter(pk=self.run_id).values_list("status", flat=True).first()
            self.stopped = status != RunStatus.RUNNING
        return self.stopped


def is_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # whatever raised a torch error loaded it; web processes never do
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def failure_reason(exc: BaseException) -> str:
    """What the run page says when training raised ``exc``."""
    if isinstance(exc, FloatingPointError):
        return f"Training diverged (the loss became NaN or infinite): {exc}"
    if is_oom(exc):
        return (f"Out of memory: {exc}. Lower batch_size or resolution, or use mixed_precision "
                "fp16/bf16.")
    return f"{type(exc).__name__}: {exc}"


@transaction.atomic
def run_fail(model: type[models.Model], run_id: int, error: str) -> None:
    if model._default_manager.filter(pk=run_id, status__in=[RunStatus.RUNNING, RunStatus.QUEUED]).update(
        status=RunStatus.FAILED, error=error[:5000], finished_at=timezone.now(), updated_at=timezone.now()
    ):
        run = model._default_manager.get(pk=run_id)
        emit("run.failed", project_id=run.project_id, data=lambda: run_event(run))


def free_memory() -> None:
    """Give the accelerator's cached memory back after a failure (best effort; nothing to do without torch)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001, S110 - best effort after a failure
        pass


def resume_step(output_dir: Path) -> int:
    latest = latest_checkpoint(output_dir)
    return int(read_metadata(latest)["step"]) if latest is not None else 0
