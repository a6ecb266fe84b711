from __future__ import annotations

from django.conf import settings
from django.db import models

from core.models import TimeStampedModel
from generation.models import GeneratedImage, GenerationJob, JobStatus
from projects.models import Project


class TaskOrder(models.TextChoices):
    SEQUENTIAL = "sequential", "Sequential (import order)"
    RANDOM = "random", "Random"


class AnnotationTemplate(TimeStampedModel):
    """A project's annotation form; its content lives in numbered versions."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="annotation_templates")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(name=""), name="annotation_template_name_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name


class AnnotationTemplateVersion(TimeStampedModel):
    """One numbered version of a template's JSON schema. Published versions never change."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"

    template = models.ForeignKey(AnnotationTemplate, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    schema = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT)
    published_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["template", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["template", "number"], name="template_version_number_unique"),
            models.UniqueConstraint(
                fields=["template"],
                condition=models.Q(status="draft"),
                name="template_at_most_one_draft",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=["draft", "published"]), name="template_version_status_valid"
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(status="draft", published_at__isnull=True)
                    | models.Q(status="published", published_at__isnull=False)
                ),
                name="template_version_published_at_matches_status",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.template} v{self.number} ({self.get_status_display()})"

    @property
    def is_published(self) -> bool:
        return self.status == self.Status.PUBLISHED


class ProjectWorkflow(TimeStampedModel):
    """A project's annotation workflow: what annotators see and how tasks are handed out.

    One row per project (``project.workflow``); a project without one has these defaults
    (``annotate.workflow.selectors.workflow_of``).
    """

    project = models.OneToOneField(Project, primary_key=True, on_delete=models.CASCADE, related_name="workflow")
    instructions = models.TextField(blank=True)
    # The published template version annotators see; a submitted annotation records its own.
    template_version = models.ForeignKey(
        AnnotationTemplateVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="workflows"
    )
    images_per_task = models.PositiveSmallIntegerField(default=4)
    # k: how many different annotators rank each (non-gold) task.
    overlap = models.PositiveSmallIntegerField(default=1)
    task_order = models.CharField(max_length=20, choices=TaskOrder.choices, default=TaskOrder.SEQUENTIAL)
    # Share (0..1) of handed-out tasks that are gold tasks with a known ranking.
    gold_rate = models.FloatField(default=0.0)
    # How long a handed-out task stays reserved for its annotator before the reaper frees it.
    lease_seconds = models.PositiveIntegerField(default=900)
    # Defaults for the Generate button (scheduler, steps, guidance, width, height, ...).
    generation_settings = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(images_per_task__gte=1, images_per_task__lte=16),
                name="workflow_images_per_task_range",
            ),
            models.CheckConstraint(condition=models.Q(overlap__gte=1, overlap__lte=100), name="workflow_overlap_range"),
            models.CheckConstraint(condition=models.Q(task_order__in=TaskOrder.values),
                                   name="workflow_task_order_valid"),
            models.CheckConstraint(
                condition=models.Q(gold_rate__gte=0, gold_rate__lte=1), name="workflow_gold_rate_range"
            ),
            models.CheckConstraint(condition=models.Q(lease_seconds__gte=10), name="workflow_lease_seconds_min"),
        ]

    def __str__(self) -> str:
        return f"Workflow of project {self.project_id}"



# --- annotation workflow (issue 4): prompt sets, tasks, assignments, annotations -------------


class PromptSource(models.TextChoices):
    IMPORT = "import", "Imported file"
    API = "api", "API"
    ANNOTATOR = "annotator", "Typed by an annotator"


class PromptSet(TimeStampedModel):
    """One uploaded file (or API batch) of prompts; every prompt of it became a task."""

    class Format(models.TextChoices):
        CSV = "csv", "CSV"
        JSONL = "jsonl", "JSON lines"
        TXT = "txt", "Plain text"
        PARQUET = "parquet", "Parquet"
        HF = "hf", "Hugging Face dataset"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompt_sets")
    name = models.CharField(max_length=200)
    source_format = models.CharField(max_length=10, choices=Format.choices)
    prompt_count = models.PositiveIntegerField(default=0)
    duplicate_count = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=models.Q(source_format__in=["csv", "jsonl", "txt", "parquet", "hf"]),
                                   name="promptset_format_valid"),
            models.CheckConstraint(condition=~models.Q(name=""), name="promptset_name_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name


class Prompt(TimeStampedModel):
    """A prompt of a project. Two prompts of a project may share a text (two tasks with the same prompt and
    different candidates); imports that ask for de-duplication compare ``text_sha256``."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    prompt_set = models.ForeignKey(
        PromptSet, null=True, blank=True, on_delete=models.SET_NULL, related_name="prompts"
    )
    text = models.TextField()
    text_sha256 = models.CharField(max_length=64)
    negative_prompt = models.TextField(blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    tags = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=20, choices=PromptSource.choices, default=PromptSource.IMPORT)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["pk"]
        indexes = [models.Index(fields=["project", "text_sha256"], name="prompt_text_per_project_idx")]
        constraints = [
            models.CheckConstraint(condition=models.Q(source__in=PromptSource.values), name="prompt_source_valid"),
            models.CheckConstraint(condition=~models.Q(text=""), name="prompt_text_not_empty"),
        ]

    def __str__(self) -> str:
        return self.text[:60]


class AnnotationTask(TimeStampedModel):
    """One prompt with its candidate images, to be ranked by the workflow's ``overlap`` annotators.

    ``taken_count`` counts the active leases plus the submitted annotations (at most
    the workflow's ``overlap``); ``is_open`` is ``taken_count < overlap`` kept in the row so
    the queue's partial index only holds tasks that still need annotators. Gold tasks carry
    a known ``gold_ranking`` (same representation as ``Annotation.ranking``), are offered to
    every annotator once and never count towards the overlap.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="tasks")
    position = models.BigIntegerField(help_text="Sequential queue order (import order).")
    random_key = models.IntegerField(help_text="Random queue order.")
    is_gold = models.BooleanField(default=False)
    gold_ranking = models.JSONField(null=True, blank=True)
    # The importer's own id of the task (unique in the project when set) and its metadata columns;
    # handouts and exports return both, and annotators' clients may submit by the key.
    external_key = models.CharField(max_length=200, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    taken_count = models.PositiveSmallIntegerField(default=0)
    is_open = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    images = models.ManyToManyField(GeneratedImage, through="TaskImage", related_name="annotation_tasks")

    class Meta:
        ordering = ["project", "position"]
        indexes = [
            models.Index(fields=["project", "position"], condition=models.Q(is_open=True, is_gold=False),
                         name="task_queue_sequential_idx"),
            models.Index(fields=["project", "random_key"], condition=models.Q(is_open=True, is_gold=False),
                         name="task_queue_random_idx"),
            models.Index(fields=["project", "is_gold"], name="task_project_gold_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["project", "position"], name="task_position_unique_per_project"),
            models.UniqueConstraint(fields=["project", "external_key"], condition=~models.Q(external_key=""),
                                    name="task_external_key_unique_per_project"),
            models.CheckConstraint(
                condition=models.Q(is_gold=False, gold_ranking__isnull=True)
                | models.Q(is_gold=True, gold_ranking__isnull=False),
                name="task_gold_has_ranking",
            ),
        ]

    def __str__(self) -> str:
        return f"Task {self.pk} of project {self.project_id}"


class TaskImage(models.Model):
    """A candidate image of a task, at a fixed display position."""

    task = models.ForeignKey(AnnotationTask, on_delete=models.CASCADE, related_name="task_images")
    image = models.ForeignKey(GeneratedImage, on_delete=models.PROTECT, related_name="task_images")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["task", "position"]
        constraints = [
            models.UniqueConstraint(fields=["task", "image"], name="taskimage_image_once_per_task"),
            models.UniqueConstraint(fields=["task", "position"], name="taskimage_position_unique"),
        ]

    def __str__(self) -> str:
        return f"Image {self.image_id} of task {self.task_id} at {self.position}"


class TaskGenerationJob(TimeStampedModel):
    """A generation job started for a task's candidates (the Generate button, a simulated annotator).

    When the job succeeds, the service that marks it succeeded attaches its images to the task (if
    the task has none yet), through ``generation.registry``; pages only read.
    """

    task = models.ForeignKey(AnnotationTask, on_delete=models.CASCADE, related_name="generation_jobs")
    job = models.OneToOneField(GenerationJob, on_delete=models.CASCADE, related_name="annotation_task_link")

    class Meta:
        ordering = ["task", "pk"]

    def __str__(self) -> str:
        return f"Job {self.job_id} for task {self.task_id}"


class AssignmentStatus(models.TextChoices):
    ACTIVE = "active", "Leased"
    SUBMITTED = "submitted", "Submitted"
    SKIPPED = "skipped", "Skipped"
    EXPIRED = "expired", "Lease expired"
    RELEASED = "released", "Released"
    REJECTED = "rejected", "Rejected in review"


class TaskAssignment(TimeStampedModel):
    """A task handed to one annotator: at most once per (task, annotator), one active lease per
    annotator and project. ``created_at`` is when it was handed out."""

    task = models.ForeignKey(AnnotationTask, on_delete=models.CASCADE, related_name="assignments")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    status = models.CharField(max_length=20, choices=AssignmentStatus.choices, default=AssignmentStatus.ACTIVE)
    # The template version the task was shown with; the annotation records the same one.
    template_version = models.ForeignKey(
        AnnotationTemplateVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    lease_expires_at = models.DateTimeField()
    skip_reason = models.CharField(max_length=500, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["lease_expires_at"], condition=models.Q(status="active"),
                         name="assignment_lease_idx"),
            models.Index(fields=["project", "annotator", "status"], name="assignment_annotator_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="assignment_once_per_task_and_annotator"),
            models.UniqueConstraint(fields=["project", "annotator"], condition=models.Q(status="active"),
                                    name="assignment_one_active_per_annotator"),
            models.CheckConstraint(condition=models.Q(status__in=AssignmentStatus.values),
                                   name="assignment_status_valid"),
        ]

    def __str__(self) -> str:
        return f"Task {self.task_id} → {self.annotator_id} ({self.status})"


class AnnotationStatus(models.TextChoices):
    SUBMITTED = "submitted", "Submitted"
    SUPERSEDED = "superseded", "Superseded by an amendment"
    REJECTED = "rejected", "Rejected in review"


class Annotation(TimeStampedModel):
    """One annotator's answer to one task: the ranking, plus the template's other answers.

    ``ranking`` is a list of tie groups of ``GeneratedImage`` ids (UUID strings), best first:
    ``[["<id-a>"], ["<id-b>", "<id-c>"], ["<id-d>"]]`` means a beat b and c (tied), which beat
    d. Partial rankings (when the template allows them) leave images out; best-of-N answers
    hold one group (the winners). ``answers`` maps other component names to their values
    (ratings ``{image_id: score}``, flags ``{image_id: [flag, ...]}``, selects, texts).
    ``template_version`` is the exact version the annotator saw.

    Amending creates a new row pointing at the old one (``supersedes``) and marks the old one
    superseded, so history is kept; at most one row per (task, annotator) is ``submitted``.
    Rejected rows stay, and the task goes back to the queue for another annotator.
    """

    task = models.ForeignKey(AnnotationTask, on_delete=models.CASCADE, related_name="annotations")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="annotations")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="annotations")
    assignment = models.ForeignKey(TaskAssignment, on_delete=models.CASCADE, related_name="annotations")
    template_version = models.ForeignKey(
        AnnotationTemplateVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="annotations"
    )
    status = models.CharField(max_length=20, choices=AnnotationStatus.choices, default=AnnotationStatus.SUBMITTED)
    ranking = models.JSONField()
    answers = models.JSONField(default=dict, blank=True)
    rationale = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=100)
    supersedes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="superseded_by"
    )
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_note = models.CharField(max_length=1000, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["project", "status", "created_at"], name="annotation_project_status_idx"),
            models.Index(fields=["project", "annotator", "status"], name="annotation_annotator_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["annotator", "idempotency_key"], name="annotation_idempotency_key"),
            models.UniqueConstraint(fields=["task", "annotator"], condition=models.Q(status="submitted"),
                                    name="annotation_one_submitted_per_task_and_annotator"),
            models.CheckConstraint(condition=models.Q(status__in=AnnotationStatus.values),
                                   name="annotation_status_valid"),
            models.CheckConstraint(condition=~models.Q(idempotency_key=""), name="annotation_idempotency_key_set"),
        ]

    def __str__(self) -> str:
        return f"Annotation {self.pk} of task {self.task_id} by {self.annotator_id} ({self.status})"

    def ranked_image_ids(self) -> list[str]:
        return [image for group in self.ranking for image in group]


# --- task imports with candidate images (issue 28) ----------------------------------------------


class TaskImport(TimeStampedModel):
    """One import of tasks with their candidate images (a table plus image files, zip, paths, keys or URLs).

    Runs through ``annotate.workflow.imports``: a dry run checks every row and image and writes
    nothing; a real run resolves and stores the images (content-addressed), then creates the prompt
    set, prompts, images and tasks in one transaction, so it lands whole or not at all. Large ones run
    on a Celery worker (``annotate.tasks.run_task_import``) under a lease with attempts and progress,
    the same lifecycle as generation jobs, exports and runs; an admin may cancel it until it commits.
    """

    class Format(models.TextChoices):
        CSV = "csv", "CSV"
        JSONL = "jsonl", "JSON lines"
        PARQUET = "parquet", "Parquet (Pick-a-Pic columns too)"
        HF = "hf", "Hugging Face dataset (save_to_disk)"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="task_imports")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    name = models.CharField(max_length=200)
    source_format = models.CharField(max_length=10, choices=Format.choices)
    dry_run = models.BooleanField(default=False)
    # ImportOptions.as_json(): deduplicate, key column, ...
    options = models.JSONField(default=dict, blank=True)
    # Where the inputs are: storage keys of the uploaded table, zip and files, or a path under the import root.
    inputs = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    lease_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    leased_by = models.CharField(max_length=200, blank=True)
    progress = models.FloatField(default=0.0)
    phase = models.CharField(max_length=200, blank=True)
    rows = models.PositiveIntegerField(default=0)
    # {"errors": [{"line", "column", "message"}], "duplicates": [...], "tasks", "images", "new_images", ...}
    report = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    prompt_set = models.ForeignKey(PromptSet, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["status", "lease_expires_at"], name="taskimport_lease_idx")]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=JobStatus.values), name="taskimport_status_valid"),
            models.CheckConstraint(condition=models.Q(source_format__in=["csv", "jsonl", "parquet", "hf"]),
                                   name="taskimport_format_valid"),
            models.CheckConstraint(condition=models.Q(progress__gte=0, progress__lte=1),
                                   name="taskimport_progress_range"),
            models.CheckConstraint(
                condition=~models.Q(status=JobStatus.RUNNING)
                | models.Q(lease_expires_at__isnull=False, lease_token__isnull=False),
                name="taskimport_running_has_lease",
            ),
        ]

    def __str__(self) -> str:
        return f"Import {self.pk} ({self.status}) into project {self.project_id}"

    @property
    def is_finished(self) -> bool:
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

    @property
    def staging_prefix(self) -> str:
        """Where its uploads wait in media storage until it finishes (deleted then)."""
        return f"imports/{self.pk}/"


class TaskImportImage(models.Model):
    """An image an unfinished import has stored (or found stored) under its content-addressed key.

    The staging list of an import: its commit reads the images from here, and a failed or cancelled
    import deletes the files it wrote (``written``) that no image row and no other unfinished import uses.
    """

    task_import = models.ForeignKey(TaskImport, on_delete=models.CASCADE, related_name="staged_images")
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=300)
    written = models.BooleanField(default=False)
    content_type = models.CharField(max_length=30)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveIntegerField()
    source = models.CharField(max_length=10)
    name = models.CharField(max_length=2000, blank=True)

    class Meta:
        indexes = [models.Index(fields=["storage_key"], name="taskimportimage_key_idx")]
        constraints = [
            models.UniqueConstraint(fields=["task_import", "sha256"], name="taskimportimage_once_per_import"),
        ]

    def __str__(self) -> str:
        return f"{self.sha256[:12]} staged by import {self.task_import_id}"
