"""The life of a run, on every background job's lifecycle (:mod:`core.jobs`): claim, progress on a
heartbeat, failure; cancel and retry.

A claimed run holds a lease that its :class:`core.jobs.JobHeartbeat` renews on a timer while it trains,
however long a step takes; the reaper (``rlhf.tasks``) re-queues a run whose lease lapsed (its worker
died). Every write of the worker (progress, metrics, grids, the result) names its lease token, so a
worker whose run was taken back writes nothing and stops.

Each attempt works in a directory of its own, ``<run dir>/attempt-<n>``, which starts with a copy of the
checkpoints of the newest earlier attempt: a retried run resumes from its last checkpoint, and two
workers (a retried run's old worker may still be alive) never write one directory.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction

from core import jobs
from core.audit import audit_record
from core.exceptions import ApplicationError
from core.models import JobPhase
from core.parsing import check_length
from projects.access import project_check
from projects.models import Project
from projects.webhooks.events import emit, url_for
from rlhf.runs.distributed import TrainingProcessFailed
from rlhf.runs.hyperparams import json_safe
from rlhf.training.checkpoint import CHECKPOINTS_DIR, latest_checkpoint, list_checkpoints, read_metadata

MAX_HISTORY_POINTS = 2000  # longer histories are thinned (every other point) to stay small
# The trainers' phase names (Django-free code) and the job phases they stand for.
TRAINER_PHASES = {"loading_model": JobPhase.LOADING_MODEL, "training": JobPhase.TRAINING}

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


def run_cancel(model: type[models.Model], run: Any, user: Any = None) -> Any:
    """Cancel a queued or running run; its worker stops at its next stop check (about a second)."""
    before = run.status
    cancelled = jobs.job_cancel(model, run.pk)  # type: ignore[arg-type]
    audit_record(event="run.cancelled", instance=cancelled, actor=user, project_id=cancelled.project_id,
                 changes={"status": [before, cancelled.status]})
    return cancelled


def run_retry(model: type[models.Model], run: Any, task_name: str, user: Any = None) -> Any:
    """Queue a failed, cancelled or abandoned run again (task ``task_name``); it resumes from its last checkpoint."""
    before = run.status
    retried = jobs.job_retry(model, run.pk, task_name=task_name)  # type: ignore[arg-type]
    audit_record(event="run.retried", instance=retried, actor=user, project_id=retried.project_id,
                 changes={"status": [before, retried.status]})
    return retried


def run_claim(model: type[models.Model], run_id: int) -> tuple[Any, jobs.Lease] | None:
    """Claim a queued run for this worker (announced as ``run.started``); None when it is not queued
    (finished, or another worker's)."""
    with transaction.atomic():
        claimed = jobs.job_claim(model, run_id, phase=JobPhase.STARTING)  # type: ignore[arg-type]
        if claimed is not None:
            run = claimed[0]
            emit("run.started", project_id=run.project_id, data=lambda: run_event(run))
    return claimed


def run_failed_announce(run: Any) -> None:
    """``run.failed``, whoever failed the run: its worker (:func:`run_fail`) or the reaper, once its workers
    kept dying (``jobs_reap``'s ``on_fail``)."""
    emit("run.failed", project_id=run.project_id, data=lambda: run_event(run))


def run_fail(lease: jobs.Lease, error: str) -> bool:
    """Fail the run with ``error`` (announced as ``run.failed``), if it is still this worker's."""
    with transaction.atomic():
        if not jobs.job_fail(lease, error):
            return False
        run_failed_announce(lease.model._default_manager.get(pk=lease.pk))
    return True


def attempt_dir(run_dir: Path, lease: jobs.Lease) -> Path:
    """The directory this attempt works in, seeded with the newest earlier attempt's checkpoints.

    The first attempt starts from nothing (whatever an earlier database's run of the same id left there
    is removed). A later one copies the ``checkpoints/`` of the attempt whose last checkpoint is the
    newest, so training resumes there; the earlier attempts' directories stay theirs (a stalled old
    worker may still write to its own) until the run finishes.
    """
    own = run_dir / jobs.attempt_name(lease.attempt)
    if lease.attempt == 1:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        shutil.rmtree(own, ignore_errors=True)
    own.mkdir(parents=True, exist_ok=True)
    best: tuple[int, int, Path] | None = None
    # Earlier attempts' directories, and the run directory itself (runs started before attempts had their own).
    candidates = [(other, other.name.removeprefix("attempt-")) for other in run_dir.glob("attempt-*")]
    for other, number in [*candidates, (run_dir, "0")]:
        if other == own or not number.isdigit():
            continue
        latest = latest_checkpoint(other)
        if latest is not None:
            key = (int(read_metadata(latest)["step"]), int(number), other)
            best = max(best, key) if best is not None else key
    if best is not None:
        shutil.copytree(best[2] / CHECKPOINTS_DIR, own / CHECKPOINTS_DIR)
    return own


def other_attempt_dirs(run_dir: Path, lease: jobs.Lease) -> list[Path]:
    return [path for path in run_dir.glob("attempt-*") if path.name != jobs.attempt_name(lease.attempt)]


def resume_step(output_dir: Path) -> int:
    latest = latest_checkpoint(output_dir)
    return int(read_metadata(latest)["step"]) if latest is not None else 0


def checkpoint_steps(output_dir: Path) -> list[int]:
    return [int(read_metadata(path)["step"]) for path in list_checkpoints(output_dir)]


class RunProgress:
    """``on_log``/``on_phase``/``should_stop`` for the trainers, on the run's heartbeat.

    Points are kept in memory and handed to the heartbeat, which writes them with the step, progress
    and lease renewal on its timer; a point at a checkpoint is written at once (``flush``). ``should_stop``
    is true once the run is no longer this worker's (cancelled, retried, reaped).
    """

    def __init__(self, heartbeat: jobs.JobHeartbeat, run: Any, *, total_steps: int, resume_step: int = 0,
                 echo: OnLog | None = None, checkpoint_every: int = 0) -> None:
        self.heartbeat, self.total_steps = heartbeat, max(total_steps, 1)
        self.checkpoint_every = checkpoint_every  # points up to a checkpoint are always written
        self.history: list[dict[str, Any]] = [p for p in (run.history or []) if p.get("step", 0) <= resume_step]
        self.last: dict[str, Any] = dict(run.last_metrics or {})
        self.step = resume_step
        self.echo = echo

    def _state(self) -> dict[str, Any]:
        # Copies: the heartbeat thread writes them while this thread goes on appending.
        return {"history": list(self.history), "last_metrics": dict(self.last), "step": self.step,
                "progress": min(0.99, self.step / self.total_steps)}

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
        if self.echo is not None:
            self.echo(step, metrics)
        self.heartbeat.set(**self._state())
        if self.checkpoint_every and step % self.checkpoint_every == 0:
            self.heartbeat.flush()

    def on_phase(self, phase: str) -> None:
        """A trainer says where it is ("loading_model", "training")."""
        self.heartbeat.phase(TRAINER_PHASES.get(phase, phase), **self._state())

    def enter(self, phase: str) -> bool:
        """This run enters ``phase`` (rendering grids, registering); False once the run is no longer ours."""
        return self.heartbeat.phase(phase, **self._state())

    def flush(self) -> bool:
        self.heartbeat.set(**self._state())
        return self.heartbeat.flush()

    def should_stop(self) -> bool:
        return self.heartbeat.should_stop()

    @property
    def stopped(self) -> bool:
        return self.heartbeat.lost


def heartbeat_for(lease: jobs.Lease) -> jobs.JobHeartbeat:
    return jobs.JobHeartbeat(lease, interval=settings.JOB_HEARTBEAT_SECONDS)


def is_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # whatever raised a torch error loaded it; web processes never do
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def failure_reason(exc: BaseException) -> str:
    """What the run page says when training raised ``exc``."""
    if isinstance(exc, TrainingProcessFailed):  # a process group's failure, said already
        return str(exc)
    if isinstance(exc, FloatingPointError):
        return f"Training diverged (the loss became NaN or infinite): {exc}"
    if is_oom(exc):
        return (f"Out of memory: {exc}. Lower batch_size or resolution, or use mixed_precision "
                "fp16/bf16.")
    return f"{type(exc).__name__}: {exc}"


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


def run_name(name: str | None, *, model: type[Any]) -> str:
    """A run's name as given (stripped), refused when longer than ``model``'s ``name`` column."""
    return check_length((name or "").strip(), field="name", maximum=model._meta.get_field("name").max_length)
