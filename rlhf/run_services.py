"""Reward-model runs, fine-tune runs and reward scoring: every write, and the task bodies.

Creating a run validates everything a run needs (data, backbone or base pipeline, reward, the
hyper-parameters through the Django-free config dataclasses) and maps each problem to an
``ApplicationError`` naming the field, so nothing bad is ever queued. The Celery tasks in
``rlhf.tasks`` are one call each: :func:`reward_run_execute`, :func:`finetune_run_execute`,
:func:`image_scores_compute`. The management commands run the same functions in-process.

Runs work in ``PICKWISE_MODEL_CACHE_DIR/runs/<kind>-<id>``; the training code resumes from the
newest checkpoint there, so a run whose worker died continues where it left off when it runs again
(:func:`finetune_run_retry` / :func:`reward_run_retry`). Finished weights are copied to a stable
directory before anything is registered; a run that fails registers nothing.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import fields
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import models, transaction
from django.utils import timezone
from django.utils.text import slugify

from annotate import access
from annotate.models import Project, Prompt
from core.exceptions import ApplicationError
from generation.models import GeneratedImage, ModelKind, ModelVersion
from rlhf.export_services import export_directory
from rlhf.models import (
    FineTuneRun,
    ImageScore,
    PreferenceExport,
    RewardModelRun,
    RewardModelVersion,
    RunStatus,
)
from rlhf.run_selectors import grid_order

logger = logging.getLogger(__name__)

MIN_TRAIN_PAIRS = 8  # fewer train pairs than this cannot train anything worth registering
METRICS_FLUSH_SECONDS = 2.0  # metric points are written at most this often (plus the final one)
STOP_POLL_SECONDS = 1.0  # should_stop() reads the run's status at most this often
STALE_RUN_SECONDS = 120  # a running run without a heartbeat for this long has lost its worker
MAX_HISTORY_POINTS = 2000  # longer histories are thinned (every other point) to stay small
EVAL_SEEDS = (0, 1)  # fixed seeds of the evaluation grids
MAX_EVAL_PROMPTS = 3
SCORE_BATCH = 32
MAX_SCORE_IMAGES = 256
MAX_DDPO_PROMPTS = 1000

OnLog = Callable[[int, Mapping[str, float]], None]


# --- paths --------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path(settings.PICKWISE_MODEL_CACHE_DIR)


def reward_run_dir(run: RewardModelRun) -> Path:
    return _cache_dir() / "runs" / f"reward-{run.pk}"


def reward_version_dir(run: RewardModelRun) -> Path:
    return _cache_dir() / "reward-models" / f"reward-{run.pk}"


def finetune_run_dir(run: FineTuneRun) -> Path:
    return _cache_dir() / "runs" / f"finetune-{run.pk}"


def finetune_lora_dir(run: FineTuneRun) -> Path:
    return _cache_dir() / "loras" / f"finetune-{run.pk}"


def eval_image_key(run: FineTuneRun, label: str, index: int) -> str:
    """Deterministic storage key of one evaluation image (a re-run overwrites, never duplicates)."""
    return f"finetune-runs/{run.pk}/{label}/{index}.png"


def export_data_path(export: PreferenceExport) -> Path:
    name = "rankings.parquet" if export.format == PreferenceExport.Format.LISTWISE else "pairs.parquet"
    return export_directory(export) / name


# --- hyper-parameters ----------------------------------------------------------------------------------


def parse_hyperparameters(value: Any) -> dict[str, Any]:
    """A dict from the API, or the browser's text: a JSON object or ``key = value`` lines."""
    if value in (None, ""):
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str):
        raise ApplicationError("Hyper-parameters are a JSON object or key=value lines.", field="hyperparameters")
    text = value.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApplicationError(f"Hyper-parameters are not valid JSON: {exc}", field="hyperparameters") from None
        if not isinstance(parsed, dict):
            raise ApplicationError("Hyper-parameters must be a JSON object.", field="hyperparameters")
        return parsed
    result: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ApplicationError(f"Line {number} is not key=value: {line!r}.", field="hyperparameters")
        key, _, raw = line.partition("=")
        result[key.strip()] = raw.strip()
    return result


_INT_OR_NONE = {"max_steps", "image_size"}
# Upper bounds the dataclasses do not check; a value above one is a typo rather than a choice.
_UPPER = {"lr": 1.0, "batch_size": 4096, "train_batch_size": 4096, "grad_accum": 1024, "epochs": 1000,
          "max_steps": 10_000_000, "iterations": 100_000, "lora_rank": 1024, "resolution": 2048,
          "sample_steps": 1000, "images_per_prompt": 1024, "prompts_per_iteration": 1024}


def _coerce(name: str, current: Any, value: Any) -> Any:
    try:
        if isinstance(current, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if current is None and value in (None, "", "none", "None", "null"):
            return None
        if isinstance(current, int) or (current is None and name in _INT_OR_NONE):
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        if isinstance(current, float) or current is None:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(current, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(item).strip() for item in items if str(item).strip())
        return str(value)
    except (TypeError, ValueError):
        raise ApplicationError(f"{name} has the wrong type: {value!r}.", field=name) from None


def _config_error(exc: ValueError, known: set[str], rename: Mapping[str, str]) -> ApplicationError:
    """The config dataclasses name the offending field first in their messages."""
    message = str(exc)
    first = message.split(" ", 1)[0].rstrip(":,")
    field = rename.get(first, first if first in known else "hyperparameters")
    return ApplicationError(message + ("" if message.endswith(".") else "."), field=field)


def _build_config(
    factory: Callable[..., Any], config_cls: type, fixed: dict[str, Any], overrides: Mapping[str, Any],
    *, protected: set[str], rename: Mapping[str, str],
) -> Any:
    """``factory(**fixed, **coerced overrides)``; unknown, protected or out-of-range keys name the field."""
    known = {f.name for f in fields(config_cls)}
    try:
        defaults = factory(**fixed)
    except ValueError as exc:
        raise _config_error(exc, known, rename) from None
    coerced: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known or key in protected:
            raise ApplicationError(f"Unknown hyper-parameter {key!r}.", field=key)
        coerced[key] = _coerce(key, getattr(defaults, key), value)
        upper = _UPPER.get(key)
        if upper is not None and isinstance(coerced[key], int | float) and coerced[key] > upper:
            raise ApplicationError(f"{key} must be at most {upper}, not {coerced[key]!r}.", field=key)
    try:
        return factory(**{**fixed, **coerced})
    except ValueError as exc:
        raise _config_error(exc, known, rename) from None


def _config_dict(config: Any) -> dict[str, Any]:
    from rlhf.training.checkpoint import config_dict

    return _json_safe(config_dict(config))


def _json_safe(value: Any) -> Any:
    """JSON for PostgreSQL: NaN and infinities become null, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --- shared validation -----------------------------------------------------------------------------------


def _check_user_may_train(user: AbstractBaseUser | None, project: Project | None) -> None:
    """``user=None`` is trusted code (management commands); everyone else needs ``train`` in the project."""
    if user is None:
        return
    if project is None:
        if not getattr(user, "is_superuser", False):
            raise ApplicationError("Only superusers may train from a file outside a project.", field="data_path")
        return
    access.require(user=user, action="train", project=project)


def _check_export(export: PreferenceExport, *, formats: tuple[str, ...]) -> Path:
    if export.status != RunStatus.SUCCEEDED:
        raise ApplicationError(f"Export {export.pk} has not succeeded (it is {export.status}).", field="export")
    if export.format not in formats:
        raise ApplicationError(
            f"Export {export.pk} is in format {export.format!r}; training reads {' or '.join(formats)}.",
            field="export",
        )
    if not export.include_images:
        raise ApplicationError(f"Export {export.pk} was made without image bytes; training needs them.",
                               field="export")
    path = export_data_path(export)
    if not path.is_file():
        raise ApplicationError(f"The files of export {export.pk} are missing ({path}).", field="export")
    if export.pairs == 0 and export.format != PreferenceExport.Format.LISTWISE:
        raise ApplicationError(f"Export {export.pk} has no pairs.", field="export")
    train = int((export.split_counts or {}).get("train", 0))
    if train < MIN_TRAIN_PAIRS:
        unit = "rankings" if export.format == PreferenceExport.Format.LISTWISE else "pairs"
        raise ApplicationError(
            f"Export {export.pk} has {train} train {unit}; training needs at least {MIN_TRAIN_PAIRS}.",
            field="export",
        )
    return path


def _check_data_path(data_path: str) -> Path:
    from rlhf.training.data import count_rows, table_layout

    path = Path(data_path).expanduser()
    if not path.is_file():
        raise ApplicationError(f"{data_path} is not a file.", field="data_path")
    try:
        table_layout(path)
        train = count_rows(path, "train")
    except (OSError, ValueError) as exc:
        raise ApplicationError(f"{data_path} is not a preference Parquet file: {exc}", field="data_path") from None
    if train < MIN_TRAIN_PAIRS:
        raise ApplicationError(f"{data_path} has {train} train rows; training needs at least {MIN_TRAIN_PAIRS}.",
                               field="data_path")
    return path


# --- reward-model runs ------------------------------------------------------------------------------------


def _check_backbone(backbone: str) -> str:
    backbone = (backbone or "tiny").strip()
    if backbone == "tiny" or Path(backbone).expanduser().is_dir():
        return str(Path(backbone).expanduser()) if backbone != "tiny" else backbone
    from rlhf.training.reward_train import _HUB_ID

    if not _HUB_ID.match(backbone):
        raise ApplicationError(f"Backbone {backbone!r} does not exist: give 'tiny', a CLIP directory or a hub id.",
                               field="backbone")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(backbone, "config.json")
    if not isinstance(cached, str):
        raise ApplicationError(f"Backbone {backbone!r} is not in the local Hugging Face cache; download it first.",
                               field="backbone")
    return backbone


def reward_config_build(
    *, backbone: str, preset: str, hyperparameters: Mapping[str, Any], export_id: str, listwise: bool
) -> Any:
    """A validated ``RewardModelConfig``; every problem is an ApplicationError naming its field."""
    from rlhf.training.reward_train import RewardModelConfig, pickscore_preset, tiny_reward_preset

    if preset not in RewardModelRun.Preset.values:
        raise ApplicationError(f"Unknown preset {preset!r}; choose one of {', '.join(RewardModelRun.Preset.values)}.",
                               field="preset")
    backbone = _check_backbone(backbone)
    factory = tiny_reward_preset if preset == RewardModelRun.Preset.TINY else pickscore_preset
    fixed = {"backbone": backbone, "export_id": export_id, "cpu": settings.PICKWISE_DEVICE == "cpu",
             "loss": "plackett_luce" if listwise else "bradley_terry"}
    if factory is pickscore_preset:
        fixed.pop("backbone")
        factory = lambda **kw: pickscore_preset(backbone, **kw)  # noqa: E731
    return _build_config(factory, RewardModelConfig, fixed, hyperparameters,
                         protected={"backbone", "export_id", "cpu"}, rename={})


@transaction.atomic
def reward_run_create(
    *,
    user: AbstractBaseUser | None,
    export: PreferenceExport | None = None,
    data_path: str = "",
    backbone: str = "tiny",
    preset: str = "tiny",
    hyperparameters: Mapping[str, Any] | str | None = None,
    name: str = "",
    enqueue: bool = True,
) -> RewardModelRun:
    """Validate and queue a reward-model run on ``export`` (or, from trusted code, a Parquet file).

    ``user=None`` means trusted code (the management command) and skips the permission check.
    """
    from rlhf.tasks import train_reward_model

    if export is None and not data_path:
        raise ApplicationError("Pick an export to train on.", field="export")
    project = export.project if export is not None else None
    _check_user_may_train(user, project)
    if export is not None:
        _check_export(export, formats=(PreferenceExport.Format.PICKAPIC, PreferenceExport.Format.LISTWISE))
        listwise = export.format == PreferenceExport.Format.LISTWISE
    else:
        from rlhf.training.data import table_layout

        listwise = table_layout(_check_data_path(data_path)) == "listwise"
    config = reward_config_build(
        backbone=backbone, preset=preset, hyperparameters=parse_hyperparameters(hyperparameters),
        export_id=str(export.pk) if export is not None else Path(data_path).name, listwise=listwise,
    )
    run = RewardModelRun.objects.create(
        project=project, export=export, data_path=str(Path(data_path).expanduser()) if data_path else "",
        created_by=user, name=(name or "")[:200], backbone=config.backbone, preset=preset,
        config=_config_dict(config),
    )
    if enqueue:  # the management command runs the task body in-process instead
        train_reward_model.delay_on_commit(run.pk)
    return run


def _cancel(model: type[models.Model], run: Any) -> Any:
    locked = model._default_manager.select_for_update().get(pk=run.pk)
    if locked.is_finished:
        raise ApplicationError(f"{locked} has already {locked.status}.", field="status")
    locked.status = RunStatus.CANCELLED
    locked.finished_at = timezone.now()
    locked.save(update_fields=["status", "finished_at", "updated_at"])
    return locked


@transaction.atomic
def reward_run_cancel(*, run: RewardModelRun) -> RewardModelRun:
    """Cancel a queued or running run; a running one stops at its next step (should_stop polls)."""
    return _cancel(RewardModelRun, run)


@transaction.atomic
def finetune_run_cancel(*, run: FineTuneRun) -> FineTuneRun:
    return _cancel(FineTuneRun, run)


def _retry(model: type[models.Model], run: Any, task: Any) -> Any:
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
    task.delay_on_commit(locked.pk)
    return locked


@transaction.atomic
def reward_run_retry(*, run: RewardModelRun) -> RewardModelRun:
    """Queue a failed, cancelled or abandoned run again; it resumes from its last checkpoint."""
    from rlhf.tasks import train_reward_model

    return _retry(RewardModelRun, run, train_reward_model)


@transaction.atomic
def finetune_run_retry(*, run: FineTuneRun) -> FineTuneRun:
    """Queue a failed, cancelled or abandoned run again; it resumes from its last checkpoint."""
    from rlhf.tasks import finetune_model

    return _retry(FineTuneRun, run, finetune_model)


# --- running: start, progress, failure ----------------------------------------------------------------


def _run_start(model: type[models.Model], run_id: int) -> tuple[Any, bool] | None:
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
        point = {"step": int(step), **_json_safe(dict(metrics))}
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


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def failure_reason(exc: BaseException) -> str:
    """What the run page says when training raised ``exc``."""
    if isinstance(exc, FloatingPointError):
        return f"Training diverged (the loss became NaN or infinite): {exc}"
    if _is_oom(exc):
        return (f"Out of memory: {exc}. Lower batch_size or resolution, or use mixed_precision "
                "fp16/bf16.")
    return f"{type(exc).__name__}: {exc}"


def _run_fail(model: type[models.Model], run_id: int, error: str) -> None:
    model._default_manager.filter(pk=run_id, status__in=[RunStatus.RUNNING, RunStatus.QUEUED]).update(
        status=RunStatus.FAILED, error=error[:5000], finished_at=timezone.now(), updated_at=timezone.now()
    )


def _free_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001, S110 - best effort after a failure
        pass


def _copy_directory(source: Path, target: Path, *, skip: tuple[str, ...] = ("training_state",)) -> Path:
    """Copy ``source`` to ``target`` through a sibling temp directory, so ``target`` is whole or absent."""
    partial = target.with_name(f"{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns(*skip))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _resume_step(output_dir: Path) -> int:
    from rlhf.training.checkpoint import latest_checkpoint, read_metadata

    latest = latest_checkpoint(output_dir)
    return int(read_metadata(latest)["step"]) if latest is not None else 0


# --- export captions -----------------------------------------------------------------------


def export_captions(export: PreferenceExport, limit: int = MAX_DDPO_PROMPTS) -> list[str]:
    """The export's distinct captions, in file order."""
    import pyarrow.parquet as pq

    seen: dict[str, None] = {}
    for batch in pq.ParquetFile(export_data_path(export)).iter_batches(columns=["caption"], batch_size=4096):
        for caption in batch.column(0).to_pylist():
            if caption and caption not in seen:
                seen[caption] = None
                if len(seen) >= limit:
                    return list(seen)
    return list(seen)


def agreement_ceiling_of(path: Path) -> dict[str, Any] | None:
    """The annotators' agreement ceiling from a pickapic export's vote columns (test split, else all)."""
    import pyarrow.parquet as pq

    from rlhf.training.evaluate import agreement_ceiling

    columns = ["task_id", "image_0_uid", "image_1_uid", "votes_0", "votes_1", "votes_tie", "split"]
    parquet = pq.ParquetFile(path)
    if not set(columns) <= set(parquet.schema_arrow.names):
        return None
    rows = parquet.read(columns=columns).to_pylist()
    split = "test" if any(r["split"] == "test" for r in rows) else None
    unique: dict[tuple[Any, str, str], tuple[int, int, int]] = {}
    for r in rows:
        if split and r["split"] != split:
            continue
        a, b = r["image_0_uid"], r["image_1_uid"]
        votes = (r["votes_0"], r["votes_1"]) if a <= b else (r["votes_1"], r["votes_0"])
        unique[(r["task_id"], min(a, b), max(a, b))] = (*votes, r["votes_tie"] or 0)
    if not unique:
        return None
    v0, v1, vt = zip(*unique.values(), strict=True)
    ceiling = agreement_ceiling(v0, v1, vt)
    return _json_safe({"oracle": ceiling.oracle, "inter_annotator": ceiling.inter_annotator,
                       "split": split or "all", "pairs": len(unique)})


# --- reward-model runs: the task body -------------------------------------------------------------------


def _run_data_path(run: RewardModelRun | FineTuneRun) -> Path:
    """The Parquet a run trains on: its export's data file, or the path it was started with."""
    if run.export is None:
        return Path(run.data_path)
    # Both export formats are in the trainer's layout (rankings.parquet: images best first, 0-based ranks).
    return export_data_path(run.export)


def reward_config_from_run(run: RewardModelRun) -> Any:
    from rlhf.training.reward_train import RewardModelConfig

    return RewardModelConfig(**run.config)


def reward_run_execute(*, run_id: int, echo: OnLog | None = None) -> RewardModelRun | None:
    """Train, evaluate and register one reward-model run; a no-op for a finished (or held) run.

    ``echo(step, metrics)`` sees every logged point (the management command's progress bar).
    """
    from rlhf.training.data import count_rows
    from rlhf.training.reward_train import train_reward_model

    claimed = _run_start(RewardModelRun, run_id)
    if claimed is None:
        return RewardModelRun.objects.filter(pk=run_id).first()
    run, fresh = claimed
    run = RewardModelRun.objects.select_related("export", "project").get(pk=run.pk)
    output_dir = reward_run_dir(run)
    if fresh:
        shutil.rmtree(output_dir, ignore_errors=True)  # leftovers of an earlier database's run with this id
    try:
        config = reward_config_from_run(run)
        data_path = _run_data_path(run)
        rows = count_rows(data_path, "train")
        total = config.epochs * math.ceil(rows / (config.batch_size * config.grad_accum))
        total = min(total, config.max_steps) if config.max_steps else total
        RewardModelRun.objects.filter(pk=run.pk).update(total_steps=total)
        progress = RunProgress(RewardModelRun, run, total_steps=total, resume_step=_resume_step(output_dir),
                               echo=echo, checkpoint_every=config.checkpoint_every)
        result = train_reward_model(config, data_path, output_dir, on_log=progress.on_log,
                                    should_stop=progress.should_stop, resume=True)
        progress.flush(force=True)
    except Exception as exc:
        logger.exception("reward run %s failed", run_id)
        _free_memory()
        _run_fail(RewardModelRun, run_id, failure_reason(exc))
        return RewardModelRun.objects.get(pk=run_id)
    if result.stopped:
        _run_fail(RewardModelRun, run_id, "Stopped before the end.")  # only if it was not cancelled
        return RewardModelRun.objects.get(pk=run_id)
    ceiling = agreement_ceiling_of(data_path) if run.export is not None else None
    results = _json_safe({
        "step": result.step,
        "validation": result.validation.as_dict() if result.validation else None,
        "test": result.test.as_dict() if result.test else None,
        "ceiling": ceiling,
        "last_metrics": result.last_metrics,
    })
    stable = _copy_directory(result.model_dir, reward_version_dir(run))
    return _reward_run_register(run_id=run_id, path=stable, results=results)


@transaction.atomic
def _reward_run_register(*, run_id: int, path: Path, results: dict[str, Any]) -> RewardModelRun:
    run = RewardModelRun.objects.select_for_update(of=("self",)).select_related("export", "project").get(pk=run_id)
    if run.status != RunStatus.RUNNING:  # cancelled while evaluating: register nothing
        shutil.rmtree(path, ignore_errors=True)
        return run
    base = slugify(run.name)[:80] if run.name else "reward"
    test = results.get("test") or {}
    validation = results.get("validation") or {}
    RewardModelVersion.objects.create(
        name=f"{base}-{run.pk}", project=run.project, run=run, export=run.export, path=str(path),
        metrics={"test_accuracy": test.get("accuracy"), "validation_accuracy": validation.get("accuracy"),
                 "threshold": test.get("threshold", validation.get("threshold")), "ece": test.get("ece"),
                 "ceiling": (results.get("ceiling") or {}).get("oracle")},
        description=(f"Reward model from run {run.pk} on "
                     f"{'export ' + str(run.export_id) if run.export_id else run.data_path}; "
                     f"backbone {run.backbone}, preset {run.preset}, loss {run.config.get('loss')}."),
        created_by=run.created_by,
    )
    run.status = RunStatus.SUCCEEDED
    run.progress = 1.0
    run.results = results
    run.step = int(results.get("step") or run.step)
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "progress", "results", "step", "finished_at", "updated_at"])
    return run


# --- fine-tune runs ---------------------------------------------------------------------------------------


def base_pipeline_dir(version: ModelVersion) -> Path:
    """The local diffusers directory of a base text-to-image version with a UNet; ApplicationError otherwise."""
    from generation.worker import resolve_source

    if version.kind != ModelKind.BASE:
        raise ApplicationError(f"{version.name} is a LoRA version, not a base version.", field="base_version")
    path = Path(resolve_source(version.source))
    if not (path / "model_index.json").is_file():
        raise ApplicationError(
            f"{version.name} is not a local diffusers pipeline directory (no model_index.json at {path}).",
            field="base_version",
        )
    if not (path / "unet" / "config.json").is_file():
        raise ApplicationError(f"{version.name} has no UNet (unet/config.json); only UNet pipelines can be "
                               "fine-tuned here.", field="base_version")
    return path


def finetune_start(version: ModelVersion) -> tuple[ModelVersion, Path, Path | None]:
    """Where a fine-tune of ``version`` starts: (root base version, its pipeline directory, adapter or None).

    A base version starts a fresh LoRA on itself. An enabled LoRA version on a base version is continued:
    training runs on the base's pipeline with the version's adapter as the starting weights
    (``init_lora``), resolved the way the generation worker resolves it. Anything else is an
    ApplicationError naming ``base_version``.
    """
    from generation.worker import resolve_source
    from rlhf.training.lora import LORA_WEIGHTS_FILE

    if version.kind == ModelKind.BASE:
        return version, base_pipeline_dir(version), None
    if not version.enabled:
        raise ApplicationError(f"{version.name} is disabled; enable it to continue it.", field="base_version")
    root = version.parent
    if root is None or root.kind != ModelKind.BASE:
        raise ApplicationError(f"{version.name} is a LoRA on {root.name if root else 'nothing'}, not on a base "
                               "version; only a LoRA on a base version can be continued.", field="base_version")
    if version.lora_scale != 1.0:
        raise ApplicationError(f"{version.name} applies its LoRA at scale {version.lora_scale:g}; fine-tuning "
                               "continues an adapter at scale 1.", field="base_version")
    try:
        root_dir = base_pipeline_dir(root)
    except ApplicationError as exc:
        raise ApplicationError(f"{version.name} is a LoRA on {root.name}, which cannot be fine-tuned: {exc.message}",
                               field="base_version") from None
    adapter = Path(resolve_source(version.lora_path))
    if not (adapter / LORA_WEIGHTS_FILE).is_file():
        raise ApplicationError(f"The adapter files of {version.name} are missing ({adapter / LORA_WEIGHTS_FILE}).",
                               field="base_version")
    return root, root_dir, adapter


def _ddpo_prompts(*, prompt_source: str, project: Project | None, export: PreferenceExport | None) -> tuple[str, ...]:
    if prompt_source == FineTuneRun.PromptSource.PROJECT:
        if project is None:
            raise ApplicationError("Pick the project whose prompts DDPO samples.", field="project")
        texts = list(Prompt.objects.filter(project=project).order_by("pk").values_list("text", flat=True)
                     .distinct()[:MAX_DDPO_PROMPTS])
    elif prompt_source == FineTuneRun.PromptSource.EXPORT:
        if export is None:
            raise ApplicationError("Prompts from an export need the export.", field="export")
        texts = export_captions(export)
    else:
        raise ApplicationError("DDPO needs a prompt source: 'project' or 'export'.", field="prompt_source")
    prompts = tuple(dict.fromkeys(t.strip() for t in texts if t and t.strip()))
    if not prompts:
        raise ApplicationError("The prompt source has no prompts.", field="prompt_source")
    return prompts


def native_resolution(version: ModelVersion) -> int | None:
    """The square size a base version generates at by default (None when it is not square)."""
    width, height = version.default_width, version.default_height
    return width if width and width == height else None


def finetune_config_build(
    *, method: str, preset: str, base_dir: Path, hyperparameters: Mapping[str, Any], export_id: str = "",
    prompts: tuple[str, ...] = (), reward: str = "", reward_arg: str | None = None, resolution: int | None = None,
    init_lora: Path | None = None,
) -> Any:
    """A validated ``DPOConfig`` or ``DDPOConfig``; every problem names its field.

    ``resolution`` (the base version's native size) replaces the preset's unless the hyper-parameters
    set one: a model trained or sampled away from its native size learns the wrong thing. ``init_lora``
    (a LoRA version's adapter) is the starting weights; the presets take its rank, alpha and targets, and
    an override that disagrees names its field.
    """
    from rlhf.training import ddpo, dpo

    if preset not in FineTuneRun.Preset.values:
        raise ApplicationError(f"Unknown preset {preset!r}; choose one of {', '.join(FineTuneRun.Preset.values)}.",
                               field="preset")
    cpu = settings.PICKWISE_DEVICE == "cpu"
    rename = {"base_model": "base_version", "reward": "reward", "reward_arg": "reward_version",
              "prompts": "prompt_source", "init_lora": "base_version"}
    native = {"resolution": resolution} if resolution else {}
    start = {"init_lora": str(init_lora)} if init_lora is not None else {}
    if method == FineTuneRun.Method.DPO:
        preset_fn = dpo.tiny_dpo_preset if preset == "tiny" else dpo.sd15_dpo_preset
        return _build_config(lambda **kw: preset_fn(str(base_dir), **kw), dpo.DPOConfig,
                             {"export_id": export_id, "cpu": cpu, **native, **start}, hyperparameters,
                             protected={"base_model", "export_id", "cpu", "init_lora"}, rename=rename)
    ddpo_preset_fn = ddpo.tiny_ddpo_preset if preset == "tiny" else ddpo.sd15_ddpo_preset
    return _build_config(lambda **kw: ddpo_preset_fn(str(base_dir), prompts, **kw), ddpo.DDPOConfig,
                         {"reward": reward, "reward_arg": reward_arg, "cpu": cpu, **native, **start}, hyperparameters,
                         protected={"base_model", "prompts", "reward", "reward_arg", "cpu", "init_lora"},
                         rename=rename)


@transaction.atomic
def finetune_run_create(
    *,
    user: AbstractBaseUser | None,
    base_version: ModelVersion,
    method: str,
    project: Project | None = None,
    export: PreferenceExport | None = None,
    data_path: str = "",
    reward_name: str = "",
    reward_version: RewardModelVersion | None = None,
    prompt_source: str = "",
    preset: str = "tiny",
    hyperparameters: Mapping[str, Any] | str | None = None,
    eval_prompts: list[str] | None = None,
    name: str = "",
    enqueue: bool = True,
) -> FineTuneRun:
    """Validate and queue a LoRA fine-tune of ``base_version``.

    ``base_version`` is a base version (a fresh LoRA on it) or a LoRA version on one, which the run
    continues (:func:`finetune_start`): it trains on the base's pipeline from the version's adapter, and
    registers the result as a LoRA on that base. ``method="dpo"`` trains on ``export``'s pairs; ``method="ddpo"`` needs a reward (a built-in
    ``reward_name`` or a ``reward_version``) and a ``prompt_source`` ("project" or "export").
    ``user=None`` means trusted code (the management command) and skips the permission check.
    """
    from rlhf.tasks import finetune_model
    from rlhf.training.rewards import REWARD_FUNCTIONS

    if method not in FineTuneRun.Method.values:
        raise ApplicationError(f"Unknown method {method!r}; choose dpo or ddpo.", field="method")
    project = project or (export.project if export is not None else None) or (
        reward_version.project if reward_version is not None else None)
    if export is not None and project is not None and export.project_id != project.pk:
        raise ApplicationError("The export belongs to another project.", field="export")
    _check_user_may_train(user, project)
    root, base_dir, init_lora = finetune_start(base_version)
    overrides = parse_hyperparameters(hyperparameters)
    reward_id = ""
    data_captions: list[str] = []
    if method == FineTuneRun.Method.DPO:
        if export is not None:
            _check_export(export, formats=(PreferenceExport.Format.PICKAPIC, PreferenceExport.Format.LISTWISE))
            data_captions = export_captions(export, limit=MAX_EVAL_PROMPTS)
        elif data_path:
            _check_data_path(data_path)
        else:
            raise ApplicationError("DPO trains on preference pairs: pick an export.", field="export")
        config = finetune_config_build(method=method, preset=preset, base_dir=base_dir, hyperparameters=overrides,
                                       resolution=native_resolution(root), init_lora=init_lora,
                                       export_id=str(export.pk) if export is not None else Path(data_path).name)
        prompts: tuple[str, ...] = tuple(data_captions)
    else:
        if reward_version is not None and reward_name:
            raise ApplicationError("Give a built-in reward or a reward model, not both.", field="reward")
        if reward_version is not None:
            if reward_version.project_id and project is not None and reward_version.project_id != project.pk:
                _check_user_may_train(user, reward_version.project)
            reward, reward_arg = "reward_model", reward_version.path
            reward_id = f"reward_version:{reward_version.pk}"
        else:
            builtin = sorted(k for k in REWARD_FUNCTIONS if k != "reward_model")
            if reward_name not in builtin:
                raise ApplicationError(f"Unknown reward {reward_name!r}; choose one of {', '.join(builtin)} "
                                       "or a reward model.", field="reward")
            reward, reward_arg = reward_name, None
            reward_id = reward_name
        if export is not None:
            _check_export(export, formats=(PreferenceExport.Format.PICKAPIC, PreferenceExport.Format.LISTWISE))
        prompts = _ddpo_prompts(prompt_source=prompt_source, project=project, export=export)
        config = finetune_config_build(method=method, preset=preset, base_dir=base_dir, hyperparameters=overrides,
                                       resolution=native_resolution(root), prompts=prompts, reward=reward,
                                       reward_arg=reward_arg, init_lora=init_lora)
    chosen = [p.strip() for p in (eval_prompts or []) if p and p.strip()][:MAX_EVAL_PROMPTS]
    eval_list = chosen or list(prompts[:MAX_EVAL_PROMPTS]) or ["a photo"]
    config_json = _config_dict(config)
    lineage = {
        "base_version": {"id": root.pk, "name": root.name, "source": root.source},
        "continued_from": {"id": base_version.pk, "name": base_version.name} if init_lora is not None else None,
        "method": method, "export": export.pk if export is not None else None, "data_path": data_path or None,
        "reward": reward_id or None, "preset": preset,
        "config": {k: v for k, v in config_json.items() if k != "prompts"},
    }
    run = FineTuneRun.objects.create(
        project=project, created_by=user, name=(name or "")[:200], base_version=base_version, method=method,
        export=export, data_path=data_path, reward_name=reward_name if reward_version is None else "",
        reward_version=reward_version, prompt_source=prompt_source if method == "ddpo" else "", preset=preset,
        config=config_json, eval_prompts=eval_list, eval_seeds=list(EVAL_SEEDS), lineage=lineage,
    )
    if enqueue:  # the management command runs the task body in-process instead
        finetune_model.delay_on_commit(run.pk)
    return run


def finetune_config_from_run(run: FineTuneRun) -> Any:
    from rlhf.training import ddpo, dpo

    data = dict(run.config)
    data["lora_targets"] = tuple(data.get("lora_targets") or ())
    if run.method == FineTuneRun.Method.DPO:
        return dpo.DPOConfig(**data)
    data["prompts"] = tuple(data.get("prompts") or ())
    return ddpo.DDPOConfig(**data)


def checkpoint_grid_label(step: int) -> str:
    """The label (and storage-key segment) of the grid rendered from the checkpoint at ``step``."""
    return f"step-{step}"


def _render_grid(run: FineTuneRun, base_dir: Path, lora_dir: Path | None, label: str, step: int) -> dict[str, Any]:
    """Render the fixed evaluation prompts x seeds and store them under deterministic keys.

    Every image is sampled from its own CPU generator seeded with its evaluation seed
    (``lora.eval_images``), so grids are comparable across checkpoints and never draw from the global
    random state.
    """
    from generation.inference import image_to_png_bytes, resolve_device
    from rlhf.training.lora import eval_images, load_pipeline

    pipe = load_pipeline(base_dir, lora_dir)
    pipe.to(resolve_device(settings.PICKWISE_DEVICE))
    prompts = [p for p in run.eval_prompts for _ in run.eval_seeds]
    seeds = [s for _ in run.eval_prompts for s in run.eval_seeds]
    version = run.base_version
    images = eval_images(pipe, prompts, seeds, num_inference_steps=min(version.default_steps, 50),
                         guidance_scale=version.default_guidance, resolution=int(run.config.get("resolution", 512)))
    del pipe
    entries = []
    for index, (prompt, seed, image) in enumerate(zip(prompts, seeds, images, strict=True)):
        key = eval_image_key(run, label, index)
        _store(key, image_to_png_bytes(image))
        entries.append({"prompt": prompt, "seed": seed, "key": key, "index": index})
    return {"label": label, "step": step, "images": entries}


def _store(key: str, data: bytes) -> None:
    if default_storage.exists(key):
        default_storage.delete(key)
    saved = default_storage.save(key, ContentFile(data))
    if saved != key:  # pragma: no cover - a storage that renames instead of overwriting
        default_storage.delete(saved)
        raise OSError(f"storage saved {key!r} as {saved!r}")


def _save_grid(run_id: int, grid: dict[str, Any]) -> None:
    """Add or replace (by label) one grid; the list stays in :func:`grid_order`."""
    with transaction.atomic():
        run = FineTuneRun.objects.select_for_update().get(pk=run_id)
        run.eval_grids = sorted([g for g in run.eval_grids if g["label"] != grid["label"]] + [grid], key=grid_order)
        run.save(update_fields=["eval_grids", "updated_at"])


def _render_checkpoint_grid(run: FineTuneRun, base_dir: Path, lora_dir: Path, step: int) -> None:
    """Render and save the grid of the checkpoint at ``step``; a failure is recorded on the grid, not raised.

    A checkpoint grid is a preview: running out of memory (or any other error) while rendering it must
    not end a training run that is otherwise fine. The grid is saved with ``images: []`` and ``error``
    (shown on the run page, and counted as rendered so a resume does not retry it), the traceback goes
    to the log, and training carries on. Errors in training itself still fail the run.
    """
    label = checkpoint_grid_label(step)
    try:
        grid = _render_grid(run, base_dir, lora_dir, label, step)
    except Exception as exc:
        logger.exception("fine-tune run %s: rendering the grid of checkpoint %s failed", run.pk, step)
        grid = {"label": label, "step": step, "images": [], "error": failure_reason(exc)}
    _save_grid(run.pk, grid)
    gc.collect()  # the pipeline (and, after a failure, the traceback's frames holding it) before the cache
    _free_memory()


def _wants_checkpoint_grid(step: int, *, checkpoint_every: int, total: int) -> bool:
    """Periodic checkpoints before the last step get a grid (the last step's weights get "final")."""
    return bool(checkpoint_every) and step % checkpoint_every == 0 and 0 < step < total


def _render_missing_checkpoint_grids(run: FineTuneRun, base_dir: Path, output_dir: Path, *,
                                     checkpoint_every: int, total: int) -> None:
    """On resume: grids of checkpoints written before the worker died but not yet rendered."""
    from rlhf.training.checkpoint import list_checkpoints, read_metadata

    rendered = {g["label"] for g in FineTuneRun.objects.get(pk=run.pk).eval_grids}
    for directory in list_checkpoints(output_dir):
        step = int(read_metadata(directory)["step"])
        if (_wants_checkpoint_grid(step, checkpoint_every=checkpoint_every, total=total)
                and checkpoint_grid_label(step) not in rendered):
            _render_checkpoint_grid(run, base_dir, directory, step)


def finetune_run_execute(*, run_id: int, echo: OnLog | None = None) -> FineTuneRun | None:
    """Fine-tune, render the evaluation grids, copy the LoRA and register it; a no-op for a finished run.

    Grids: "base" before training (the starting version: the base, or base + the continued LoRA),
    "step-<N>" from each periodic checkpoint while training runs (so the
    page shows them as they come), "final" from the finished LoRA; all with the same prompts and seeds.
    """
    from rlhf.training.ddpo import train_ddpo
    from rlhf.training.dpo import train_dpo

    claimed = _run_start(FineTuneRun, run_id)
    if claimed is None:
        return FineTuneRun.objects.filter(pk=run_id).first()
    run, fresh = claimed
    run = FineTuneRun.objects.select_related("base_version", "export", "reward_version", "project").get(pk=run.pk)
    output_dir = finetune_run_dir(run)
    if fresh:
        shutil.rmtree(output_dir, ignore_errors=True)
    try:
        config = finetune_config_from_run(run)
        base_dir = Path(config.base_model)
        start = Path(config.init_lora) if config.init_lora else None  # a continued LoRA version's adapter
        if not any(g["label"] == "base" for g in run.eval_grids):  # where training starts
            _save_grid(run.pk, _render_grid(run, base_dir, start, "base", 0))
        total = config.max_steps if run.method == FineTuneRun.Method.DPO else config.iterations
        FineTuneRun.objects.filter(pk=run.pk).update(total_steps=total)
        _render_missing_checkpoint_grids(run, base_dir, output_dir, checkpoint_every=config.checkpoint_every,
                                         total=total)
        progress = RunProgress(FineTuneRun, run, total_steps=total, resume_step=_resume_step(output_dir), echo=echo,
                               checkpoint_every=config.checkpoint_every)

        def on_checkpoint(step: int, directory: Path) -> None:
            if not progress.stopped and _wants_checkpoint_grid(step, checkpoint_every=config.checkpoint_every,
                                                               total=total):
                _render_checkpoint_grid(run, base_dir, directory, step)
                progress.flush(force=True)  # a fresh heartbeat after rendering (and a cancel seen sooner)

        if run.method == FineTuneRun.Method.DPO:
            result = train_dpo(config, _run_data_path(run), output_dir, on_log=progress.on_log,
                               should_stop=progress.should_stop, on_checkpoint=on_checkpoint, resume=True)
        else:
            result = train_ddpo(config, output_dir, on_log=progress.on_log, should_stop=progress.should_stop,
                                on_checkpoint=on_checkpoint, resume=True)
        progress.flush(force=True)
        if result.stopped:
            _run_fail(FineTuneRun, run_id, "Stopped before the end.")  # only if it was not cancelled
            return FineTuneRun.objects.get(pk=run_id)
        stable = _copy_directory(result.lora_dir, finetune_lora_dir(run))
        _save_grid(run.pk, _render_grid(run, base_dir, stable, "final", result.step))
    except Exception as exc:
        logger.exception("fine-tune run %s failed", run_id)
        _free_memory()
        _run_fail(FineTuneRun, run_id, failure_reason(exc))
        return FineTuneRun.objects.get(pk=run_id)
    try:
        return _finetune_run_register(run_id=run_id, lora_dir=stable, step=result.step,
                                      last_metrics=_json_safe(result.last_metrics))
    except ApplicationError as exc:
        shutil.rmtree(stable, ignore_errors=True)
        _run_fail(FineTuneRun, run_id, f"Could not register the model version: {exc.message}")
        return FineTuneRun.objects.get(pk=run_id)


def finetune_root(run: FineTuneRun) -> ModelVersion:
    """The base version a run's LoRA goes on: its start, or the start's parent when it continued a LoRA
    (a continued adapter holds all its weights, so it is one LoRA on that base too)."""
    start = run.base_version
    return start.parent if start.kind == ModelKind.LORA and start.parent is not None else start


def finetune_version_name(run: FineTuneRun) -> str:
    """``<base>-<method>-<run id>``, after the root base version also when the run continued a LoRA (so
    names do not grow round after round; the description and lineage say what it continued)."""
    base = finetune_root(run)
    suffix = f"-{run.method}-{run.pk}"
    return f"{base.name[: 100 - len(suffix)]}{suffix}"


@transaction.atomic
def _finetune_run_register(*, run_id: int, lora_dir: Path, step: int, last_metrics: dict[str, Any]) -> FineTuneRun:
    from generation.services import model_version_register

    run = (FineTuneRun.objects.select_for_update(of=("self",)).select_related("base_version__parent")
           .get(pk=run_id))
    if run.status != RunStatus.RUNNING:  # cancelled at the very end: register nothing
        shutil.rmtree(lora_dir, ignore_errors=True)
        return run
    start = run.base_version  # what training started from: a base version, or a LoRA version it continued
    base = finetune_root(run)
    source = (f"export {run.export_id}" if run.method == FineTuneRun.Method.DPO
              else f"reward {run.lineage.get('reward')}")
    of = base.name if start == base else f"{base.name}, continuing {start.name},"
    description = (f"LoRA fine-tune of {of} by {run.method.upper()} on {source} (run {run.pk}, "
                   f"preset {run.preset}, {step} steps). Lineage: "
                   + json.dumps({k: v for k, v in run.lineage.items() if k != "config"}, sort_keys=True))
    version = model_version_register(
        name=finetune_version_name(run), parent=base, lora_path=str(lora_dir), lora_scale=1.0,
        scheduler=base.default_scheduler, steps=base.default_steps, guidance=base.default_guidance,
        width=base.default_width, height=base.default_height, negative_prompt=base.default_negative_prompt,
        enabled=True, description=description, created_by=run.created_by,
    )
    if run.project is not None and run.project.model_versions.filter(pk=start.pk).exists():
        run.project.model_versions.add(version)
    run.result_version = version
    run.status = RunStatus.SUCCEEDED
    run.progress = 1.0
    run.step = step
    run.last_metrics = {**run.last_metrics, **last_metrics}
    run.lineage = {**run.lineage, "result_version": {"id": version.pk, "name": version.name},
                   "lora_path": str(lora_dir)}
    run.finished_at = timezone.now()
    run.save(update_fields=["result_version", "status", "progress", "step", "last_metrics", "lineage",
                            "finished_at", "updated_at"])
    return run


# --- scoring ------------------------------------------------------------------------------------------------

_models: OrderedDict[str, Any] = OrderedDict()
_models_lock = threading.Lock()
_MODEL_CACHE_SIZE = 2


def reward_model_loaded(path: str) -> Any:
    """This process's loaded reward model for ``path`` (a small LRU; scoring workers keep theirs)."""
    from generation.inference import resolve_device
    from rlhf.training.reward_model import load_reward_model

    with _models_lock:
        if path in _models:
            _models.move_to_end(path)
            return _models[path]
        model = load_reward_model(path, device=str(resolve_device(settings.PICKWISE_DEVICE)))
        _models[path] = model
        while len(_models) > _MODEL_CACHE_SIZE:
            _models.popitem(last=False)
        return model


def images_for_scoring(*, user: AbstractBaseUser | None, image_ids: list[Any]) -> list[GeneratedImage]:
    """The images, in the order asked; each must exist and be visible to ``user`` (field ``image_ids``)."""
    from generation.selectors import image_for_user

    if not image_ids:
        raise ApplicationError("Give at least one image id.", field="image_ids")
    if len(image_ids) > MAX_SCORE_IMAGES:
        raise ApplicationError(f"Score at most {MAX_SCORE_IMAGES} images per request.", field="image_ids")
    images = []
    for image_id in image_ids:
        try:
            image = (GeneratedImage.objects.get(pk=image_id) if user is None
                     else image_for_user(user=user, image_id=image_id))
        except (GeneratedImage.DoesNotExist, ValidationError, ValueError, TypeError):
            raise ApplicationError(f"No image {image_id} that you may see.", field="image_ids") from None
        images.append(image)
    return images


def image_scores_compute(*, reward_version_id: int, image_ids: list[str], prompt: str | None = None,
                         store: bool = True) -> dict[str, float]:
    """Score images in batches (under ``prompt``, or each image's own prompt); store the own-prompt scores."""
    from PIL import Image

    from rlhf.training.reward_model import score

    version = RewardModelVersion.objects.get(pk=reward_version_id)
    model = reward_model_loaded(version.path)
    images = list(GeneratedImage.objects.filter(pk__in=image_ids))
    by_id = {str(image.pk): image for image in images}
    ordered = [by_id[str(i)] for i in image_ids if str(i) in by_id]
    scores: dict[str, float] = {}
    for start in range(0, len(ordered), SCORE_BATCH):
        chunk = ordered[start : start + SCORE_BATCH]
        pictures = []
        for image in chunk:
            with default_storage.open(image.storage_key, "rb") as handle:
                pictures.append(Image.open(BytesIO(handle.read())).convert("RGB"))
        prompts = [prompt if prompt is not None else image.prompt for image in chunk]
        for image, value in zip(chunk, score(model, prompts, pictures, batch_size=SCORE_BATCH), strict=True):
            scores[str(image.pk)] = float(value)
    if store and prompt is None and scores:
        image_scores_store(reward_version=version, scores=scores)
    return scores


@transaction.atomic
def image_scores_store(*, reward_version: RewardModelVersion, scores: Mapping[str, float]) -> int:
    rows = [ImageScore(reward_version=reward_version, image_id=image_id, score=value)
            for image_id, value in scores.items()]
    ImageScore.objects.bulk_create(rows, update_conflicts=True, unique_fields=["reward_version", "image"],
                                   update_fields=["score", "updated_at"])
    return len(rows)


@transaction.atomic
def image_scores_request(*, user: AbstractBaseUser | None, reward_version: RewardModelVersion,
                         image_ids: list[Any]) -> list[str]:
    """Queue background scoring (``rlhf.tasks.score_images`` on the gpu queue) of images not scored yet."""
    from rlhf.tasks import score_images

    if reward_version.project is not None:
        _check_user_may_train(user, reward_version.project)
    images = images_for_scoring(user=user, image_ids=image_ids)
    done = set(ImageScore.objects.filter(reward_version=reward_version, image__in=images)
               .values_list("image_id", flat=True))
    missing = [str(image.pk) for image in images if image.pk not in done]
    if missing:
        score_images.delay_on_commit(reward_version.pk, missing)
    return missing
