"""Reads of the generation app: model versions for the Select, jobs and images a user may see,
queue positions and the status payload the API and the progress partial show."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import F, Max, Prefetch, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from core import redact
from generation.models import GeneratedImage, GenerationJob, JobStatus, ModelVersion
from projects.access import projects_for_user, user_can
from projects.models import Project

User = AbstractBaseUser | AnonymousUser


def model_versions_enabled() -> QuerySet[ModelVersion]:
    """Enabled versions, for the template's model Select and the API."""
    return ModelVersion.objects.filter(enabled=True).select_related("parent").order_by("name")


def model_version_choices() -> list[tuple[int, str]]:
    """``(id, name)`` pairs of the enabled versions, ready for a form's ChoiceField."""
    return list(model_versions_enabled().values_list("pk", "name"))


def model_versions_to_preload(*, limit: int) -> list[ModelVersion]:
    """The enabled versions a gpu worker loads when it starts: those a project offers, the most recently
    asked for first (then the newest), one per base pipeline (a LoRA version shares its root's), at most
    ``limit`` pipelines. Two queries."""
    offered = (ModelVersion.objects.filter(enabled=True, project_offers__isnull=False).distinct()
               .select_related("parent").annotate(last_job=Max("jobs__created_at"))
               .order_by(F("last_job").desc(nulls_last=True), "-pk"))
    chosen: list[ModelVersion] = []
    roots: set[int] = set()
    for version in offered:
        root = version
        while root.parent_id is not None:
            root = root.parent  # type: ignore[assignment]
        if root.pk in roots:
            continue
        roots.add(root.pk)
        chosen.append(version)
        if len(chosen) >= limit:
            break
    return chosen


def project_model_versions(*, project: Project) -> QuerySet[ModelVersion]:
    """The enabled versions ``project`` offers to its annotators, by name."""
    return ModelVersion.objects.filter(project_offers__project=project, enabled=True).order_by("name")


def project_model_version_ids(*, project: Project) -> set[int]:
    """Every version ``project`` offers (enabled or not)."""
    return set(project.model_version_offers.values_list("model_version_id", flat=True))


def _visible_jobs(user: User) -> QuerySet[GenerationJob]:
    if not user.is_authenticated:
        return GenerationJob.objects.none()
    if getattr(user, "is_superuser", False):
        return GenerationJob.objects.all()
    visible = projects_for_user(user=user, include_archived=True)
    return GenerationJob.objects.filter(Q(created_by=user) | Q(project__in=visible.values("pk")))


def jobs_for_user(*, user: User, project: Project | None = None) -> QuerySet[GenerationJob]:
    """Jobs the user asked for, or that belong to a project they are a member of."""
    queryset = _visible_jobs(user)
    if project is not None:
        queryset = queryset.filter(project=project)
    return queryset.select_related("model_version", "project", "created_by").prefetch_related(
        Prefetch("images", queryset=GeneratedImage.objects.order_by("index"))
    )


def job_for_user(*, user: User, job_id: int) -> GenerationJob:
    """One job the user may see; ``GenerationJob.DoesNotExist`` otherwise (never reveals others')."""
    job = jobs_for_user(user=user).get(pk=job_id)
    if job.project is not None and job.created_by_id != user.pk and not user_can(
        user=user, action="view", project=job.project
    ):
        raise GenerationJob.DoesNotExist
    return job


def image_for_user(*, user: User, image_id: Any) -> GeneratedImage:
    """An image the user may see: they asked for it, or may view its job's project (for an imported image,
    the project it was imported into)."""
    image = GeneratedImage.objects.select_related("job__project", "project").get(pk=image_id)
    if not user.is_authenticated:
        raise GeneratedImage.DoesNotExist
    if getattr(user, "is_superuser", False):
        return image
    job = image.job
    if job is not None and job.created_by_id == user.pk:
        return image
    project = job.project if job is not None else image.project
    if project is not None and user_can(user=user, action="view", project=project):
        return image
    raise GeneratedImage.DoesNotExist


def images_for_user(*, user: User, image_ids: Iterable[Any]) -> dict[str, GeneratedImage]:
    """The images among ``image_ids`` that the user may see (as :func:`image_for_user` decides), by id, in one
    query however many there are. Ids that are not UUIDs, and images the user may not see, are left out."""
    wanted: list[str] = []
    for image_id in image_ids:
        try:
            wanted.append(str(uuid.UUID(str(image_id))))
        except ValueError:
            continue
    if not wanted or not user.is_authenticated:
        return {}
    images = GeneratedImage.objects.filter(pk__in=wanted, job__in=_visible_jobs(user)).select_related("job")
    return {str(image.pk): image for image in images}


def image_url(image: GeneratedImage) -> str:
    """The permission-checked URL of a stored image (``/generation/images/<id>.png``)."""
    return reverse("generation:image", args=[image.pk])


def image_edit_info(image: GeneratedImage) -> dict[str, Any]:
    """An edited image's provenance for the UI and the API: kind, source and mask sha256, storage keys and
    permission-checked URLs, strength and outpaint box; {} for a text-to-image or imported image."""
    edit = dict(image.edit or {})
    if not edit.get("kind"):
        return {}
    edit["source_url"] = reverse("generation:image_edit_source", args=[image.pk])
    edit["mask_url"] = reverse("generation:image_edit_mask", args=[image.pk]) if edit.get("mask_sha256") else ""
    return edit


def next_queued_job_id(*, model_version_id: int) -> int | None:
    """The oldest queued job of a model version (a worker that has it loaded takes it next)."""
    return (
        GenerationJob.objects.filter(model_version_id=model_version_id, status=JobStatus.QUEUED)
        .order_by("created_at", "pk")
        .values_list("pk", flat=True)
        .first()
    )


def queue_position(job: GenerationJob) -> int:
    """How many queued jobs are ahead of ``job`` (0 when it runs or is next); -1 once it has ended."""
    if job.status == JobStatus.RUNNING:
        return 0
    if job.status != JobStatus.QUEUED:
        return -1
    return GenerationJob.objects.filter(status=JobStatus.QUEUED, pk__lt=job.pk).count()


# How often a page polls a running job's progress: quickly while it is young (most jobs of a warm worker end
# within a second or two, and each poll that finds it done saves the rest of the interval), then calmly.
POLL_FAST_MS, POLL_SLOW_MS, POLL_FAST_FOR_S = 200, 1000, 20


def poll_interval_ms(job: GenerationJob) -> int:
    """Milliseconds until a page should ask for ``job``'s progress again."""
    age = (timezone.now() - job.created_at).total_seconds()
    return POLL_FAST_MS if age < POLL_FAST_FOR_S else POLL_SLOW_MS


def job_status(job: GenerationJob) -> dict[str, Any]:
    """The JSON-ready status of a job (API payload and progress partial context)."""
    images = sorted(job.images.all(), key=lambda image: image.index)
    return {
        "id": job.pk,
        "status": job.status,
        "finished": job.is_finished,
        "progress": round(job.progress, 4),
        "queue_position": queue_position(job),
        "attempts": job.attempts,
        "error": redact.hide_text(job.error),  # annotators see it (the Generate button): no server paths
        "prompt": job.prompt,
        "model_version": job.model_version.name,
        "project": job.project_id,
        "num_images": job.num_images,
        "seeds": job.seeds,
        "params": job.params,
        "edit_kind": job.edit_kind,
        "edit": job.edit,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "images": [
            {
                "id": str(image.pk),
                "index": image.index,
                "url": image_url(image),
                "seed": image.seed,
                "sha256": image.sha256,
                "width": image.width,
                "height": image.height,
                "params": image.params,
                "model_version": job.model_version.name,
                "generation_seconds": round(image.generation_seconds, 4),
                "batch_size": image.batch_size,
                "runtime": image.runtime,
                "edit": image_edit_info(image),
            }
            for image in images
        ],
    }
