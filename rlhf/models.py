"""Preference exports, reward-model and fine-tune runs, reward scores, and the loop's rounds, evaluations and arena."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from core.models import JobStatus, LeasedJob, TimeStampedModel, leased_job_constraints

# Exports, runs, arena generations and rounds share every background job's lifecycle (core.models.LeasedJob).
RunStatus = JobStatus


class PreferenceExport(LeasedJob):
    """An immutable snapshot of a project's rankings in one dataset format.

    Made by ``rlhf.tasks.export_preferences`` on the ``default`` queue into
    ``PICKWISE_EXPORT_DIR/data/<content hash>/``, or with ``storage_url`` set into that object store's
    ``data/<content hash>/`` (``rlhf.datasets.storage``); ``content_hash`` is the sha256 over the data
    files, so two exports with the same hash hold the same data.
    """

    class Format(models.TextChoices):
        PICKAPIC = "pickapic", "Pick-a-Pic v2 Parquet (pairs)"
        LISTWISE = "listwise", "Full rankings (listwise Parquet)"
        JSONL = "jsonl", "JSONL pairs with image paths"
        HF = "hf", "Hugging Face dataset (save_to_disk)"
        TRL = "trl", "trl preference format"

    class TiePolicy(models.TextChoices):
        DROP = "drop", "Drop ties"
        SOFT = "soft", "Keep as 0.5/0.5 labels"
        MARK = "mark", "Keep, marked as ties"

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="exports")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=200, blank=True)
    format = models.CharField(max_length=20, choices=Format.choices)
    tie_policy = models.CharField(max_length=10, choices=TiePolicy.choices, default=TiePolicy.SOFT)
    weight_per_prompt = models.BooleanField(default=False)
    include_images = models.BooleanField(default=True)
    # Validated filter values (see rlhf.datasets.services.ExportFilters), and the split spec.
    filters = models.JSONField(default=dict, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    split_counts = models.JSONField(default=dict, blank=True)
    content_hash = models.CharField(max_length=64, blank=True)
    # Where the files go: "" for PICKWISE_EXPORT_DIR on the server, else the object store (s3://bucket/prefix,
    # EXPORT_STORAGE_URL when the export was asked for) whose data/<content_hash>/ holds them.
    storage_url = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            *leased_job_constraints("export"),
            models.CheckConstraint(condition=models.Q(format__in=["pickapic", "listwise", "jsonl", "hf", "trl"]),
                                   name="export_format_valid"),
            models.CheckConstraint(condition=models.Q(tie_policy__in=["drop", "soft", "mark"]),
                                   name="export_tie_policy_valid"),
        ]

    def __str__(self) -> str:
        return self.name or f"Export {self.pk} ({self.format})"

    @property
    def pairs(self) -> int:
        return int(self.counts.get("pairs", 0))


# --- reward-model and fine-tune runs (issues 7 and 8) ------------------------------------------------


class RewardModelRun(LeasedJob):
    """One reward-model training run on a preference export, run by ``rlhf.tasks.train_reward_model``.

    ``config`` is the validated ``RewardModelConfig`` (as a dict); ``history`` the logged points
    (``{"step": n, "loss": ..., "accuracy": ...}``), written at most every few seconds; ``results`` the
    final validation/test metrics and the annotators' agreement ceiling.
    """

    class Preset(models.TextChoices):
        TINY = "tiny", "Tiny CLIP (CPU demo, tests)"
        SHAPES = "shapes", "Latent reward on the shapes model's VAE"
        PICKSCORE = "pickscore", "PickScore recipe"

    project = models.ForeignKey("projects.Project", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="reward_runs")
    export = models.ForeignKey(PreferenceExport, null=True, blank=True, on_delete=models.PROTECT,
                               related_name="reward_runs")
    # A Parquet file given directly (management command); empty when the run reads ``export``.
    data_path = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    name = models.CharField(max_length=200, blank=True)
    backbone = models.CharField(max_length=500)
    preset = models.CharField(max_length=20, choices=Preset.choices, default=Preset.TINY)
    config = models.JSONField(default=dict)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    history = models.JSONField(default=list, blank=True)
    last_metrics = models.JSONField(default=dict, blank=True)
    results = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            *leased_job_constraints("rewardrun"),
            models.CheckConstraint(condition=models.Q(preset__in=["tiny", "shapes", "pickscore"]),
                                   name="rewardrun_preset_valid"),
            models.CheckConstraint(condition=models.Q(export__isnull=False) | ~models.Q(data_path=""),
                                   name="rewardrun_has_data"),
        ]

    def __str__(self) -> str:
        return self.name or f"Reward run {self.pk}"


class RewardModelVersion(TimeStampedModel):
    """A trained reward model that can score images: registered when its run succeeds."""

    name = models.SlugField(max_length=100, unique=True)
    project = models.ForeignKey("projects.Project", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="reward_versions")
    run = models.OneToOneField(RewardModelRun, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="registered_version")
    export = models.ForeignKey(PreferenceExport, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="reward_versions")
    # The model directory (load_reward_model(path)); a stable copy outside the run's working directory.
    path = models.CharField(max_length=500)
    metrics = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return self.name


class ProjectPresort(TimeStampedModel):
    """The reward model whose stored scores order a project's candidates for its annotators.

    Annotators then see each task's images highest score first (unscored ones last, in task order);
    new task images are queued for scoring with it. What they submit is unchanged.
    """

    project = models.OneToOneField("projects.Project", primary_key=True, on_delete=models.CASCADE,
                                   related_name="presort")
    reward_version = models.ForeignKey(RewardModelVersion, on_delete=models.CASCADE, related_name="presorted_projects")

    def __str__(self) -> str:
        return f"Project {self.project_id} pre-sorted by {self.reward_version_id}"


class ImageScore(TimeStampedModel):
    """A reward model's score of a generated image under the image's own prompt (background scoring)."""

    reward_version = models.ForeignKey(RewardModelVersion, on_delete=models.CASCADE, related_name="scores")
    image = models.ForeignKey("generation.GeneratedImage", on_delete=models.CASCADE, related_name="reward_scores")
    score = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["reward_version", "image"], name="imagescore_one_per_version_image"),
        ]


class FineTuneRun(LeasedJob):
    """A LoRA fine-tune of a base model version with Diffusion-DPO or DDPO (``rlhf.tasks.finetune_model``).

    Works in ``PICKWISE_MODEL_CACHE_DIR/runs/finetune-<id>/attempt-<n>`` (resumable checkpoints); a finished run
    copies its LoRA to ``PICKWISE_MODEL_CACHE_DIR/loras/finetune-<id>-attempt-<n>`` and registers ``result_version``.
    ``eval_grids`` holds the evaluation images (``[{"label", "step", "images": [{"prompt", "seed", "key"}]}]``),
    labelled ``base``, ``step-<N>`` (one per periodic checkpoint) and ``final``; a checkpoint grid whose
    rendering failed has no images and an ``error``.
    """

    class Method(models.TextChoices):
        DPO = "dpo", "Diffusion-DPO on preference pairs"
        DDPO = "ddpo", "DDPO with a reward function"

    class Preset(models.TextChoices):
        TINY = "tiny", "Tiny (CPU demo, tests)"
        SD15 = "sd15", "Stable Diffusion 1.5"

    class PromptSource(models.TextChoices):
        NONE = "", "Not used"
        PROJECT = "project", "The project's prompts"
        EXPORT = "export", "The export's captions"

    project = models.ForeignKey("projects.Project", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="finetune_runs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    name = models.CharField(max_length=200, blank=True)
    base_version = models.ForeignKey("generation.ModelVersion", on_delete=models.PROTECT, related_name="finetune_runs")
    method = models.CharField(max_length=10, choices=Method.choices)
    export = models.ForeignKey(PreferenceExport, null=True, blank=True, on_delete=models.PROTECT,
                               related_name="finetune_runs")
    data_path = models.CharField(max_length=500, blank=True)
    reward_name = models.CharField(max_length=100, blank=True)
    reward_version = models.ForeignKey(RewardModelVersion, null=True, blank=True, on_delete=models.PROTECT,
                                       related_name="finetune_runs")
    prompt_source = models.CharField(max_length=10, choices=PromptSource.choices, blank=True, default="")
    preset = models.CharField(max_length=20, choices=Preset.choices, default=Preset.TINY)
    config = models.JSONField(default=dict)
    eval_prompts = models.JSONField(default=list, blank=True)
    eval_seeds = models.JSONField(default=list, blank=True)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    history = models.JSONField(default=list, blank=True)
    last_metrics = models.JSONField(default=dict, blank=True)
    eval_grids = models.JSONField(default=list, blank=True)
    lineage = models.JSONField(default=dict, blank=True)
    result_version = models.OneToOneField("generation.ModelVersion", null=True, blank=True,
                                          on_delete=models.SET_NULL, related_name="finetune_run")

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            *leased_job_constraints("finetunerun"),
            models.CheckConstraint(condition=models.Q(method__in=["dpo", "ddpo"]), name="finetunerun_method_valid"),
            models.CheckConstraint(condition=models.Q(preset__in=["tiny", "sd15"]), name="finetunerun_preset_valid"),
            models.CheckConstraint(condition=models.Q(prompt_source__in=["", "project", "export"]),
                                   name="finetunerun_prompt_source_valid"),
            models.CheckConstraint(
                condition=~models.Q(method="dpo") | models.Q(export__isnull=False) | ~models.Q(data_path=""),
                name="finetunerun_dpo_has_pairs",
            ),
            models.CheckConstraint(
                condition=~models.Q(method="ddpo") | models.Q(reward_version__isnull=False) | ~models.Q(reward_name=""),
                name="finetunerun_ddpo_has_reward",
            ),
        ]

    def __str__(self) -> str:
        return self.name or f"Fine-tune {self.pk} ({self.method})"


# --- the closed loop (issue 10): rounds, the blind arena, version evaluations ------------------------


class LoopRound(LeasedJob):
    """One round of a project's loop: prompts -> generation with ``input_version`` -> (simulated)
    annotation -> export -> optional reward model -> fine-tune -> ``output_version``, which is the
    current version of the next round. ``stats`` holds the timeline's figures."""

    class Stage(models.TextChoices):
        PENDING = "pending", "Pending"
        GENERATION = "generation", "Generation"
        ANNOTATION = "annotation", "Annotation"
        EXPORT = "export", "Export"
        REWARD = "reward", "Reward model"
        FINETUNE = "finetune", "Fine-tune"
        EVALUATION = "evaluation", "Evaluation"
        DONE = "done", "Done"

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="loop_rounds")
    number = models.PositiveIntegerField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    input_version = models.ForeignKey("generation.ModelVersion", on_delete=models.PROTECT, related_name="+")
    output_version = models.OneToOneField("generation.ModelVersion", null=True, blank=True,
                                          on_delete=models.SET_NULL, related_name="loop_round")
    # RoundConfig.as_dict(): prompts, images per prompt, annotators, preference, method, hyperparameters...
    config = models.JSONField(default=dict)
    stage = models.CharField(max_length=20, choices=Stage.choices, default=Stage.PENDING)
    export = models.ForeignKey(PreferenceExport, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    reward_run = models.ForeignKey(RewardModelRun, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    finetune_run = models.ForeignKey(FineTuneRun, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    # data size, agreement, reward accuracy, preference and adherence before/after, stage timings
    stats = models.JSONField(default=dict, blank=True)

    @property
    def stage_index(self) -> int:
        """How many of the stages before Done this round has passed (for its progress bar)."""
        stages = list(self.Stage.values)
        return stages.index(self.stage) if self.stage in stages else 0

    class Meta:
        ordering = ["project", "number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="loopround_number_unique_per_project"),
            *leased_job_constraints("loopround"),
            models.CheckConstraint(
                condition=models.Q(stage__in=["pending", "generation", "annotation", "export", "reward", "finetune",
                                              "evaluation", "done"]),
                name="loopround_stage_valid",
            ),
            models.CheckConstraint(condition=models.Q(number__gte=1), name="loopround_number_positive"),
        ]

    def __str__(self) -> str:
        return f"Round {self.number} of project {self.project_id} ({self.status})"


class VersionEvaluation(TimeStampedModel):
    """A model version against a baseline (its parent by default) on held-out prompts with fixed seeds."""

    version = models.ForeignKey("generation.ModelVersion", on_delete=models.CASCADE, related_name="evaluations")
    baseline = models.ForeignKey("generation.ModelVersion", on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey("projects.Project", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="version_evaluations")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    # preference name or "reward_version:<id>", prompts, seeds, steps...
    config = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.QUEUED)
    # rlhf.loop.evaluate.EvaluationResult.as_dict()
    results = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=RunStatus.values),
                                   name="versionevaluation_status_valid"),
        ]

    def __str__(self) -> str:
        return f"Evaluation {self.pk}: {self.version_id} vs {self.baseline_id}"


class Arena(TimeStampedModel):
    """Makes a project a blind arena: its annotators vote A/B/tie on pairs of images of the same prompt
    and seed from two model versions, shown in random order without labels."""

    project = models.OneToOneField("projects.Project", on_delete=models.CASCADE, related_name="arena")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    versions = models.ManyToManyField("generation.ModelVersion", related_name="arenas")

    def __str__(self) -> str:
        return f"Arena of project {self.project_id}"


class ArenaGeneration(LeasedJob):
    """Rendering an arena's prompts x seeds with each of its versions (``rlhf.tasks.arena_generate_comparisons``).

    A leased job: a worker that dies mid-way is reaped and the retry renders only what is missing (each
    prompt's images come from generation jobs with deterministic idempotency keys, each comparison is
    unique), so the arena ends with every comparison exactly once.
    """

    arena = models.ForeignKey(Arena, on_delete=models.CASCADE, related_name="generations")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    prompts = models.JSONField(default=list)
    seeds = models.JSONField(default=list)
    # Generation parameters for every version (None: each version's defaults).
    params = models.JSONField(null=True, blank=True)
    prompts_done = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = leased_job_constraints("arenageneration")

    def __str__(self) -> str:
        return f"Arena generation {self.pk} ({len(self.prompts)} prompts x {len(self.seeds)} seeds)"


class ArenaComparison(TimeStampedModel):
    """Two images of one prompt and seed, by ``version_a`` and ``version_b`` (``version_a.pk < version_b.pk``)."""

    arena = models.ForeignKey(Arena, on_delete=models.CASCADE, related_name="comparisons")
    prompt = models.TextField()
    seed = models.BigIntegerField()
    version_a = models.ForeignKey("generation.ModelVersion", on_delete=models.PROTECT, related_name="+")
    version_b = models.ForeignKey("generation.ModelVersion", on_delete=models.PROTECT, related_name="+")
    image_a = models.ForeignKey("generation.GeneratedImage", on_delete=models.PROTECT, related_name="+")
    image_b = models.ForeignKey("generation.GeneratedImage", on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["arena", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["arena", "prompt", "seed", "version_a", "version_b"],
                                    name="arenacomparison_unique"),
            models.CheckConstraint(condition=models.Q(version_a__lt=models.F("version_b")),
                                   name="arenacomparison_versions_ordered"),
        ]

    def __str__(self) -> str:
        return f"Comparison {self.pk}: {self.version_a_id} vs {self.version_b_id}"


class ArenaVote(TimeStampedModel):
    """One annotator's vote on one comparison; ``winner`` names the version side, not the screen side."""

    class Winner(models.TextChoices):
        A = "a", "Version A"
        B = "b", "Version B"
        TIE = "tie", "Tie"

    comparison = models.ForeignKey(ArenaComparison, on_delete=models.CASCADE, related_name="votes")
    voter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="arena_votes")
    winner = models.CharField(max_length=3, choices=Winner.choices)
    # Whether version A's image was shown on the left (the order is drawn at random per vote).
    a_shown_left = models.BooleanField(default=True)

    class Meta:
        ordering = ["comparison", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["comparison", "voter"], name="arenavote_once_per_voter"),
            models.CheckConstraint(condition=models.Q(winner__in=["a", "b", "tie"]), name="arenavote_winner_valid"),
        ]

    def __str__(self) -> str:
        return f"Vote {self.winner} on {self.comparison_id} by {self.voter_id}"


class TrainingNode(LeasedJob):
    """One other machine's part of a training run over several machines (``num_machines`` > 1).

    The run's task (machine rank 0) creates one per other machine for its attempt and queues
    ``rlhf.tasks.training_node_run`` on ``TRAIN_NODE_QUEUE``; a node worker on another machine claims it,
    starts that machine's ranks (``machine_rank``) against the run's rendezvous (``spec``: the main address,
    port and rendezvous id, the trainer and its config, the run's directories) and heartbeats it. The run's
    task watches these rows: a failed one, or one whose lease lapsed (its machine died), fails the run; one
    still queued after ``TRAIN_RENDEZVOUS_TIMEOUT`` fails it too. Never re-queued (``max_attempts`` 1): a
    retry of the run makes new ones for its new attempt.
    """

    class RunKind(models.TextChoices):
        REWARD = "reward", "Reward-model run"
        FINETUNE = "finetune", "Fine-tune run"

    run_kind = models.CharField(max_length=20, choices=RunKind.choices)
    run_id = models.PositiveIntegerField()
    run_attempt = models.PositiveSmallIntegerField()
    machine_rank = models.PositiveSmallIntegerField()
    spec = models.JSONField(default=dict)

    class Meta:
        ordering = ["run_kind", "run_id", "run_attempt", "machine_rank"]
        constraints = [
            *leased_job_constraints("trainingnode"),
            models.CheckConstraint(condition=models.Q(run_kind__in=["reward", "finetune"]),
                                   name="trainingnode_run_kind_valid"),
            models.CheckConstraint(condition=models.Q(machine_rank__gte=1), name="trainingnode_not_main_machine"),
            models.UniqueConstraint(fields=["run_kind", "run_id", "run_attempt", "machine_rank"],
                                    name="trainingnode_one_per_machine"),
        ]

    def __str__(self) -> str:
        return f"Machine {self.machine_rank} of {self.run_kind} run {self.run_id} (attempt {self.run_attempt})"
