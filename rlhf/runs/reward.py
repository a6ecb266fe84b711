"""Reward-model runs: validate and queue, train, evaluate and register (the ``rlhf.tasks.train_reward_model``
task body), cancel and retry."""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify
from huggingface_hub import try_to_load_from_cache

from core.exceptions import ApplicationError
from core.tasks import enqueue_on_commit
from generation.inference import HUB_ID_RE
from projects.webhooks.events import emit, url_for
from rlhf.models import PreferenceExport, RewardModelRun, RewardModelVersion, RunStatus
from rlhf.runs.data import check_data_path, check_export
from rlhf.runs.hyperparams import build_config, config_dict, json_safe, parse_hyperparameters
from rlhf.runs.lifecycle import (
    OnLog,
    RunProgress,
    check_user_may_train,
    failure_reason,
    free_memory,
    resume_step,
    run_cancel,
    run_event,
    run_fail,
    run_retry,
    run_start,
)
from rlhf.runs.paths import copy_directory, reward_run_dir, reward_version_dir, run_data_path
from rlhf.training.evaluate import agreement_ceiling

logger = logging.getLogger(__name__)

TRAIN_REWARD_MODEL = "rlhf.tasks.train_reward_model"


def _check_backbone(backbone: str) -> str:
    backbone = (backbone or "tiny").strip()
    if backbone == "tiny" or Path(backbone).expanduser().is_dir():
        return str(Path(backbone).expanduser()) if backbone != "tiny" else backbone
    if not HUB_ID_RE.match(backbone):
        raise ApplicationError(f"Backbone {backbone!r} does not exist: give 'tiny', a CLIP directory or a hub id.",
                               field="backbone")
    cached = try_to_load_from_cache(backbone, "config.json")
    if not isinstance(cached, str):
        raise ApplicationError(f"Backbone {backbone!r} is not in the local Hugging Face cache; download it first.",
                               field="backbone")
    return backbone


def reward_config_build(
    *, backbone: str, preset: str, hyperparameters: Mapping[str, Any], export_id: str, listwise: bool
) -> Any:
    """A validated ``RewardModelConfig``; every problem is an ApplicationError naming its field."""
    # torch: the config lives beside the trainer, which web processes never load otherwise
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
    return build_config(factory, RewardModelConfig, fixed, hyperparameters,
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
    if export is None and not data_path:
        raise ApplicationError("Pick an export to train on.", field="export")
    project = export.project if export is not None else None
    check_user_may_train(user, project)
    if export is not None:
        check_export(export, formats=(PreferenceExport.Format.PICKAPIC, PreferenceExport.Format.LISTWISE))
        listwise = export.format == PreferenceExport.Format.LISTWISE
    else:
        listwise = check_data_path(data_path)[1] == "listwise"
    config = reward_config_build(
        backbone=backbone, preset=preset, hyperparameters=parse_hyperparameters(hyperparameters),
        export_id=str(export.pk) if export is not None else Path(data_path).name, listwise=listwise,
    )
    run = RewardModelRun.objects.create(
        project=project, export=export, data_path=str(Path(data_path).expanduser()) if data_path else "",
        created_by=user, name=(name or "")[:200], backbone=config.backbone, preset=preset,
        config=config_dict(config),
    )
    if enqueue:  # the management command runs the task body in-process instead
        enqueue_on_commit(TRAIN_REWARD_MODEL, run.pk)
    return run


@transaction.atomic
def reward_run_cancel(*, run: RewardModelRun) -> RewardModelRun:
    """Cancel a queued or running run; a running one stops at its next step (should_stop polls)."""
    return run_cancel(RewardModelRun, run)


@transaction.atomic
def reward_run_retry(*, run: RewardModelRun) -> RewardModelRun:
    """Queue a failed, cancelled or abandoned run again; it resumes from its last checkpoint."""
    return run_retry(RewardModelRun, run, TRAIN_REWARD_MODEL)


def agreement_ceiling_of(path: Path) -> dict[str, Any] | None:
    """The annotators' agreement ceiling from a pickapic export's vote columns (test split, else all)."""
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
    return json_safe({"oracle": ceiling.oracle, "inter_annotator": ceiling.inter_annotator,
                       "split": split or "all", "pairs": len(unique)})


def reward_run_execute(*, run_id: int, echo: OnLog | None = None) -> RewardModelRun | None:
    """Train, evaluate and register one reward-model run; a no-op for a finished (or held) run.

    ``echo(step, metrics)`` sees every logged point (the management command's progress bar).
    """
    from rlhf.training.data import count_rows  # torch: the worker running it loads it, never a web process
    from rlhf.training.reward_train import RewardModelConfig, train_reward_model  # torch: as above

    claimed = run_start(RewardModelRun, run_id)
    if claimed is None:
        return RewardModelRun.objects.filter(pk=run_id).first()
    run, fresh = claimed
    run = RewardModelRun.objects.select_related("export", "project").get(pk=run.pk)
    output_dir = reward_run_dir(run)
    if fresh:
        shutil.rmtree(output_dir, ignore_errors=True)  # leftovers of an earlier database's run with this id
    try:
        config = RewardModelConfig(**run.config)
        data_path = run_data_path(run)
        rows = count_rows(data_path, "train")
        total = config.epochs * math.ceil(rows / (config.batch_size * config.grad_accum))
        total = min(total, config.max_steps) if config.max_steps else total
        RewardModelRun.objects.filter(pk=run.pk).update(total_steps=total)
        progress = RunProgress(RewardModelRun, run, total_steps=total, resume_step=resume_step(output_dir),
                               echo=echo, checkpoint_every=config.checkpoint_every)
        result = train_reward_model(config, data_path, output_dir, on_log=progress.on_log,
                                    should_stop=progress.should_stop, resume=True)
        progress.flush(force=True)
    except Exception as exc:
        logger.exception("reward run %s failed", run_id)
        free_memory()
        run_fail(RewardModelRun, run_id, failure_reason(exc))
        return RewardModelRun.objects.get(pk=run_id)
    if result.stopped:
        run_fail(RewardModelRun, run_id, "Stopped before the end.")  # only if it was not cancelled
        return RewardModelRun.objects.get(pk=run_id)
    ceiling = agreement_ceiling_of(data_path) if run.export is not None else None
    results = json_safe({
        "step": result.step,
        "validation": result.validation.as_dict() if result.validation else None,
        "test": result.test.as_dict() if result.test else None,
        "ceiling": ceiling,
        "last_metrics": result.last_metrics,
    })
    stable = copy_directory(result.model_dir, reward_version_dir(run))
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
    version = RewardModelVersion.objects.create(
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
    emit("run.finished", project_id=run.project_id, data=lambda: run_event(run, reward_model={
        "id": version.pk, "name": version.name, "metrics": version.metrics,
        "api_url": url_for("reward-model-detail", version.pk)}))
    return run
