"""Model versions, generation jobs and the images they produce (with full provenance).

A ``ModelVersion`` is either a base text-to-image pipeline (a local diffusers directory or a hub
id) or a LoRA adapter on a parent version. A ``GenerationJob`` asks for ``num_images`` images of
one prompt, one stored seed per image. Each ``GeneratedImage`` records everything needed to make
the same pixels again: model version, prompt, the exact parameters, seed and the runtime.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from core.models import (  # the job statuses are core's; generation's callers import them from here too
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    JobStatus,
    LeasedJob,
    TimeStampedModel,
    leased_job_constraints,
)
from generation.editing import EDIT_KINDS, mask_storage_key, source_storage_key
from generation.inference import SCHEDULERS, GenerationParams


class ModelKind(models.TextChoices):
    BASE = "base", "Base pipeline"
    LORA = "lora", "LoRA adapter on a parent version"


class DType(models.TextChoices):
    FLOAT32 = "float32", "float32"
    FLOAT16 = "float16", "float16"
    BFLOAT16 = "bfloat16", "bfloat16"


Scheduler = models.TextChoices("Scheduler", [(name, name) for name in SCHEDULERS])  # type: ignore[misc]


class ModelVersion(TimeStampedModel):
    # Unique, human-readable name shown in the Select ("shapes-v1", "sd15-dpo-round2").
    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=10, choices=ModelKind.choices, default=ModelKind.BASE)
    # Base versions: a local diffusers directory (absolute, or relative to the repository) or a hub id.
    source = models.CharField(max_length=500, blank=True)
    # LoRA versions: the version the adapter was trained on, the adapter's path and its weight.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    lora_path = models.CharField(max_length=500, blank=True)
    lora_scale = models.FloatField(default=1.0)
    dtype = models.CharField(max_length=10, choices=DType.choices, default=DType.FLOAT16)
    # Default sampling parameters; a job may override each within the validated ranges.
    default_scheduler = models.CharField(max_length=20, choices=Scheduler.choices, default="dpmpp_2m")
    default_steps = models.PositiveSmallIntegerField(default=30)
    default_guidance = models.FloatField(default=7.0)
    default_width = models.PositiveIntegerField(default=512)
    default_height = models.PositiveIntegerField(default=512)
    default_negative_prompt = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The projects that offer this version to their annotators (``project.model_versions``).
    projects = models.ManyToManyField(
        "projects.Project", through="ProjectModelVersion", related_name="model_versions", blank=True
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=models.Q(kind__in=ModelKind.values), name="modelversion_kind_valid"),
            models.CheckConstraint(condition=models.Q(dtype__in=DType.values), name="modelversion_dtype_valid"),
            models.CheckConstraint(
                condition=models.Q(default_scheduler__in=list(SCHEDULERS)), name="modelversion_scheduler_valid"
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(kind=ModelKind.BASE, parent__isnull=True, lora_path="") & ~models.Q(source="")
                )
                | (models.Q(kind=ModelKind.LORA, parent__isnull=False) & ~models.Q(lora_path="")),
                name="modelversion_base_has_source_lora_has_parent",
            ),
            models.CheckConstraint(
                condition=models.Q(default_steps__gte=1, default_steps__lte=150), name="modelversion_steps_range"
            ),
            models.CheckConstraint(
                condition=models.Q(default_guidance__gte=0, default_guidance__lte=30),
                name="modelversion_guidance_range",
            ),
            models.CheckConstraint(
                condition=models.Q(lora_scale__gte=0, lora_scale__lte=10), name="modelversion_lora_scale_range"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_lora(self) -> bool:
        return self.kind == ModelKind.LORA

    @property
    def cache_key(self) -> str:
        """Pipeline-cache key and peft adapter name."""
        return f"mv-{self.pk}"

    def default_params(self) -> GenerationParams:
        return GenerationParams(
            scheduler=self.default_scheduler,  # type: ignore[arg-type]
            steps=self.default_steps,
            guidance=self.default_guidance,
            width=self.default_width,
            height=self.default_height,
            negative_prompt=self.default_negative_prompt,
        )


class ProjectModelVersion(TimeStampedModel):
    """A model version a project offers to its annotators (the Generate button's choices)."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="model_version_offers")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="project_offers")

    class Meta:
        ordering = ["project", "model_version"]
        constraints = [
            models.UniqueConstraint(fields=["project", "model_version"], name="projectmodelversion_once"),
        ]

    def __str__(self) -> str:
        return f"{self.model_version_id} offered in {self.project_id}"


class EditKind(models.TextChoices):
    NONE = "", "Text to image"
    IMG2IMG = "img2img", "Image to image"
    INPAINT = "inpaint", "Inpainting"
    OUTPAINT = "outpaint", "Outpainting"


assert set(EditKind.values) == {"", *EDIT_KINDS}


class GenerationJob(LeasedJob):
    """``num_images`` images of one prompt; its lifecycle (status, lease, attempts, phase) is core's ``LeasedJob``.

    An image-editing job (``edit_kind`` set) also has ``edit``: ``generation.editing.PreparedEdit.provenance()``
    (source sha256 and storage key, mask sha256 and key, strength, outpaint box, the source's size).
    """

    # The project the images belong to (who may see them); null for an ML engineer's own jobs.
    project = models.ForeignKey(
        "projects.Project", null=True, blank=True, on_delete=models.CASCADE, related_name="generation_jobs"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="generation_jobs"
    )
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="jobs")
    prompt = models.TextField()
    # GenerationParams.to_dict(), resolved against the model version's defaults at creation.
    params = models.JSONField()
    # sha256 of the canonical JSON of ``params``: jobs with equal model version + hash are coalesced.
    params_hash = models.CharField(max_length=64)
    num_images = models.PositiveSmallIntegerField()
    # One seed per image, given by the caller or drawn at creation.
    seeds = models.JSONField()
    # How many images the claiming batch held (all coalesced jobs share one lease token).
    batch_images = models.PositiveSmallIntegerField(default=0)
    idempotency_key = models.CharField(max_length=100, blank=True)
    # Image editing: "" for text to image; else the kind, and the edit's provenance (see the docstring).
    edit_kind = models.CharField(max_length=10, choices=EditKind.choices, blank=True, default="")
    edit = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["status", "model_version", "params_hash"], name="genjob_coalesce_idx"),
            models.Index(fields=["created_by", "status"], name="genjob_user_status_idx"),
            models.Index(fields=["status", "lease_expires_at"], name="genjob_lease_idx"),
        ]
        constraints = [
            *leased_job_constraints("genjob"),
            models.CheckConstraint(condition=models.Q(num_images__gte=1), name="genjob_num_images_positive"),
            models.CheckConstraint(condition=models.Q(edit_kind__in=EditKind.values), name="genjob_edit_kind_valid"),
            models.UniqueConstraint(
                fields=["created_by", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="genjob_one_per_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"Job {self.pk} ({self.status}): {self.prompt[:40]}"

    @property
    def storage_prefix(self) -> str:
        return f"generated/{self.pk}/"

    def storage_key(self, index: int, seed: int) -> str:
        """Deterministic: a re-run after a crash writes the same key (and overwrites, never duplicates)."""
        return f"{self.storage_prefix}{index}-{seed}.png"

    def generation_params(self) -> GenerationParams:
        return GenerationParams.from_dict(self.params)

    @property
    def is_edit(self) -> bool:
        return bool(self.edit_kind)


class ImageOrigin(models.TextChoices):
    GENERATED = "generated", "Generated by a Pickwise job"
    EXTERNAL = "external", "Imported (made elsewhere)"


class ExternalSource(models.TextChoices):
    UPLOAD = "upload", "Uploaded file"
    ZIP = "zip", "Entry of an uploaded zip"
    PATH = "path", "File under the import root"
    S3 = "s3", "Key in the configured bucket"
    URL = "url", "Fetched from an http(s) URL"
    INLINE = "inline", "Bytes inside the imported table"


# What an external image has no value for: it was not made by a Pickwise job.
NO_SEED_REASON = "external image: no seed to regenerate"


class GeneratedImage(TimeStampedModel):
    """A candidate image: made by a generation job (``generated``), or imported (``external``).

    Generated rows keep their job, model version, seed and parameters; external rows have none of
    them and carry where they came from instead (source, original name or URL, metadata) and the
    project they were imported into. External bytes are stored once per sha256
    (``external/<sha256[:2]>/<sha256>.<ext>``, shared by every project that imports them) and there
    is one row per (project, sha256). Everything downstream (tasks, rankings, review, exports,
    reward training, DPO) treats both alike.
    """

    # Random, so image URLs cannot be enumerated (they are permission-checked as well).
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    origin = models.CharField(max_length=10, choices=ImageOrigin.choices, default=ImageOrigin.GENERATED)
    job = models.ForeignKey(GenerationJob, null=True, blank=True, on_delete=models.CASCADE, related_name="images")
    # Position in the job (0..num_images-1); the job's seeds[index] made it.
    index = models.PositiveSmallIntegerField(null=True, blank=True)
    # Provenance, copied so the image stands on its own: the same inputs give the same pixels.
    model_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT,
                                      related_name="images")
    prompt = models.TextField(blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    params = models.JSONField(null=True, blank=True)
    # Device, dtype and library versions that made it (exact reproduction needs the same ones).
    runtime = models.JSONField(default=dict, blank=True)
    # External images: the project they were imported into, and where they came from.
    project = models.ForeignKey("projects.Project", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="external_images")
    external_source = models.CharField(max_length=10, choices=ExternalSource.choices, blank=True)
    external_name = models.CharField(max_length=2000, blank=True, help_text="Original file name, path, key or URL.")
    external_metadata = models.JSONField(default=dict, blank=True)
    storage_key = models.CharField(max_length=300)
    content_type = models.CharField(max_length=30, default="image/png")
    sha256 = models.CharField(max_length=64)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveIntegerField()
    # This image's share of its pipeline call, and how many images that call made.
    generation_seconds = models.FloatField(null=True, blank=True)
    batch_size = models.PositiveSmallIntegerField(default=1)
    # Image editing: {} for text to image; else its job's ``edit`` plus ``kind`` (copied, like the rest).
    edit = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["job", "index"]
        indexes = [
            models.Index(fields=["storage_key"], name="genimage_storage_key_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="genimage_one_per_job_index"),
            models.CheckConstraint(condition=models.Q(seed__gte=0), name="genimage_seed_nonnegative"),
            models.CheckConstraint(condition=models.Q(origin__in=ImageOrigin.values), name="genimage_origin_valid"),
            models.CheckConstraint(
                condition=models.Q(
                    origin=ImageOrigin.GENERATED, job__isnull=False, index__isnull=False,
                    model_version__isnull=False, seed__isnull=False, params__isnull=False,
                    generation_seconds__isnull=False, project__isnull=True, external_source="",
                )
                | models.Q(
                    origin=ImageOrigin.EXTERNAL, job__isnull=True, index__isnull=True, model_version__isnull=True,
                    seed__isnull=True, params__isnull=True, generation_seconds__isnull=True,
                    project__isnull=False, external_source__in=ExternalSource.values,
                ),
                name="genimage_generated_has_provenance_external_has_source",
            ),
            # A generated image owns its file; external rows of several projects share one per sha256.
            models.UniqueConstraint(fields=["storage_key"], condition=models.Q(origin=ImageOrigin.GENERATED),
                                    name="genimage_generated_storage_key_unique"),
            models.UniqueConstraint(fields=["project", "sha256"], condition=models.Q(origin=ImageOrigin.EXTERNAL),
                                    name="genimage_external_once_per_project"),
        ]

    def __str__(self) -> str:
        if self.origin == ImageOrigin.EXTERNAL:
            return f"External image {self.sha256[:12]} ({self.external_name[:40]})"
        return f"Image {self.job_id}/{self.index} seed {self.seed}"

    @property
    def is_external(self) -> bool:
        return self.origin == ImageOrigin.EXTERNAL

    @property
    def edit_kind(self) -> str:
        """"img2img", "inpaint" or "outpaint" for an edit; "" for text to image and imported images."""
        return str((self.edit or {}).get("kind") or "")

    @property
    def edit_source_key(self) -> str:
        """Storage key of the source image an edit started from ("" when not an edit)."""
        sha = (self.edit or {}).get("source_sha256") or ""
        return source_storage_key(sha) if sha else ""

    @property
    def edit_mask_key(self) -> str:
        """Storage key of an inpainting's mask ("" when there is none)."""
        sha = (self.edit or {}).get("mask_sha256") or ""
        return mask_storage_key(sha) if sha else ""

    @property
    def model_label(self) -> str:
        """What made it: the model version's name, or for an external image the ``model`` its import named
        (``external`` when none)."""
        if self.origin == ImageOrigin.EXTERNAL:
            return str((self.external_metadata or {}).get("model") or "external")
        return self.model_version.name if self.model_version is not None else ""


__all__ = ["ACTIVE_STATUSES", "FINAL_STATUSES", "DType", "EditKind", "GeneratedImage", "GenerationJob", "ImageOrigin", "JobStatus",
           "ModelKind",
           "ModelVersion", "ProjectModelVersion", "Scheduler"]
