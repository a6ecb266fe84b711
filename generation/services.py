"""Every write of the generation app: model versions, jobs (create, claim, heartbeat, finish, fail,
release, reap, cancel) and stored images.

The job life cycle is every background job's (:mod:`core.jobs`): ``queued`` -> ``running`` (claimed
under a lease token, possibly together with other queued jobs of the same model version and parameters)
-> ``succeeded`` / ``failed``, or back to ``queued`` when the lease expires (the reaper) or storage is
unavailable (a release), until ``max_attempts`` claims have been used up. Every write of the worker
names its lease token, so a worker whose jobs were taken back writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from core import jobs
from core.audit import audit_record
from core.exceptions import ApplicationError, PermissionDeniedError
from core.locks import lock_objects
from core.models import JobPhase
from core.tasks import enqueue_on_commit
from generation import registry
from generation.editing import (
    EditInputError,
    EditLimits,
    EditRequest,
    PreparedEdit,
    edit_prepare,
    mask_storage_key,
    source_storage_key,
)
from generation.inference import MAX_SEED, GenerationParams, draw_seed, sha256_hex
from generation.models import (
    ACTIVE_STATUSES,
    GeneratedImage,
    GenerationJob,
    JobStatus,
    ModelKind,
    ModelVersion,
    ProjectModelVersion,
)
from projects import roles
from projects.access import project_check
from projects.models import Project

logger = logging.getLogger(__name__)

_PARAM_FIELDS = tuple(f.name for f in fields(GenerationParams))
PARAM_FIELDS = _PARAM_FIELDS  # what a job's params (and a project's generation settings) may override

# Storage writes are retried in place this many times, sleeping base * 2**n seconds in between.
STORAGE_TRIES = 4
STORAGE_BACKOFF_S = 0.25


class RateLimitedError(ApplicationError):
    """Too many generation requests; ``retry_after`` says when the next one may succeed (seconds)."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, field="rate", extra={"retry_after": retry_after})
        self.retry_after = retry_after


class TransientStorageError(Exception):
    """Media storage failed repeatedly; the job goes back to the queue and the task retries later."""


# The job's lease was taken back (reaped or cancelled) while this worker was running it.
LeaseLost = jobs.LeaseLost


# Storage errors worth retrying: the filesystem's, and S3's (botocore ships with django-storages[s3]).
TRANSIENT_STORAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, BotoCoreError, ClientError)
RUN_GENERATION = "generation.tasks.run_generation"


def params_hash(params: GenerationParams, edit: dict[str, Any] | None = None) -> str:
    """Stable hash of the parameters (and of an edit's provenance: kind, source, mask, strength, box): jobs
    with equal model version and hash are coalesced, so edit jobs only with the very same edit."""
    payload: dict[str, Any] = params.to_dict()
    if edit:
        payload = {"params": payload, "edit": edit}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --- image editing -----------------------------------------------------------------------------------


def edit_limits_for(model_version: ModelVersion) -> EditLimits:
    """What ``model_version`` accepts for image-editing jobs (from settings; the same for every version now)."""
    return EditLimits(
        max_upload_bytes=settings.GENERATION_EDIT_MAX_UPLOAD_BYTES,
        max_source_side=settings.GENERATION_MAX_IMAGE_SIDE,
        outpaint_max_per_side=settings.GENERATION_EDIT_OUTPAINT_MAX_PER_SIDE,
        strength_default=min(100, settings.GENERATION_EDIT_STRENGTH_DEFAULT_PERCENT) / 100,
    )


def edit_limits(model_version: ModelVersion) -> dict[str, Any]:
    """The limits the UI shows and checks before uploading (``EditLimits.as_dict``): max_upload_bytes,
    max_source_side, outpaint_max_per_side, outpaint_multiple, strength_default, kinds, formats."""
    return edit_limits_for(model_version).as_dict()


def edit_validate(*, edit: EditRequest, model_version: ModelVersion, steps: int | None = None) -> PreparedEdit:
    """Check and normalise ``edit`` for ``model_version`` without storing anything; ``ApplicationError``
    with field source_image, mask, strength or outpaint says what is wrong."""
    try:
        return edit_prepare(edit, edit_limits_for(model_version), steps=steps)
    except EditInputError as exc:
        raise ApplicationError(exc.message, field=exc.field) from None


def _store_content_keyed(key: str, data: bytes) -> None:
    """Store ``data`` under its content key unless it is there already (same key, same bytes)."""
    if not default_storage.exists(key):
        _save_file(key, data)


def edit_files_store(prepared: PreparedEdit) -> None:
    """Write a validated edit's source (and mask) under their content keys."""
    _store_content_keyed(source_storage_key(prepared.source_sha256), prepared.source_png)
    if prepared.mask_png is not None:
        _store_content_keyed(mask_storage_key(prepared.mask_sha256), prepared.mask_png)


# --- model versions ----------------------------------------------------------------------------------


@transaction.atomic
def model_version_register(
    *,
    name: str,
    source: str = "",
    parent: ModelVersion | None = None,
    lora_path: str = "",
    lora_scale: float = 1.0,
    dtype: str = "float16",
    scheduler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    width: int | None = None,
    height: int | None = None,
    negative_prompt: str | None = None,
    enabled: bool = True,
    description: str = "",
    created_by: AbstractBaseUser | None = None,
    update: bool = False,
) -> ModelVersion:
    """Create (or with ``update=True`` replace the settings of) the model version called ``name``.

    A base version names ``source`` (a diffusers directory or hub id); a LoRA version names ``parent``
    and ``lora_path`` and inherits the parent's dtype. The generation settings not given (None) are the
    existing version's when updating, else a LoRA version's parent's (an adapter on a 64-px model generates
    at 64 px) and a base version's ``GenerationParams`` defaults. Whether the weights load is checked by the
    ``register_model_version`` command, not here (that needs the device).
    """
    name = name.strip()
    if not name or len(name) > 100 or not all(c.isalnum() or c in "-_." for c in name):
        raise ApplicationError("A model version name is 1-100 letters, digits, '-', '_' or '.'.", field="name")
    existing = ModelVersion.objects.select_for_update().filter(name=name).first()
    if existing is not None and not update:
        raise ApplicationError(f"A model version named {name!r} exists already.", field="name")
    if parent is not None:
        if not lora_path:
            raise ApplicationError("A LoRA version needs the path of its adapter weights.", field="lora_path")
        if source:
            raise ApplicationError("A LoRA version takes its source from its parent.", field="source")
        dtype = _root(parent).dtype
    elif not source:
        raise ApplicationError("A base version needs a source: a local path or a hub id.", field="source")
    elif lora_path:
        raise ApplicationError("LoRA weights need a parent version.", field="parent")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ApplicationError(f"Unknown dtype {dtype!r}.", field="dtype")
    given = {"scheduler": scheduler, "steps": steps, "guidance": guidance, "width": width, "height": height,
             "negative_prompt": negative_prompt}
    like = existing if existing is not None else parent
    inherited = like.default_params().to_dict() if like is not None else GenerationParams().to_dict()
    defaults = _validated_params({key: inherited[key] if value is None else value for key, value in given.items()})
    if not 0 <= lora_scale <= 10:
        raise ApplicationError("lora_scale must be in [0, 10].", field="lora_scale")
    values: dict[str, Any] = {
        "kind": ModelKind.LORA if parent is not None else ModelKind.BASE,
        "source": source if parent is None else "",
        "parent": parent,
        "lora_path": lora_path,
        "lora_scale": lora_scale,
        "dtype": dtype,
        "default_scheduler": defaults.scheduler,
        "default_steps": defaults.steps,
        "default_guidance": defaults.guidance,
        "default_width": defaults.width,
        "default_height": defaults.height,
        "default_negative_prompt": defaults.negative_prompt,
        "enabled": enabled,
        "description": description,
    }
    if existing is None:
        version = ModelVersion.objects.create(name=name, created_by=created_by, **values)
        audit_record(event="model_version.registered", instance=version, actor=created_by, project_id=None,
                     details={"kind": version.kind, "parent": parent.name if parent is not None else None})
        return version
    if parent is not None and parent.pk == existing.pk:
        raise ApplicationError("A version cannot be its own parent.", field="parent")
    for key, value in values.items():
        setattr(existing, key, value)
    existing.save()
    return existing


@transaction.atomic
def model_version_set_enabled(*, version: ModelVersion, enabled: bool,
                              by: AbstractBaseUser | None = None) -> ModelVersion:
    before = version.enabled
    version.enabled = enabled
    version.save(update_fields=["enabled", "updated_at"])
    if before != enabled:
        audit_record(event="model_version.enabled" if enabled else "model_version.disabled", instance=version,
                     actor=by, project_id=None, changes={"enabled": [before, enabled]})
    return version


@transaction.atomic
def project_model_versions_set(*, project: Project, version_ids: list[int]) -> list[ModelVersion]:
    """Offer exactly these enabled versions in ``project`` (the Generate button's choices)."""
    wanted = set(version_ids)
    versions = list(ModelVersion.objects.filter(pk__in=wanted, enabled=True))
    if len(versions) != len(wanted):
        raise ApplicationError("Unknown or disabled model version.", field="model_versions")
    ProjectModelVersion.objects.filter(project=project).exclude(model_version_id__in=wanted).delete()
    have = set(ProjectModelVersion.objects.filter(project=project).values_list("model_version_id", flat=True))
    ProjectModelVersion.objects.bulk_create(
        ProjectModelVersion(project=project, model_version=version) for version in versions if version.pk not in have
    )
    return versions


@transaction.atomic
def project_model_version_offer_beside(*, project: Project, version: ModelVersion, beside: ModelVersion) -> bool:
    """Offer ``version`` in ``project`` too when the project offers ``beside`` (a fine-tune's start
    version); returns whether it does now."""
    if not ProjectModelVersion.objects.filter(project=project, model_version=beside).exists():
        return False
    ProjectModelVersion.objects.get_or_create(project=project, model_version=version)
    return True


def _root(version: ModelVersion) -> ModelVersion:
    while version.parent_id is not None:
        version = version.parent  # type: ignore[assignment]
    return version


# --- creating and cancelling jobs -------------------------------------------------------------------


def _validated_params(values: dict[str, Any]) -> GenerationParams:
    try:
        params = GenerationParams.from_dict(values)
    except ValueError as exc:
        message = str(exc)
        first = message.split(" ", 1)[0].rstrip(":")
        raise ApplicationError(
            message[0].upper() + message[1:] + ".", field=first if first in _PARAM_FIELDS else "params"
        ) from None
    limit = settings.GENERATION_MAX_IMAGE_SIDE
    for side in ("width", "height"):
        if getattr(params, side) > limit:
            raise ApplicationError(f"{side.capitalize()} must be at most {limit} pixels.", field=side)
    return params


def generation_settings_validate(values: Any, *, field: str = "generation_settings") -> dict[str, Any]:
    """A project's overrides for every Generate, held to the limits a job is (``_validated_params``: the
    worker's ``GenerationParams`` ranges and ``GENERATION_MAX_IMAGE_SIDE``); errors name
    ``generation_settings.<key>``."""
    if not isinstance(values, dict):
        raise ApplicationError("Generation settings must be an object.", field=field)
    unknown = sorted(set(values) - set(_PARAM_FIELDS))
    if unknown:
        raise ApplicationError(f"Unknown generation setting {unknown[0]!r}; expected some of "
                               f"{', '.join(_PARAM_FIELDS)}.", field=f"{field}.{unknown[0]}")
    try:
        _validated_params({**GenerationParams().to_dict(), **values})
    except ApplicationError as exc:
        raise ApplicationError(exc.message, field=f"{field}.{exc.field}") from None
    return dict(values)


def _seeds(seeds: list[int] | None, num_images: int) -> list[int]:
    if seeds is None:
        return [draw_seed() for _ in range(num_images)]
    if len(seeds) != num_images:
        raise ApplicationError(f"Give one seed per image ({num_images}), not {len(seeds)}.", field="seeds")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ApplicationError(f"Seeds are integers in [0, {MAX_SEED}]; got {seed!r}.", field="seeds")
    return list(seeds)


@transaction.atomic
def generation_job_create(
    *,
    user: AbstractBaseUser,
    model_version: ModelVersion,
    prompt: str,
    num_images: int | None = None,
    seeds: list[int] | None = None,
    params: dict[str, Any] | None = None,
    project: Project | None = None,
    idempotency_key: str = "",
    edit: EditRequest | None = None,
) -> GenerationJob:
    """Queue a generation job and enqueue its task once the transaction commits.

    ``params`` overrides the model version's defaults (scheduler, steps, guidance, width, height,
    negative_prompt). ``seeds`` gives one seed per image; missing seeds are drawn and stored. A
    repeated ``idempotency_key`` returns the job it created the first time.

    With ``edit`` the job edits an image (img2img, inpaint or outpaint): the source and mask are validated
    (``ApplicationError`` with field source_image, mask, strength or outpaint, and nothing stored), stored
    under their content keys, and the output size is the source's (plus an outpaint's box), whatever
    ``params`` says about width and height.
    """
    if project is not None:
        project_check(user=user, project=project, action="view")
        if project.is_archived:
            raise ApplicationError("This project is archived.", field="project")
    elif not (getattr(user, "is_superuser", False) or user.has_perm(roles.TRAIN)):
        raise PermissionDeniedError("Generating outside a project needs the ML engineer role.")
    if len(idempotency_key) > 100:
        raise ApplicationError("An idempotency key is at most 100 characters.", field="idempotency_key")

    # One user's creates run one at a time, so the limits below count exactly.
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()
    if idempotency_key:
        earlier = GenerationJob.objects.filter(created_by=user, idempotency_key=idempotency_key).first()
        if earlier is not None:
            return earlier

    if not model_version.enabled:
        raise ApplicationError(f"Model version {model_version.name!r} is disabled.", field="model_version")
    prompt = (prompt or "").strip()
    if not prompt:
        raise ApplicationError("Write a prompt.", field="prompt")
    if len(prompt) > settings.GENERATION_MAX_PROMPT_CHARS:
        raise ApplicationError(
            f"A prompt is at most {settings.GENERATION_MAX_PROMPT_CHARS} characters (this one has {len(prompt)}).",
            field="prompt",
        )
    if num_images is None:
        num_images = len(seeds) if seeds else 1
    cap = settings.GENERATION_MAX_IMAGES_PER_JOB
    if isinstance(num_images, bool) or not isinstance(num_images, int) or not 1 <= num_images <= cap:
        raise ApplicationError(f"Ask for between 1 and {cap} images per request.", field="num_images")
    overrides = dict(params or {})
    unknown = sorted(set(overrides) - set(_PARAM_FIELDS))
    if unknown:
        raise ApplicationError(f"Unknown parameter {unknown[0]!r}.", field=unknown[0])
    resolved = _validated_params({**model_version.default_params().to_dict(), **overrides})
    prepared: PreparedEdit | None = None
    if edit is not None:
        prepared = edit_validate(edit=edit, model_version=model_version, steps=resolved.steps)
        resolved = _validated_params({**resolved.to_dict(), "width": prepared.width, "height": prepared.height})
    seed_list = _seeds(seeds, num_images)

    now = timezone.now()
    recent = GenerationJob.objects.filter(created_by=user, created_at__gte=now - timedelta(minutes=1))
    limit = settings.GENERATION_RATE_LIMIT_PER_MINUTE
    if recent.count() >= limit:
        oldest = recent.order_by("created_at").values_list("created_at", flat=True).first() or now
        retry_after = max(1, int((oldest + timedelta(minutes=1) - now).total_seconds()) + 1)
        raise RateLimitedError(
            f"You may start at most {limit} generation requests a minute; try again in {retry_after} s.",
            retry_after=retry_after,
        )
    active_cap = settings.GENERATION_MAX_QUEUED_JOBS_PER_USER
    if GenerationJob.objects.filter(created_by=user, status__in=ACTIVE_STATUSES).count() >= active_cap:
        raise ApplicationError(
            f"You have {active_cap} generation requests waiting already; wait until one finishes.",
            field="queue",
        )

    edit_record = prepared.provenance() if prepared is not None else {}
    if prepared is not None:
        edit_files_store(prepared)
    job = GenerationJob.objects.create(
        project=project,
        created_by=user,
        model_version=model_version,
        prompt=prompt,
        params=resolved.to_dict(),
        params_hash=params_hash(resolved, edit_record),
        edit_kind=prepared.kind if prepared is not None else "",
        edit=edit_record,
        num_images=num_images,
        seeds=seed_list,
        max_attempts=settings.GENERATION_MAX_ATTEMPTS,
        idempotency_key=idempotency_key,
    )
    enqueue_on_commit(RUN_GENERATION, job.pk)
    return job


@transaction.atomic
def generation_job_cancel(*, job: GenerationJob, user: AbstractBaseUser | AnonymousUser) -> GenerationJob:
    """Cancel a job that has not finished; a worker running it stops at its next progress write."""
    [job] = lock_objects(GenerationJob.objects.filter(pk=job.pk))
    if job.created_by_id != user.pk and not getattr(user, "is_superuser", False):
        raise PermissionDeniedError("Only the person who asked for these images may cancel them.")
    if job.is_finished:
        raise ApplicationError(f"This job has {job.status} already.", field="status")
    return jobs.job_cancel(GenerationJob, job.pk)


# --- the worker's side: claim, heartbeat, store, finish ---------------------------------------------


@dataclass(frozen=True)
class Claim:
    token: uuid.UUID
    jobs: list[GenerationJob]
    params: GenerationParams
    # job id -> indices that still lack an image
    missing: dict[int, list[int]]
    # The largest padded batch shape the claimed jobs' stored images were rendered in (0 when none is stored):
    # a re-render of a lost image pads to it, so that it gets the bytes of the batch it was first made in.
    stored_batch_shape: int = 0


def _existing_indices(job_ids: list[int]) -> dict[int, set[int]]:
    found: dict[int, set[int]] = {pk: set() for pk in job_ids}
    for job_id, index in GeneratedImage.objects.filter(job_id__in=job_ids).values_list("job_id", "index"):
        found[job_id].add(index)
    return found


def _delete_orphans(job: GenerationJob) -> int:
    """Delete files under the job's storage prefix that no image row points at (a crash's leftovers)."""
    try:
        _, files = default_storage.listdir(job.storage_prefix)
    except FileNotFoundError:
        return 0
    keep = set(GeneratedImage.objects.filter(job=job).values_list("storage_key", flat=True))
    deleted = 0
    for filename in files:
        key = f"{job.storage_prefix}{filename}"
        if key not in keep:
            default_storage.delete(key)
            deleted += 1
    if deleted:
        logger.info("job %s: deleted %d orphan file(s)", job.pk, deleted)
    return deleted


@transaction.atomic
def generation_jobs_claim(*, job_id: int, worker: str, batch_limit: int) -> Claim | None:
    """Claim ``job_id`` plus queued jobs with the same model version and parameters, up to
    ``batch_limit`` missing images in all, under one lease; None when the job is not queued (done,
    cancelled, or claimed by someone else)."""
    lead = (
        GenerationJob.objects.select_for_update(skip_locked=True)
        .filter(pk=job_id, status=JobStatus.QUEUED)
        .first()
    )
    if lead is None:
        return None
    existing = _existing_indices([lead.pk])
    candidates = [lead]
    if lead.num_images - len(existing[lead.pk]) < batch_limit:  # room left in the batch: look for companions
        # Companions are locked in primary-key order; rows another claimer holds are skipped, not waited on.
        companions = list(
            GenerationJob.objects.filter(
                status=JobStatus.QUEUED, model_version_id=lead.model_version_id, params_hash=lead.params_hash
            )
            .exclude(pk=lead.pk)
            .select_for_update(skip_locked=True)
            .order_by("pk")[: 4 * batch_limit]
        )
        existing.update(_existing_indices([job.pk for job in companions]))
        candidates.extend(companions)
    claimed: list[GenerationJob] = []
    missing: dict[int, list[int]] = {}
    total = 0
    for job in candidates:
        todo = [i for i in range(job.num_images) if i not in existing[job.pk]]
        if claimed and total + len(todo) > batch_limit:
            continue
        claimed.append(job)
        missing[job.pk] = todo
        total += len(todo)
    token = jobs.jobs_claim_rows(GenerationJob, [job.pk for job in claimed], lease_seconds=settings.GENERATION_LEASE_SECONDS,
                                 worker=worker, phase=JobPhase.RENDERING, batch_images=min(total, 32767))
    claimed_jobs = list(GenerationJob.objects.filter(pk__in=missing).select_related("model_version").order_by("pk"))
    for job in claimed_jobs:
        _delete_orphans(job)
    return Claim(token=token, jobs=claimed_jobs, params=lead.generation_params(), missing=missing,
                 stored_batch_shape=_stored_batch_shape([job.pk for job in claimed_jobs if existing[job.pk]]))


def _stored_batch_shape(job_ids: list[int]) -> int:
    """The largest ``runtime["batch_shape"]`` among the stored images of ``job_ids`` (0 for none)."""
    if not job_ids:
        return 0
    shapes = GeneratedImage.objects.filter(job_id__in=job_ids).values_list("runtime__batch_shape", flat=True)
    return max((int(shape) for shape in shapes if isinstance(shape, int)), default=0)


def generation_jobs_heartbeat(*, token: uuid.UUID, progress: float) -> bool:
    """Record progress and renew the lease of every job under ``token``; False when none is ours any more."""
    return jobs.jobs_heartbeat_token(GenerationJob, token, lease_seconds=settings.GENERATION_LEASE_SECONDS,
                                     progress=max(0.0, min(1.0, progress))) > 0


def _save_file(key: str, data: bytes) -> None:
    """Write ``data`` under exactly ``key`` (overwriting), retrying transient failures with backoff."""
    transient = TRANSIENT_STORAGE_ERRORS
    for attempt in range(STORAGE_TRIES):
        try:
            if default_storage.exists(key):
                default_storage.delete(key)
            name = default_storage.save(key, ContentFile(data))
            if name != key:
                default_storage.delete(name)
                raise OSError(f"storage saved {key!r} as {name!r}")
            return
        except transient as exc:
            if attempt == STORAGE_TRIES - 1:
                raise TransientStorageError(f"Could not store {key}: {exc}") from exc
            logger.warning("storing %s failed (%s); retrying", key, exc)
            time.sleep(STORAGE_BACKOFF_S * 2**attempt)


@dataclass(frozen=True)
class ImageToStore:
    """One rendered image of a claimed job, as the worker hands it over."""

    job: GenerationJob
    index: int
    seed: int
    png: bytes
    width: int
    height: int
    generation_seconds: float
    batch_size: int


def generated_images_store(*, token: uuid.UUID, images: list[ImageToStore], runtime: dict[str, str],
                           finish: bool = False) -> list[GeneratedImage]:
    """Write each file under its deterministic key, then all their rows in one transaction.

    The rows are written only while every job involved is still leased to ``token`` (else
    ``LeaseLost``, and nothing is written). A row that already exists (a retried chunk) is kept as
    it is. A crash between the files and the rows leaves orphan files that the next claim deletes
    (or overwrites). With ``finish`` (the claim's last chunk), the same transaction then does what
    :func:`generation_jobs_finish` does, which saves the worker a transaction per claim.
    """
    keys = [item.job.storage_key(item.index, item.seed) for item in images]
    for key, item in zip(keys, images, strict=True):
        _save_file(key, item.png)
    rows = [
        GeneratedImage(
            job=item.job, index=item.index, model_version_id=item.job.model_version_id, prompt=item.job.prompt,
            seed=item.seed, params=item.job.params, runtime=runtime, storage_key=key, sha256=sha256_hex(item.png),
            width=item.width, height=item.height, size_bytes=len(item.png),
            generation_seconds=item.generation_seconds, batch_size=item.batch_size,
            edit=item.job.edit if item.job.edit_kind else {},
        )
        for key, item in zip(keys, images, strict=True)
    ]
    job_ids = {item.job.pk for item in images}
    if not rows and not finish:
        return []
    with transaction.atomic():
        leased = GenerationJob.objects.filter(lease_token=token, status=JobStatus.RUNNING)
        held = lock_objects(leased if finish else leased.filter(pk__in=job_ids))
        lost = job_ids - {job.pk for job in held}
        if lost:
            raise LeaseLost(f"job(s) {sorted(lost)} are no longer leased to {token}")
        if rows:
            GeneratedImage.objects.bulk_create(rows, ignore_conflicts=True)
        if finish:
            _finish_locked(held)
    return rows


@transaction.atomic
def generation_jobs_finish(*, token: uuid.UUID) -> list[GenerationJob]:
    """Mark the jobs under ``token`` succeeded (each has all its images by now)."""
    jobs = lock_objects(GenerationJob.objects.filter(lease_token=token, status=JobStatus.RUNNING))
    _finish_locked(jobs)
    return jobs


def _finish_locked(jobs: list[GenerationJob]) -> None:
    """Succeed the locked ``jobs`` that have all their images (one UPDATE); put any other back in the queue."""
    counts = dict(
        GeneratedImage.objects.filter(job__in=jobs).values("job_id").annotate(n=Count("pk")).values_list("job_id", "n")
    )
    now = timezone.now()
    done = [job for job in jobs if counts.get(job.pk, 0) >= job.num_images]
    GenerationJob.objects.filter(pk__in=[job.pk for job in done]).update(
        status=JobStatus.SUCCEEDED, phase=JobPhase.DONE, progress=1.0, finished_at=now, lease_expires_at=None,
        updated_at=now)
    for job in done:
        job.status, job.phase, job.progress, job.finished_at, job.lease_expires_at, job.updated_at = (
            JobStatus.SUCCEEDED, JobPhase.DONE, 1.0, now, None, now)
    registry.jobs_succeeded(done)  # e.g. annotate attaches a task's candidates, in this transaction
    for job in jobs:
        if job not in done:  # cannot happen unless rows were deleted mid-run; try again
            job.status, job.phase, job.lease_token, job.lease_expires_at = JobStatus.QUEUED, JobPhase.QUEUED, None, None
            job.save(update_fields=["status", "phase", "lease_token", "lease_expires_at", "updated_at"])
            _enqueue_on_commit([job.pk])


@transaction.atomic
def generation_jobs_fail(*, token: uuid.UUID, error: str) -> list[GenerationJob]:
    """Mark the jobs under ``token`` failed with a readable reason (pipeline error, out of memory)."""
    failed = jobs.jobs_fail_token(GenerationJob, token, error[:2000])
    for job in failed:
        _delete_orphans(job)
    return failed


@transaction.atomic
def generation_job_fail_unclaimed(*, job_id: int, error: str) -> None:
    """Fail a queued job that cannot start at all (its model does not load)."""
    if jobs.job_fail_unclaimed(GenerationJob, job_id, error[:2000]):
        _delete_orphans(GenerationJob.objects.get(pk=job_id))


@transaction.atomic
def generation_jobs_release(*, token: uuid.UUID, lead_job_id: int) -> list[GenerationJob]:
    """Put the jobs under ``token`` back in the queue (storage was unavailable); stored images stay.

    The lead job's task retries itself later; the coalesced companions get tasks of their own.
    """
    released = lock_objects(GenerationJob.objects.filter(lease_token=token, status=JobStatus.RUNNING))
    for job in released:
        job.status, job.phase, job.lease_token, job.lease_expires_at = JobStatus.QUEUED, JobPhase.QUEUED, None, None
        job.save(update_fields=["status", "phase", "lease_token", "lease_expires_at", "updated_at"])
    _enqueue_on_commit([job.pk for job in released if job.pk != lead_job_id])
    return released


def _enqueue_on_commit(job_ids: list[int]) -> None:
    for job_id in job_ids:
        enqueue_on_commit(RUN_GENERATION, job_id)


def generation_jobs_reap_expired() -> int:
    """Re-queue running jobs whose lease expired (their worker died) or fail them after max_attempts."""
    return jobs.jobs_reap(GenerationJob, task_name=RUN_GENERATION, what="making these images",
                          on_fail=_delete_orphans)


__all__ = [
    "Claim",
    "LeaseLost",
    "RateLimitedError",
    "TransientStorageError",
    "ImageToStore",
    "edit_files_store",
    "edit_limits",
    "edit_limits_for",
    "edit_validate",
    "generated_images_store",
    "generation_job_cancel",
    "generation_job_create",
    "generation_job_fail_unclaimed",
    "generation_jobs_claim",
    "generation_jobs_fail",
    "generation_jobs_finish",
    "generation_jobs_heartbeat",
    "generation_jobs_reap_expired",
    "generation_jobs_release",
    "model_version_register",
    "model_version_set_enabled",
    "project_model_version_offer_beside",
    "project_model_versions_set",
    "params_hash",
]
