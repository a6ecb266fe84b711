"""Rounds: prompts -> generation with the current version -> annotation -> export -> reward model
(optional) -> fine-tune -> a new version, the current one of the next round.

Every stage goes through the product's own services (generation jobs run in this process through
:func:`generation.worker.run_job`; runs through ``*_run_execute``), so a round is what a team would
do by hand, in one call. ``round_run`` is for commands, the bench and tests: it blocks.
``loop_round_start`` (the timeline's Start button) queues the round for the ``gpu-train`` task
``rlhf.tasks.finetune_loop_round``, which runs ``loop_round_execute``.

A round fine-tunes its input version (the previous round's output, or the start version): the first
round trains a fresh LoRA on the base version, and every later round continues the previous round's
LoRA (``rlhf.runs.finetune.finetune_start``), so a DDPO policy carries over from round to round instead of
restarting from the base each time. Each new adapter is complete, so the new version is a LoRA on the
root base (one adapter to load, however many rounds); its lineage (the fine-tune run's
``continued_from`` and ``lineage["round"]``, the round's ``input_version``) records where it came from.

The annotators' noise is a temperature (``temperature``, in the preference's score units) or, with
``label_accuracy``, the share of their pairwise labels that should agree with the preference: the round
scores its own images once generated and calibrates the temperature to that share on their pairs
(:mod:`rlhf.loop.labels`), so two preferences get comparable noise. Either way the round records the
temperature it used, the label accuracy its rankings reached and the annotators' agreement. A DPO round
also records DPO's implicit accuracy on the export's held-out (validation) pairs, a DDPO round its reward
model's validation accuracy: how well the fine-tune fits labels it never trained on.

A DDPO round's reward model is trained with the ``shapes`` preset (the latent reward model on the shipped shapes
model's VAE, which sees the sizes, colours and positions the annotators judge) when the round's images come from
the shipped shapes model or a LoRA on it, and with the ``tiny`` preset for any other model (the tests' tiny
pipeline); ``RoundConfig.reward_preset`` names one instead.

Each round's evaluation sets its new version against its input version on held-out captions; a later round is
also evaluated against the project's base (the first round's input version) on the same captions and seeds
(``stats["against_base"]``; round 1's own evaluation is that one), so the timeline shows what the rounds add up
to. Both keep the images of their first ``GRID_SAMPLES`` (caption, seed) pairs, the timeline's side-by-side grid.

The data is the project's cumulative export (every round's rankings so far). With DPO that is
iterative DPO: the reference is the round's starting policy (a frozen copy of the continued LoRA), so
each round's loss starts at ln 2 and its KL term keeps the round a bounded step from where it started,
not from the base. Earlier rounds' pairs are trained on again and pushed a step further each round; the
model may thus move further from the base over many rounds than one run would, which the round's
evaluation against its input version measures.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max

from annotate.models import Annotation, AnnotationStatus, AnnotationTask, Prompt
from annotate.workflow.access import workflow_of
from annotate.workflow.services import project_update_settings, task_create
from core import jobs
from core.exceptions import ApplicationError
from core.models import JobPhase
from core.tasks import enqueue_on_commit
from generation import services as generation_services
from generation import worker
from generation.inference import MAX_SEED
from generation.models import ModelVersion
from generation.shapes.world import prompt_captions
from projects.access import project_check
from projects.models import Project
from projects.webhooks.events import emit, url_for
from rlhf.datasets.services import export_request_parse, preference_export_build, preference_export_create
from rlhf.exports.splits import SplitSpec
from rlhf.loop.evaluate import evaluation_captions, version_evaluation_run
from rlhf.loop.labels import calibrated_temperature, label_figures, task_image_scores
from rlhf.loop.simulate import annotators_simulate, simulated_annotators_ensure
from rlhf.loop.stats import wilson_interval
from rlhf.models import FineTuneRun, LoopRound, PreferenceExport, RewardModelRun, RunStatus
from rlhf.preferences import SimulationConfig, check_label_accuracy
from rlhf.runs import finetune, reward
from rlhf.runs.finetune import finetune_config_from_run
from rlhf.runs.paths import export_data_path

logger = logging.getLogger(__name__)

Method = Literal["dpo", "ddpo"]
# What a round's DDPO runs with unless its hyperparameters say otherwise: group DPO, Diffusion-DPO on each
# caption's best image against its worst of eight as the round's reward model ranks them. That reward model is
# trained on one round's noisy rankings and barely tells two images apart; the best and worst of eight differ
# enough for it to rank them, where the policy gradient follows its per-image noise (bench/loop.py measured
# both: README, "The loop bench, for any preference"). `advantage_scale` applies when a round's
# hyper-parameters ask for the policy gradient back (each caption's centred rewards over one batch-wide spread).
ROUND_DDPO_DEFAULTS: dict[str, Any] = {"objective": "group_dpo", "prompts_per_iteration": 8, "images_per_prompt": 8,
                                       "advantage_scale": "batch"}
FINETUNE_LOOP_ROUND = "rlhf.tasks.finetune_loop_round"
# A round's new version against the project's base (its first round's input version): the figures the timeline
# and the bench show for what the rounds so far add up to (round 1's own evaluation is already against it).
AGAINST_BASE_KEYS = ("win_rate", "score_version", "score_version_interval", "score_baseline",
                     "score_baseline_interval", "score_delta", "score_delta_interval", "score_relative",
                     "score_relative_interval", "score_effect_size", "score_effect_size_interval",
                     "adherence_version", "adherence_baseline", "adherence_delta", "adherence_delta_interval")
# The reward-model preset of a DDPO round ("auto": ``shapes``, the latent reward model on the shipped shapes
# model's VAE, when the round's images come from that model or a LoRA on it; ``tiny`` otherwise, e.g. on the
# tests' tiny pipeline, whose images the shapes VAE was never trained on).
REWARD_PRESETS = ("auto", "tiny", "shapes")
SHAPES_MODEL_DIR = Path(settings.BASE_DIR) / "generation" / "weights" / "shapes"  # generation.shapes.model's
GRID_SAMPLES = 6  # (caption, seed) pairs whose images each round's evaluations keep: the timeline's grid
SPLIT_TRAIN = 0.9  # of the captions' rankings in a round's export; the rest are held out (validation)


@dataclass(frozen=True)
class RoundConfig:
    """One round's recipe."""

    prompts: int = 200  # shapes-world captions generated and ranked this round
    prompt_seed: int = 0  # captions come from prompt_captions(prompts, prompt_seed + round number, "train");
    # image seeds from round_image_seeds and the annotators' noise from round_annotator_seed, so the same
    # round on the same machine makes the same images and labels, and another prompt_seed another round
    images_per_prompt: int = 4
    annotators: int = 3  # simulated annotators (overlap = this many rankings per prompt)
    preference: str = "larger_shapes"  # rlhf.preferences name or dotted path
    temperature: float = 0.02  # the annotators' Bradley-Terry noise, in the preference's score units
    # Or a target share of labels that agree with the preference, from 0.5 (pure noise) to 1: the temperature
    # is then calibrated on each round's own images and ``temperature`` is not used. None: use temperature.
    label_accuracy: float | None = None
    method: Method = "dpo"
    reward_model: bool = False  # train a reward model on the export (DDPO then optimises it)
    reward_preset: str = "auto"  # REWARD_PRESETS: "auto" picks shapes for shapes-model images, tiny otherwise
    reward_hyperparameters: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # fine-tune overrides
    eval_prompts: int = 64  # held-out captions of the round's evaluation (0 = skip it)
    eval_seeds: tuple[int, ...] = (0,)  # image seeds of the evaluation
    eval_caption_seed: int = 0  # which held-out captions (rlhf.loop.evaluate.evaluation_captions)

    def __post_init__(self) -> None:
        if self.method not in ("dpo", "ddpo"):
            raise ValueError(f"method must be dpo or ddpo, not {self.method!r}")
        if self.method == "ddpo" and not self.reward_model:
            raise ValueError("DDPO in a round optimises the round's reward model: set reward_model")
        if self.reward_preset not in REWARD_PRESETS:
            raise ValueError(f"reward_preset must be one of {list(REWARD_PRESETS)}, not {self.reward_preset!r}")
        for name in ("prompts", "images_per_prompt", "annotators"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.images_per_prompt < 2:
            raise ValueError("images_per_prompt must be at least 2 to rank")
        SimulationConfig(preference=self.preference, temperature=self.temperature)  # validates both
        if not math.isfinite(self.temperature):  # a round's config is stored as JSON
            raise ValueError("temperature must be finite; for labels of pure noise set label_accuracy to 0.5")
        if self.label_accuracy is not None:
            check_label_accuracy(self.label_accuracy)
        if self.eval_caption_seed < 0:
            raise ValueError(f"eval_caption_seed must be >= 0, not {self.eval_caption_seed}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "eval_seeds": list(self.eval_seeds)}


def project_current_version(*, project: Project) -> ModelVersion | None:
    """The output of the project's last finished round (None before the first)."""
    last = (LoopRound.objects.filter(project=project, status=RunStatus.SUCCEEDED, output_version__isnull=False)
            .select_related("output_version").order_by("-number").first())
    return last.output_version if last is not None else None


def rounds_for_project(*, project: Project) -> list[LoopRound]:
    return list(LoopRound.objects.filter(project=project)
                .select_related("input_version", "output_version").order_by("number"))


def round_finetune_hyperparameters(config: RoundConfig) -> dict[str, Any]:
    """The hyper-parameters a round's fine-tune runs with: the round defaults of its method, then the config's."""
    return {**(ROUND_DDPO_DEFAULTS if config.method == "ddpo" else {}), **config.hyperparameters}


def round_recipe_check(config: RoundConfig, *, base_dir: Path, reward_preset: str, resolution: int | None = None,
                       init_lora: Path | None = None) -> None:
    """A round's training recipes, validated before the round makes anything (its images take minutes; a
    wrong hyper-parameter used to surface only when the fine-tune was created). ApplicationError, field
    ``reward_hyperparameters.<name>`` or ``hyperparameters.<name>``, the message naming the recipe."""
    if config.reward_model:
        try:
            reward.reward_recipe_check(preset=reward_preset, hyperparameters=config.reward_hyperparameters)
        except ApplicationError as exc:
            raise ApplicationError(f"The round's reward model ({reward_preset} preset): {exc.message}",
                                   field=f"reward_hyperparameters.{exc.field}" if exc.field
                                   else "reward_hyperparameters") from None
    try:
        finetune.finetune_recipe_check(method=config.method, base_dir=base_dir, resolution=resolution,
                                       init_lora=init_lora, hyperparameters=round_finetune_hyperparameters(config))
    except ApplicationError as exc:
        raise ApplicationError(f"The round's {config.method.upper()} fine-tune: {exc.message}",
                               field=f"hyperparameters.{exc.field}" if exc.field else "hyperparameters") from None


@transaction.atomic
def loop_round_create(*, project: Project, user: User | None, config: RoundConfig,
                      start_version: ModelVersion | None = None) -> LoopRound:
    """The project's next round, from its current version (or ``start_version`` before the first round)."""
    Project.objects.select_for_update().filter(pk=project.pk).first()
    current = project_current_version(project=project) or start_version
    if current is None:
        raise ApplicationError("The first round needs a start version.", field="version")
    root, base_dir, init_lora = finetune.finetune_start(current)
    round_recipe_check(config, base_dir=base_dir, reward_preset=round_reward_preset(config=config, version=current),
                       resolution=finetune.native_resolution(root), init_lora=init_lora)
    number = (LoopRound.objects.filter(project=project).aggregate(m=Max("number"))["m"] or 0) + 1
    return LoopRound.objects.create(project=project, number=number, created_by=user, input_version=current,
                                    config=config.as_dict(), max_attempts=settings.JOB_MAX_ATTEMPTS)


def round_event(loop_round: LoopRound) -> dict[str, Any]:
    """The ``data`` of ``loop_round.finished`` and ``loop_round.failed``: ids, figures and URLs."""
    def version(v: ModelVersion | None) -> dict[str, Any] | None:
        return {"id": v.pk, "name": v.name} if v is not None else None

    evaluation = (loop_round.stats or {}).get("evaluation")
    return {"round": {
        "id": loop_round.pk, "number": loop_round.number, "status": loop_round.status, "stage": loop_round.stage,
        "error": loop_round.error or None, "input_version": version(loop_round.input_version),
        "output_version": version(loop_round.output_version), "export_id": loop_round.export_id,
        "reward_run_id": loop_round.reward_run_id, "finetune_run_id": loop_round.finetune_run_id,
        "stats": loop_round.stats, "url": url_for("rlhf:round_timeline", loop_round.project_id),
        "evaluation_url": url_for("rlhf:evaluation_detail", evaluation) if evaluation else None,
    }}


def round_failed_announce(loop_round: LoopRound) -> None:
    """``loop_round.failed``, whoever failed the round: its worker or the reaper (``jobs_reap``'s ``on_fail``)."""
    emit("loop_round.failed", project_id=loop_round.project_id, data=lambda: round_event(loop_round))


def round_annotator_seed(*, config: RoundConfig, number: int) -> int:
    """The simulated annotators' noise seed in round ``number`` (annotator i draws from it + i): from the same
    stream as the captions, so rounds of other prompt_seeds are labelled with other noise, not the same."""
    return (config.prompt_seed + number) * 1000


def _split_seed(project: Project) -> int:
    """The export's split seed: the first that puts at least one of the project's captions in each of the train
    and validation splits and most of them in train, so even a round of a few captions has held-out rankings
    to measure its fit on and keeps enough to train on (a seed that held out two captions of three left too
    few pairs to train); failing that (two captions), the first with both splits non-empty. 0 for any round
    of a realistic size, whose split is then the export's default."""
    keys = [str(pk) for pk in Prompt.objects.filter(project=project).values_list("pk", flat=True)]
    if len(keys) < 2:
        return 0
    fallback = None
    for seed in range(1000):
        spec = SplitSpec(train=SPLIT_TRAIN, validation=1 - SPLIT_TRAIN, test=0.0, seed=seed)
        held_out = sum(spec.assign(key) == "validation" for key in keys)
        if 0 < held_out < len(keys):
            if 2 * held_out < len(keys):
                return seed
            if fallback is None:
                fallback = seed
    return fallback or 0


def round_image_seeds(*, config: RoundConfig, number: int, caption_index: int) -> list[int]:
    """The generation seeds of round ``number``'s caption ``caption_index``: fixed by the recipe, distinct
    across its images, captions and rounds (drawn seeds would make every run of a round a different round)."""
    first = ((config.prompt_seed + number) * config.prompts + caption_index) * config.images_per_prompt
    return [(first + k) % (MAX_SEED + 1) for k in range(config.images_per_prompt)]


def _generate_tasks(*, loop_round: LoopRound, project: Project, user: User, captions: list[str],
                    config: RoundConfig, tick: Callable[[], object] | None = None) -> tuple[int, list[int]]:
    """Generate every caption's images and make each a task; (images made, the tasks' ids).

    Resumable: each caption's generation job has a deterministic idempotency key, and a caption whose images
    already make a task (an earlier attempt of the round got that far) is not made a task again.
    """
    generation_settings = workflow_of(project).generation_settings
    made, task_ids = 0, []
    for i, caption in enumerate(captions):
        while True:
            try:
                job = generation_services.generation_job_create(
                    user=user, model_version=loop_round.input_version, prompt=caption,
                    seeds=round_image_seeds(config=config, number=loop_round.number, caption_index=i),
                    params=generation_settings or None, project=project,
                    idempotency_key=f"round-{loop_round.pk}-{i}",
                )
                break
            except generation_services.RateLimitedError as exc:
                time.sleep(exc.retry_after)
        job = worker.run_job_to_end(job.pk, tick=tick)
        if job.status != "succeeded":
            raise ApplicationError(f"Generation job {job.pk} {job.status}: {job.error}", field="generation")
        image_ids = [image.pk for image in sorted(job.images.all(), key=lambda image: image.index)]
        task = AnnotationTask.objects.filter(project=project, task_images__image_id=image_ids[0]).first()
        if task is None:
            task = task_create(project=project, prompt_text=caption, created_by=user, image_ids=image_ids)
        task_ids.append(task.pk)
        made += len(image_ids)
        if tick is not None:
            tick()
    return made, task_ids


def _run_to_end(model: type[Any], pk: int, execute: Callable[[], object], tick: Callable[[], object]) -> Any:
    """Run the queued job ``pk`` (an export or run a round made) here, or wait while another worker has it (the
    reaper re-queued it after this round's earlier attempt died); returns it once finished."""
    while True:
        job = model.objects.get(pk=pk)
        if job.is_finished:
            return job
        if job.status == RunStatus.QUEUED:
            execute()  # claims it; a worker that claimed it first makes this a no-op
        else:
            tick()
            time.sleep(1.0)


def _reusable(job: Any) -> bool:
    """An export or run an earlier attempt of the round made, which this attempt carries on with."""
    return job is not None and job.status not in (RunStatus.FAILED, RunStatus.CANCELLED)


def round_config_from_dict(data: dict[str, Any]) -> RoundConfig:
    """The RoundConfig a round stored (``LoopRound.config``)."""
    return RoundConfig(**{**data, "eval_seeds": tuple(data.get("eval_seeds", (0,)))})


def loop_round_start(*, project: Project, user: User, config: RoundConfig,
                     start_version: ModelVersion | None = None) -> LoopRound:
    """Queue the project's next round for a gpu-train worker (the Start button); one unfinished round at a time."""
    project_check(user=user, project=project, action="train")
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        if LoopRound.objects.filter(project=project, status__in=(RunStatus.QUEUED, RunStatus.RUNNING)).exists():
            raise ApplicationError("A round of this project is still queued or running.", field="round")
        loop_round = loop_round_create(project=project, user=user, config=config, start_version=start_version)
        enqueue_on_commit(FINETUNE_LOOP_ROUND, loop_round.pk)
    return loop_round


def round_run(*, project: Project, user: User, config: RoundConfig, start_version: ModelVersion | None = None,
              log: Any = None) -> LoopRound:
    """Create the project's next round and run every stage of it in this process; returns the round."""
    loop_round = loop_round_create(project=project, user=user, config=config, start_version=start_version)
    return loop_round_execute(round_id=loop_round.pk, log=log) or loop_round


def loop_round_execute(*, round_id: int, log: Any = None) -> LoopRound | None:
    """Run every stage of a queued round in this process (commands, the bench, the gpu-train task).

    The round is claimed under a lease its heartbeat renews on a timer; the stage and phase it is in show
    on the timeline. A retried round (its earlier worker died; the reaper re-queued it) carries on with what
    the earlier attempt made: the same generation jobs and tasks, the annotations so far, and the export,
    reward run and fine-tune run it had started (run here, or waited for while another worker has them).
    A round that is not queued (done, failed, or another worker's) is returned as it is.
    """
    def say(message: str) -> None:
        if log is not None:
            log(message)

    claimed = jobs.job_claim(LoopRound, round_id, phase=JobPhase.RENDERING)
    if claimed is None:
        return (LoopRound.objects.select_related("project", "input_version", "created_by")
                .filter(pk=round_id).first())
    _, lease = claimed
    loop_round = (LoopRound.objects.select_related("project", "input_version", "created_by", "export", "reward_run",
                                                   "finetune_run").get(pk=round_id))
    project, user, config = loop_round.project, loop_round.created_by, round_config_from_dict(loop_round.config)
    timings: dict[str, float] = dict((loop_round.stats or {}).get("seconds") or {})
    stats: dict[str, Any] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[name] = round(now - clock, 2)
        clock = now

    with jobs.JobHeartbeat(lease) as heartbeat:

        def still_ours() -> None:
            if heartbeat.should_stop():
                raise jobs.LeaseLost(f"round {round_id} was taken back")

        def stage(name: str, phase: str, **fields: Any) -> None:
            progress = LoopRound.Stage.values.index(name) / (len(LoopRound.Stage.values) - 1)
            if not heartbeat.phase(phase, stage=name, progress=min(progress, 0.99), **fields):
                raise jobs.LeaseLost(f"round {round_id} was taken back")
            loop_round.stage = name
            for key, value in fields.items():
                setattr(loop_round, key, value)

        try:
            if user is None:
                raise ApplicationError("The round's creator no longer exists.", field="round")
            stage(LoopRound.Stage.GENERATION, JobPhase.RENDERING)
            current = loop_round.input_version
            project = project_update_settings(project=project, overlap=config.annotators,
                                              images_per_task=config.images_per_prompt,
                                              model_version_ids=[current.pk])
            captions = prompt_captions(config.prompts, seed=config.prompt_seed + loop_round.number, split="train")
            say(f"round {loop_round.number}: generating {len(captions)} x {config.images_per_prompt} with {current}")
            stats["images"], task_ids = _generate_tasks(loop_round=loop_round, project=project, user=user,
                                                        captions=captions, config=config, tick=still_ours)
            lap("generation")

            stage(LoopRound.Stage.ANNOTATION, JobPhase.ANNOTATING)
            scores = task_image_scores(task_ids=task_ids, preference=config.preference)
            temperature = config.temperature
            if config.label_accuracy is not None:
                try:
                    temperature = calibrated_temperature(scores, config.label_accuracy)
                except ValueError as exc:
                    raise ApplicationError(str(exc), field="label_accuracy") from None
                stats["label_accuracy_target"] = config.label_accuracy
                say(f"round {loop_round.number}: temperature {temperature:.4g} gives label accuracy "
                    f"{config.label_accuracy} on this round's {len(task_ids)} captions")
            stats["temperature"] = None if math.isinf(temperature) else temperature  # None: labels of pure noise
            users = simulated_annotators_ensure(project=project, count=config.annotators)
            report = annotators_simulate(project=project, users=users, config=SimulationConfig(
                preference=config.preference, temperature=temperature,
                seed=round_annotator_seed(config=config, number=loop_round.number)),
                on_progress=lambda _: still_ours())
            stats["annotations"] = Annotation.objects.filter(task_id__in=task_ids,
                                                             status=AnnotationStatus.SUBMITTED).count()
            stats.update(label_figures(task_ids=task_ids, scores=scores).as_stats())
            lap("annotation")
            say(f"round {loop_round.number}: {report.annotations} annotations, label accuracy "
                f"{stats['label_accuracy']}, agreement {stats['agreement']}")

            export = loop_round.export if _reusable(loop_round.export) else None
            if export is None:
                export = preference_export_create(project=project, user=user, request=export_request_parse(
                    {"format": "pickapic", "split_train": SPLIT_TRAIN, "split_validation": 1 - SPLIT_TRAIN,
                     "split_test": 0.0, "split_seed": _split_seed(project), "name": f"round {loop_round.number}"}))
            stage(LoopRound.Stage.EXPORT, JobPhase.EXPORTING, export=export)
            export = _run_to_end(PreferenceExport, export.pk, lambda: preference_export_build(export_id=export.pk),
                                 still_ours)
            if export.status != RunStatus.SUCCEEDED:
                raise ApplicationError(f"The export failed: {export.error}", field="export")
            stats["pairs"] = export.pairs
            lap("export")

            reward_version = None
            if config.reward_model:
                reward_run = loop_round.reward_run if _reusable(loop_round.reward_run) else None
                if reward_run is None:
                    preset = round_reward_preset(config=config, version=current)
                    say(f"round {loop_round.number}: reward model, preset {preset}")
                    reward_run = reward.reward_run_create(user=user, export=export, preset=preset,
                                                          hyperparameters=config.reward_hyperparameters,
                                                          name=f"round {loop_round.number}", enqueue=False)
                stage(LoopRound.Stage.REWARD, JobPhase.TRAINING, reward_run=reward_run)
                reward_run = _run_to_end(RewardModelRun, reward_run.pk,
                                         lambda: reward.reward_run_execute(run_id=reward_run.pk), still_ours)
                if reward_run.status != RunStatus.SUCCEEDED:
                    raise ApplicationError(f"The reward run failed: {reward_run.error}", field="reward")
                reward_version = reward_run.registered_version
                stats["reward_accuracy"] = reward_version.metrics.get("validation_accuracy")
                lap("reward")

            finetune_run = loop_round.finetune_run if _reusable(loop_round.finetune_run) else None
            if finetune_run is None:
                finetune_run = finetune.finetune_run_create(  # continues current's LoRA after the first round
                    user=user, base_version=current, method=config.method, project=project,
                    export=export if config.method == "dpo" else None,
                    reward_version=reward_version if config.method == "ddpo" else None,
                    prompt_source="project" if config.method == "ddpo" else "",
                    hyperparameters=round_finetune_hyperparameters(config),
                    eval_prompts=captions[:1],
                    name=f"round {loop_round.number}", enqueue=False,
                )
                FineTuneRun.objects.filter(pk=finetune_run.pk).update(lineage={
                    **finetune_run.lineage, "round": {"id": loop_round.pk, "number": loop_round.number,
                                                      "input_version": current.pk}})
            stage(LoopRound.Stage.FINETUNE, JobPhase.TRAINING, finetune_run=finetune_run)
            done = _run_to_end(FineTuneRun, finetune_run.pk,
                               lambda: finetune.finetune_run_execute(run_id=finetune_run.pk), still_ours)
            if done.status != RunStatus.SUCCEEDED or done.result_version is None:
                raise ApplicationError(f"The fine-tune failed: {done.error}", field="finetune")
            new = done.result_version
            if config.method == "dpo":
                stats["dpo_heldout"] = _dpo_heldout(done, export)
            lap("finetune")

            if config.eval_prompts:
                stage(LoopRound.Stage.EVALUATION, JobPhase.EVALUATING, output_version=new)
                evaluation = version_evaluation_run(
                    version=new, baseline=current, user=user, project=project, preference=config.preference,
                    prompts=evaluation_captions(config.eval_prompts, eval_seed=config.eval_caption_seed),
                    seeds=config.eval_seeds, params=workflow_of(project).generation_settings or None,
                    samples=GRID_SAMPLES)
                stats["evaluation"] = evaluation.pk
                stats.update({k: evaluation.results.get(k) for k in (
                    "score_version", "score_version_interval", "score_baseline", "score_baseline_interval",
                    "score_delta", "score_delta_interval", "score_relative", "score_relative_interval",
                    "score_effect_size", "score_effect_size_interval", "adherence_version", "adherence_baseline",
                    "adherence_delta", "adherence_delta_interval")})
                stats["win_rate"] = evaluation.results.get("win_rate")
                base = _project_base(project=project, loop_round=loop_round)
                if base.pk != current.pk:  # a later round: what the rounds so far add up to, on the same captions
                    say(f"round {loop_round.number}: evaluating {new} against the base {base}")
                    evaluation = version_evaluation_run(
                        version=new, baseline=base, user=user, project=project, preference=config.preference,
                        prompts=evaluation_captions(config.eval_prompts, eval_seed=config.eval_caption_seed),
                        seeds=config.eval_seeds, params=workflow_of(project).generation_settings or None,
                        samples=GRID_SAMPLES)
                stats["against_base"] = {"evaluation": evaluation.pk, "version": base.pk,
                                         **{k: evaluation.results.get(k) for k in AGAINST_BASE_KEYS}}
                lap("evaluation")
            still_ours()
        except jobs.LeaseLost:
            logger.warning("round %s was taken back from this worker; stopping", round_id)
            return LoopRound.objects.get(pk=round_id)
        except Exception as exc:
            with transaction.atomic():
                if jobs.job_fail(lease, str(exc)[:2000], stats={**stats, "seconds": timings}):
                    round_failed_announce(LoopRound.objects.get(pk=round_id))
            raise
    with transaction.atomic():
        if jobs.job_lock_owned(lease) is not None:
            project_update_settings(project=project, model_version_ids=[new.pk])
            jobs.job_finish(lease, stage=LoopRound.Stage.DONE, output_version=new,
                            stats={**stats, "seconds": timings})
            emit("loop_round.finished", project_id=project.pk,
                 data=lambda: round_event(LoopRound.objects.get(pk=round_id)))
    say(f"round {loop_round.number}: new current version {new}")
    return LoopRound.objects.select_related("project", "input_version", "output_version").get(pk=round_id)


def round_reward_preset(*, config: RoundConfig, version: ModelVersion) -> str:
    """The reward-model preset of a round whose images ``version`` makes: the config's, or with "auto" ``shapes``
    when ``version`` is the shipped shapes model or a LoRA on it (its root base's source is that directory)
    and ``tiny`` for any other model."""
    if config.reward_preset != "auto":
        return config.reward_preset
    root = version
    while root.parent_id is not None:
        root = ModelVersion.objects.get(pk=root.parent_id)
    return auto_reward_preset(root.source)


def auto_reward_preset(base_source: str | Path) -> str:
    """"auto"'s choice for images of the base pipeline at ``base_source``: ``shapes`` for the shipped shapes
    model's directory, ``tiny`` for any other model."""
    try:
        shapes = Path(base_source).resolve() == SHAPES_MODEL_DIR.resolve()
    except (OSError, ValueError):
        shapes = False
    return "shapes" if shapes else "tiny"


def _project_base(*, project: Project, loop_round: LoopRound) -> ModelVersion:
    """The version the project's rounds started from: its first round's input version."""
    first = (LoopRound.objects.filter(project=project, number=1).select_related("input_version").first())
    return first.input_version if first is not None else loop_round.input_version


def loop_rounds_reap_expired() -> int:
    """Re-queue rounds whose worker died (the retry carries on where the round got to)."""
    return jobs.jobs_reap(LoopRound, task_name=FINETUNE_LOOP_ROUND, what="running this round",
                          on_fail=round_failed_announce)


def _dpo_heldout(run: FineTuneRun, export: Any) -> dict[str, Any] | None:
    """DPO's implicit accuracy on the export's validation pairs with its Wilson 95% interval (None without any)."""
    from rlhf.training.dpo_eval import heldout_implicit_accuracy  # torch stays out of web processes

    fit = heldout_implicit_accuracy(finetune_config_from_run(run), run.result_version.lora_path,
                                    export_data_path(export))
    if not fit.n:
        return None
    low, high = wilson_interval(fit.right, fit.n)
    return {"accuracy": round(fit.right / fit.n, 4), "low": round(low, 4), "high": round(high, 4), "n": fit.n,
            "margin": round(fit.margin, 4)}


__all__ = ["RoundConfig", "loop_round_create", "loop_round_execute", "loop_round_start", "project_current_version",
           "round_config_from_dict", "round_image_seeds", "round_reward_preset", "round_run",
           "rounds_for_project"]
