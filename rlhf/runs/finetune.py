"""Fine-tune runs (LoRA by Diffusion-DPO or DDPO): validate and queue, train with evaluation grids,
copy the LoRA and register it as a model version (the ``rlhf.tasks.finetune_model`` task body),
cancel and retry."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from annotate.models import Prompt
from core import jobs
from core.audit import audit_record
from core.exceptions import ApplicationError
from core.models import JobPhase
from core.tasks import enqueue_on_commit
from generation.inference import LORA_WEIGHTS_FILE
from generation.models import ModelKind, ModelVersion
from generation.services import model_version_register, project_model_version_offer_beside
from generation.worker import resolve_source
from projects.models import Project
from projects.webhooks.events import emit, url_for
from rlhf.models import FineTuneRun, PreferenceExport, RewardModelVersion
from rlhf.runs import grids
from rlhf.runs.data import MAX_DDPO_PROMPTS, check_data_path, check_export, export_captions
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
from rlhf.runs.paths import copy_directory, finetune_lora_dir, finetune_run_dir, run_data_path
from rlhf.training import configs
from rlhf.training.rewards import REWARD_FUNCTIONS

logger = logging.getLogger(__name__)

FINETUNE_MODEL = "rlhf.tasks.finetune_model"
EVAL_SEEDS = (0, 1)  # fixed seeds of the evaluation grids
MAX_EVAL_PROMPTS = 3


def base_pipeline_dir(version: ModelVersion) -> Path:
    """The local diffusers directory of a base text-to-image version with a UNet; ApplicationError otherwise."""
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
    if preset not in FineTuneRun.Preset.values:
        raise ApplicationError(f"Unknown preset {preset!r}; choose one of {', '.join(FineTuneRun.Preset.values)}.",
                               field="preset")
    cpu = settings.PICKWISE_DEVICE == "cpu"
    rename = {"base_model": "base_version", "reward": "reward", "reward_arg": "reward_version",
              "prompts": "prompt_source", "init_lora": "base_version"}
    native = {"resolution": resolution} if resolution else {}
    start = {"init_lora": str(init_lora)} if init_lora is not None else {}
    if method == FineTuneRun.Method.DPO:
        preset_fn = configs.tiny_dpo_preset if preset == "tiny" else configs.sd15_dpo_preset
        return build_config(lambda **kw: preset_fn(str(base_dir), **kw), configs.DPOConfig,
                             {"export_id": export_id, "cpu": cpu, **native, **start}, hyperparameters,
                             protected={"base_model", "export_id", "cpu", "init_lora"}, rename=rename)
    ddpo_preset_fn = configs.tiny_ddpo_preset if preset == "tiny" else configs.sd15_ddpo_preset
    return build_config(lambda **kw: ddpo_preset_fn(str(base_dir), prompts, **kw), configs.DDPOConfig,
                         {"reward": reward, "reward_arg": reward_arg, "cpu": cpu, **native, **start}, hyperparameters,
                         protected={"base_model", "prompts", "reward", "reward_arg", "cpu", "init_lora"},
                         rename=rename)


def finetune_recipe_check(*, method: str, base_dir: Path, hyperparameters: Mapping[str, Any], preset: str = "tiny",
                          resolution: int | None = None, init_lora: Path | None = None) -> None:
    """The hyper-parameters of a fine-tune to come, validated before anything is made for it (a loop round
    checks its recipe before it generates its images): an ApplicationError naming the field, as
    :func:`finetune_run_create` would raise once the data exists. Needs no database."""
    config = finetune_config_build(
        method=method, preset=preset, base_dir=base_dir, hyperparameters=parse_hyperparameters(hyperparameters),
        export_id="recipe-check", prompts=("a photo",), resolution=resolution, init_lora=init_lora,
        reward="brightness" if method == FineTuneRun.Method.DDPO else "")
    check_distributed(config)


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
    if method not in FineTuneRun.Method.values:
        raise ApplicationError(f"Unknown method {method!r}; choose dpo or ddpo.", field="method")
    project = project or (export.project if export is not None else None) or (
        reward_version.project if reward_version is not None else None)
    if export is not None and project is not None and export.project_id != project.pk:
        raise ApplicationError("The export belongs to another project.", field="export")
    check_user_may_train(user, project)
    root, base_dir, init_lora = finetune_start(base_version)
    overrides = parse_hyperparameters(hyperparameters)
    reward_id = ""
    data_captions: list[str] = []
    if method == FineTuneRun.Method.DPO:
        if export is not None:
            check_export(export, formats=(PreferenceExport.Format.PICKAPIC, PreferenceExport.Format.LISTWISE))
            data_captions = export_captions(export, limit=MAX_EVAL_PROMPTS)
        elif data_path:
            check_data_path(data_path)
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
                check_user_may_train(user, reward_version.project)
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
            check_export(export, formats=(PreferenceExport.Format.PICKAPIC, PreferenceExport.Format.LISTWISE))
        prompts = _ddpo_prompts(prompt_source=prompt_source, project=project, export=export)
        config = finetune_config_build(method=method, preset=preset, base_dir=base_dir, hyperparameters=overrides,
                                       resolution=native_resolution(root), prompts=prompts, reward=reward,
                                       reward_arg=reward_arg, init_lora=init_lora)
    check_distributed(config)
    chosen = [p.strip() for p in (eval_prompts or []) if p and p.strip()][:MAX_EVAL_PROMPTS]
    eval_list = chosen or list(prompts[:MAX_EVAL_PROMPTS]) or ["a photo"]
    config_json = config_dict(config)
    lineage = {
        "base_version": {"id": root.pk, "name": root.name, "source": root.source},
        "continued_from": {"id": base_version.pk, "name": base_version.name} if init_lora is not None else None,
        "method": method, "export": export.pk if export is not None else None, "data_path": data_path or None,
        "reward": reward_id or None, "preset": preset,
        "config": {k: v for k, v in config_json.items() if k != "prompts"},
    }
    run = FineTuneRun.objects.create(
        project=project, created_by=user, name=run_name(name, model=FineTuneRun), base_version=base_version, method=method,
        export=export, data_path=data_path, reward_name=reward_name if reward_version is None else "",
        reward_version=reward_version, prompt_source=prompt_source if method == "ddpo" else "", preset=preset,
        config=config_json, eval_prompts=eval_list, eval_seeds=list(EVAL_SEEDS), lineage=lineage,
        max_attempts=settings.JOB_MAX_ATTEMPTS,
    )
    audit_record(event="run.started", instance=run, actor=user, project_id=run.project_id,
                 details={"kind": "finetune", "method": method, "base_version": base_version.name,
                          "export": run.export_id})
    if enqueue:  # the management command runs the task body in-process instead
        enqueue_on_commit(FINETUNE_MODEL, run.pk)
    return run


@transaction.atomic
def finetune_run_cancel(*, run: FineTuneRun, user: AbstractBaseUser | None = None) -> FineTuneRun:
    return run_cancel(FineTuneRun, run, user)


@transaction.atomic
def finetune_run_retry(*, run: FineTuneRun, user: AbstractBaseUser | None = None) -> FineTuneRun:
    """Queue a failed, cancelled or abandoned run again; it resumes from its last checkpoint."""
    return run_retry(FineTuneRun, run, FINETUNE_MODEL, user)


def finetune_runs_reap_expired() -> int:
    """Re-queue fine-tune runs whose worker died (the retry resumes from their last checkpoint)."""
    return jobs.jobs_reap(FineTuneRun, task_name=FINETUNE_MODEL, what="fine-tuning", on_fail=run_failed_announce)


def finetune_config_from_run(run: FineTuneRun) -> Any:
    """The ``DPOConfig`` or ``DDPOConfig`` a run stored."""
    data = dict(run.config)
    data["lora_targets"] = tuple(data.get("lora_targets") or ())
    if run.method == FineTuneRun.Method.DPO:
        return configs.DPOConfig(**data)
    data["prompts"] = tuple(data.get("prompts") or ())
    return configs.DDPOConfig(**data)


def finetune_run_execute(*, run_id: int, echo: OnLog | None = None) -> FineTuneRun | None:
    """Fine-tune, render the evaluation grids, copy the LoRA and register it; a no-op for a run that is not
    queued.

    The run is claimed under a lease that a heartbeat renews on a timer, and says which phase it is in:
    rendering the base grid, loading the model, training step k/N, rendering a checkpoint's grid,
    rendering the final grid, registering. Grids: "base" before training (the starting version: the base,
    or base + the continued LoRA), "step-<N>" from each periodic checkpoint while training runs (so the
    page shows them as they come), "final" from the finished LoRA; all with the same prompts and seeds.
    Each attempt works in its own directory, resuming from the newest checkpoint of an earlier one.
    """
    from rlhf.training.ddpo import train_ddpo  # torch: the worker running the run loads it
    from rlhf.training.dpo import FineTuneResult, train_dpo  # torch: as above

    claimed = run_claim(FineTuneRun, run_id)
    if claimed is None:
        return FineTuneRun.objects.filter(pk=run_id).first()
    run, lease = claimed
    run = FineTuneRun.objects.select_related("base_version", "export", "reward_version", "project").get(pk=run.pk)
    with heartbeat_for(lease) as heartbeat:
        try:
            output_dir = attempt_dir(finetune_run_dir(run), lease)
            config = finetune_config_from_run(run)
            base_dir = Path(config.base_model)
            start = Path(config.init_lora) if config.init_lora else None  # a continued LoRA version's adapter
            total = config.max_steps if run.method == FineTuneRun.Method.DPO else config.iterations
            heartbeat.set(total_steps=total)
            progress = RunProgress(heartbeat, run, total_steps=total, resume_step=resume_step(output_dir),
                                   echo=echo, checkpoint_every=config.checkpoint_every)
            if not any(g["label"] == "base" for g in run.eval_grids):  # where training starts
                progress.enter(JobPhase.RENDERING_BASE)
                grids.save_grid(lease, grids.render_grid(run, base_dir, start, "base", 0, attempt=lease.attempt))
            grids.render_missing_checkpoint_grids(run, lease, base_dir, output_dir,
                                                  checkpoint_every=config.checkpoint_every, total=total,
                                                  on_render=lambda: progress.enter(JobPhase.RENDERING_CHECKPOINT))

            def on_checkpoint(step: int, directory: Path) -> None:
                if not progress.stopped and grids.wants_checkpoint_grid(
                        step, checkpoint_every=config.checkpoint_every, total=total):
                    progress.enter(JobPhase.RENDERING_CHECKPOINT)
                    grids.render_checkpoint_grid(run, lease, base_dir, directory, step)
                    progress.enter(JobPhase.TRAINING)

            if config.num_processes > 1:  # a process group of ranks; this process reports its progress
                launched = train_in_group(
                    trainer=run.method, config=config, output_dir=output_dir, progress=progress,
                    data_path=run_data_path(run) if run.method == FineTuneRun.Method.DPO else None,
                    on_checkpoint=on_checkpoint)
                result = FineTuneResult(Path(launched["dir"]), int(launched["step"]), False,
                                        launched["last_metrics"]) if launched else FineTuneResult(
                    output_dir, progress.step, True, {})
            elif run.method == FineTuneRun.Method.DPO:
                result = train_dpo(config, run_data_path(run), output_dir, on_log=progress.on_log,
                                   should_stop=progress.should_stop, on_checkpoint=on_checkpoint, resume=True,
                                   on_phase=progress.on_phase)
            else:
                result = train_ddpo(config, output_dir, on_log=progress.on_log, should_stop=progress.should_stop,
                                    on_checkpoint=on_checkpoint, resume=True, on_phase=progress.on_phase)
            progress.flush()
            if result.stopped:  # cancelled, retried or reaped: the run is not ours to end
                return FineTuneRun.objects.get(pk=run_id)
            progress.enter(JobPhase.RENDERING_FINAL)
            stable = copy_directory(result.lora_dir, finetune_lora_dir(run, lease.attempt))
            grids.save_grid(lease, grids.render_grid(run, base_dir, stable, "final", result.step,
                                                     attempt=lease.attempt))
            progress.enter(JobPhase.REGISTERING)
        except Exception as exc:
            logger.exception("fine-tune run %s failed", run_id)
            free_memory()
            run_fail(lease, failure_reason(exc))
            return FineTuneRun.objects.get(pk=run_id)
    try:
        return _finetune_run_register(lease=lease, lora_dir=stable, step=result.step,
                                      last_metrics=json_safe(result.last_metrics))
    except ApplicationError as exc:
        shutil.rmtree(stable, ignore_errors=True)
        run_fail(lease, f"Could not register the model version: {exc.message}")
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
def _finetune_run_register(*, lease: jobs.Lease, lora_dir: Path, step: int, last_metrics: dict[str, Any]
                           ) -> FineTuneRun:
    if jobs.job_lock_owned(lease) is None:  # cancelled at the very end, or taken back: register nothing
        if not ModelVersion.objects.filter(lora_path=str(lora_dir)).exists():
            shutil.rmtree(lora_dir, ignore_errors=True)
        return FineTuneRun.objects.get(pk=lease.pk)
    run = FineTuneRun.objects.select_related("base_version__parent").get(pk=lease.pk)
    start = run.base_version  # what training started from: a base version, or a LoRA version it continued
    base = finetune_root(run)
    source = (f"export {run.export_id}" if run.method == FineTuneRun.Method.DPO
              else f"reward {run.lineage.get('reward')}")
    of = base.name if start == base else f"{base.name}, continuing {start.name},"
    description = (f"LoRA fine-tune of {of} by {run.method.upper()} on {source} (run {run.pk}, "
                   f"preset {run.preset}, {step} steps). Lineage: "
                   + json.dumps({k: v for k, v in run.lineage.items() if k != "config"}, sort_keys=True))
    version = model_version_register(
        name=finetune_version_name(run), parent=base, lora_path=str(lora_dir), lora_scale=1.0, enabled=True,
        description=description, created_by=run.created_by,
    )  # the base's generation settings, as every LoRA version unless told otherwise
    if run.project is not None:  # offered where its start version was
        project_model_version_offer_beside(project=run.project, version=version, beside=start)
    jobs.job_finish(lease, result_version=version, step=step, last_metrics={**run.last_metrics, **last_metrics},
                    lineage={**run.lineage, "result_version": {"id": version.pk, "name": version.name},
                             "lora_path": str(lora_dir)})
    for leftover in other_attempt_dirs(finetune_run_dir(run), lease):  # earlier attempts' checkpoints
        shutil.rmtree(leftover, ignore_errors=True)
    run.refresh_from_db()
    registered = {"id": version.pk, "name": version.name, "kind": version.kind, "enabled": version.enabled,
                  "parent": {"id": base.pk, "name": base.name},
                  "finetune_run": {"id": run.pk, "url": url_for("rlhf:finetune_run_detail", run.pk)},
                  "model_versions_api_url": url_for("api-model-versions")}
    emit("model_version.registered", project_id=run.project_id, data={"model_version": registered})
    emit("run.finished", project_id=run.project_id, data=lambda: run_event(run, model_version=registered))
    return run
