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
from django.utils.text import slugify
from huggingface_hub import try_to_load_from_cache

from core import jobs
from core.audit import audit_record
from core.exceptions import ApplicationError
from core.models import JobPhase
from core.tasks import enqueue_on_commit
from generation.inference import HUB_ID_RE
from projects.webhooks.events import emit, url_for
from rlhf.models import PreferenceExport, RewardModelRun, RewardModelVersion
from rlhf.runs.data import check_data_path, check_export, check_sources
from rlhf.runs.distributed import check_distributed, train_in_group
from rlhf.runs.hyperparams import build_config, config_dict, json_safe, parse_hyperparameters
from rlhf.runs.lifecycle import (
    OnLog,
    RunProgress,
    attempt_dir,
    check_user_may_train,
    failure_reason,
    free_memory,
    heartbeat_for,
    other_attempt_dirs,
    resume_step,
    run_cancel,
    run_claim,
    run_event,
    run_fail,
    run_failed_announce,
    run_name,
    run_retry,
)
from rlhf.runs.paths import (
    allowed_model_dir,
    copy_directory,
    looks_like_path,
    reward_run_dir,
    reward_version_dir,
    run_data_path,
)
from rlhf.training.configs import BACKBONE_NAMES, REWARD_PRESETS, RewardModelConfig, conditions_on_source
from rlhf.training.evaluate import agreement_ceiling

logger = logging.getLogger(__name__)

TRAIN_REWARD_MODEL = "rlhf.tasks.train_reward_model"


def _check_backbone(backbone: str, *, trusted: bool = False) -> str:
    """A backbone built by name (``BACKBONE_NAMES``: ``tiny``, ``shapes_vae``, ``shapes_conv``), a local
    reward-model or CLIP directory under ``PICKWISE_MODEL_DIRS`` (any directory for ``trusted`` code: the
    management command, run by someone who has the server already), or a CLIP hub id in the local Hugging
    Face cache; ``""`` for the preset's own. Nothing else is loaded: a worker never opens a directory a user
    named."""
    backbone = (backbone or "").strip()
    if not backbone or backbone in BACKBONE_NAMES:
        return backbone
    if trusted and Path(backbone).expanduser().is_dir():
        return str(Path(backbone).expanduser())
    if looks_like_path(backbone) or not HUB_ID_RE.match(backbone):
        return str(allowed_model_dir(backbone, field="backbone"))
    cached = try_to_load_from_cache(backbone, "config.json")
    if not isinstance(cached, str):
        raise ApplicationError(f"Backbone {backbone!r} is not in the local Hugging Face cache; download it first.",
                               field="backbone")
    return backbone


def reward_config_build(
    *, backbone: str, preset: str, hyperparameters: Mapping[str, Any], export_id: str, listwise: bool,
    trusted_paths: bool = False,
) -> Any:
    """A validated ``RewardModelConfig`` from preset ``preset`` (``REWARD_PRESETS``) on ``backbone`` (empty:
    the preset's own); every problem is an ApplicationError naming its field."""
    if preset not in RewardModelRun.Preset.values:
        raise ApplicationError(f"Unknown preset {preset!r}; choose one of {', '.join(RewardModelRun.Preset.values)}.",
                               field="preset")
    backbone = _check_backbone(backbone, trusted=trusted_paths)
    if preset == RewardModelRun.Preset.PICKSCORE and (not backbone or backbone in BACKBONE_NAMES):
        raise ApplicationError("The pickscore preset fine-tunes a pretrained CLIP: name its directory or cached "
                               "hub id as the backbone.", field="backbone")
    fixed: dict[str, Any] = {"export_id": export_id, "cpu": settings.PICKWISE_DEVICE == "cpu",
                             "loss": "plackett_luce" if listwise else "bradley_terry"}
    if backbone:
        fixed["backbone"] = backbone
    return build_config(REWARD_PRESETS[preset], RewardModelConfig, fixed, hyperparameters,
                        protected={"backbone", "export_id", "cpu"}, rename={})


def reward_recipe_check(*, preset: str, hyperparameters: Mapping[str, Any], backbone: str = "") -> None:
    """A reward run's preset and hyper-parameters, validated before its export exists (a loop round checks its
    recipe before it generates its images): an ApplicationError naming the field. Needs no database."""
    check_distributed(reward_config_build(backbone=backbone, preset=preset,
                                          hyperparameters=parse_hyperparameters(hyperparameters),
                                          export_id="recipe-check", listwise=False))


@transaction.atomic
def reward_run_create(
    *,
    user: AbstractBaseUser | None,
    export: PreferenceExport | None = None,
    data_path: str = "",
    backbone: str = "",
    preset: str = "tiny",
    hyperparameters: Mapping[str, Any] | str | None = None,
    name: str = "",
    enqueue: bool = True,
    trusted_paths: bool = False,
) -> RewardModelRun:
    """Validate and queue a reward-model run on ``export`` (or, from trusted code, a Parquet file).

    ``backbone`` empty means the preset's own (``tiny`` for ``tiny``, ``shapes_vae`` for ``shapes``).
    ``user=None`` means trusted code (the management command) and skips the permission check;
    ``trusted_paths`` (the command) lets ``backbone`` name any local directory.
    """
    if export is None and not data_path:
        raise ApplicationError("Pick an export to train on.", field="export")
    project = export.project if export is not None else None
    check_user_may_train(user, project)
    if export is not None:
        path = check_export(export, formats=(PreferenceExport.Format.PICKAPIC, PreferenceExport.Format.LISTWISE))
        listwise = export.format == PreferenceExport.Format.LISTWISE
    else:
        path, layout = check_data_path(data_path)
        listwise = layout == "listwise"
    config = reward_config_build(
        backbone=backbone, preset=preset, hyperparameters=parse_hyperparameters(hyperparameters),
        export_id=str(export.pk) if export is not None else Path(data_path).name, listwise=listwise,
        trusted_paths=trusted_paths,
    )
    if config.condition_on_source:
        check_sources(path)
    elif config.backbone not in BACKBONE_NAMES and conditions_on_source(config.backbone):
        raise ApplicationError("This backbone is a reward model conditioned on the source image: set "
                               "condition_on_source to train it on.", field="condition_on_source")
    check_distributed(config)
    run = RewardModelRun.objects.create(
        project=project, export=export, data_path=str(Path(data_path).expanduser()) if data_path else "",
        created_by=user, name=run_name(name, model=RewardModelRun), backbone=config.backbone, preset=preset,
        config=config_dict(config), max_attempts=settings.JOB_MAX_ATTEMPTS,
    )
    audit_record(event="run.started", instance=run, actor=user, project_id=run.project_id,
                 details={"kind": "reward", "export": run.export_id, "backbone": run.backbone, "preset": preset})
    if enqueue:  # the management command runs the task body in-process instead
        enqueue_on_commit(TRAIN_REWARD_MODEL, run.pk)
    return run


@transaction.atomic
def reward_run_cancel(*, run: RewardModelRun, user: AbstractBaseUser | None = None) -> RewardModelRun:
    """Cancel a queued or running run; a running one stops at its next step (should_stop polls)."""
    return run_cancel(RewardModelRun, run, user)


@transaction.atomic
def reward_run_retry(*, run: RewardModelRun, user: AbstractBaseUser | None = None) -> RewardModelRun:
    """Queue a failed, cancelled or abandoned run again; it resumes from its last checkpoint."""
    return run_retry(RewardModelRun, run, TRAIN_REWARD_MODEL, user)


def reward_runs_reap_expired() -> int:
    """Re-queue reward runs whose worker died (the retry resumes from their last checkpoint)."""
    return jobs.jobs_reap(RewardModelRun, task_name=TRAIN_REWARD_MODEL, what="training this reward model",
                          on_fail=run_failed_announce)


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
    """Train, evaluate and register one reward-model run; a no-op for a run that is not queued.

    The run is claimed under a lease that a heartbeat renews while it trains; it works in its attempt's
    own directory (resuming from the newest checkpoint of an earlier attempt). ``echo(step, metrics)`` sees
    every logged point (the management command's progress bar).
    """
    from rlhf.training.data import count_rows  # torch: the worker running it loads it, never a web process
    from rlhf.training.reward_train import RewardTrainResult, train_reward_model  # torch: as above

    claimed = run_claim(RewardModelRun, run_id)
    if claimed is None:
        return RewardModelRun.objects.filter(pk=run_id).first()
    run, lease = claimed
    run = RewardModelRun.objects.select_related("export", "project").get(pk=run.pk)
    with heartbeat_for(lease) as heartbeat:
        try:
            heartbeat.phase(JobPhase.READING_DATA)
            output_dir = attempt_dir(reward_run_dir(run), lease)
            config = RewardModelConfig(**run.config)
            data_path = run_data_path(run)
            rows = count_rows(data_path, "train")
            total = config.epochs * math.ceil(rows / (config.batch_size * config.grad_accum))
            total = min(total, config.max_steps) if config.max_steps else total
            heartbeat.set(total_steps=total)
            progress = RunProgress(heartbeat, run, total_steps=total, resume_step=resume_step(output_dir),
                                   echo=echo, checkpoint_every=config.checkpoint_every)
            if config.num_processes > 1:  # a process group of ranks; this process reports its progress
                launched = train_in_group(trainer="reward", config=config, output_dir=output_dir,
                                          data_path=data_path, progress=progress)
                progress.flush()
                if launched is None:  # cancelled, retried or reaped: the run is not ours to end
                    return RewardModelRun.objects.get(pk=run_id)
                result = RewardTrainResult(Path(launched["dir"]), int(launched["step"]), False,
                                           launched["last_metrics"], None, None)
                evaluations = {"validation": launched["validation"], "test": launched["test"]}
            else:
                result = train_reward_model(config, data_path, output_dir, on_log=progress.on_log,
                                            should_stop=progress.should_stop, resume=True,
                                            on_phase=progress.on_phase)
                progress.flush()
                if result.stopped:  # cancelled, retried or reaped: the run is not ours to end
                    return RewardModelRun.objects.get(pk=run_id)
                evaluations = {"validation": result.validation.as_dict() if result.validation else None,
                               "test": result.test.as_dict() if result.test else None}
            ceiling = agreement_ceiling_of(data_path) if run.export is not None else None
            results = json_safe({
                "step": result.step,
                **evaluations,
                "ceiling": ceiling,
                "last_metrics": result.last_metrics,
            })
            progress.enter(JobPhase.REGISTERING)
            stable = copy_directory(result.model_dir, reward_version_dir(run, lease.attempt))
        except Exception as exc:
            logger.exception("reward run %s failed", run_id)
            free_memory()
            run_fail(lease, failure_reason(exc))
            return RewardModelRun.objects.get(pk=run_id)
    return _reward_run_register(lease=lease, path=stable, results=results)


@transaction.atomic
def _reward_run_register(*, lease: jobs.Lease, path: Path, results: dict[str, Any]) -> RewardModelRun:
    run = jobs.job_lock_owned(lease)
    if run is None:  # cancelled while evaluating, or taken back: register nothing
        if not RewardModelVersion.objects.filter(path=str(path)).exists():
            shutil.rmtree(path, ignore_errors=True)
        return RewardModelRun.objects.get(pk=lease.pk)
    run = RewardModelRun.objects.select_related("export", "project").get(pk=lease.pk)
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
                     f"backbone {run.backbone}, preset {run.preset}, loss {run.config.get('loss')}"
                     f"{'; conditioned on the source image (scores image edits only)' if run.config.get('condition_on_source') else ''}."),
        created_by=run.created_by,
    )
    jobs.job_finish(lease, results=results, step=int(results.get("step") or run.step))
    for leftover in other_attempt_dirs(reward_run_dir(run), lease):  # earlier attempts' checkpoints
        shutil.rmtree(leftover, ignore_errors=True)
    run.refresh_from_db()
    emit("run.finished", project_id=run.project_id, data=lambda: run_event(run, reward_model={
        "id": version.pk, "name": version.name, "metrics": version.metrics,
        "api_url": url_for("reward-model-detail", version.pk)}))
    return run
