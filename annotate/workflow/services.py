"""Writes for the annotation workflow: project settings, prompt imports, tasks, annotations, review.

Every public function is keyword-only and runs in one transaction. The queue itself (handing
out, skipping, reaping leases) lives in :mod:`annotate.workflow.queue`.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import BooleanField, ExpressionWrapper, Max, Q
from django.utils import timezone

from annotate.builder import components as catalogue
from annotate.models import (
    Annotation,
    AnnotationStatus,
    AnnotationTask,
    AnnotationTemplateVersion,
    AssignmentStatus,
    ProjectWorkflow,
    Prompt,
    PromptSet,
    PromptSource,
    TaskAssignment,
    TaskGenerationJob,
    TaskImage,
    TaskOrder,
)
from annotate.workflow import prompt_import
from annotate.workflow.access import lease_known, workflow_of
from annotate.workflow.queue import assignment_release
from annotate.workflow.scoring import reward_scores
from annotate.workflow.selectors import components_of, ranking_component, task_image_ids
from core import rawsql
from core.audit import audit_record
from core.exceptions import ApplicationError
from core.locks import lock_ids
from core.parsing import check_length, parse_id
from generation.editing import EditRequest
from generation.models import GeneratedImage, GenerationJob, JobStatus
from generation.selectors import project_model_versions
from generation.services import (
    generation_job_create,
    generation_settings_validate,
    project_model_versions_set,
)
from projects.access import project_check
from projects.models import Project
from projects.services import project_update
from projects.webhooks.events import emit, has_subscribers_sql, subscribers, url_for

AMEND_WINDOW = timedelta(hours=24)
MAX_IDEMPOTENCY_KEY = 100
MAX_RATIONALE = 5000
RANDOM_KEY_MAX = 2**31 - 1


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- project settings -------------------------------------------------------------------------


def _workflow_locked(project: Project) -> ProjectWorkflow:
    """The project's workflow row, locked (created with the defaults when it has none yet)."""
    Project.objects.select_for_update().filter(pk=project.pk).first()  # serialises the first creation
    workflow, _ = ProjectWorkflow.objects.select_for_update().get_or_create(project=project)
    return workflow


# The workflow's limits (the API's schema and the settings form read them from here).
MAX_OVERLAP = 100  # annotators per task; also a CheckConstraint on ProjectWorkflow
OVERLAP_OUT_OF_RANGE = f"Overlap must be 1 to {MAX_OVERLAP} annotators per task."
MIN_LEASE_SECONDS = 10
MAX_LEASE_SECONDS = 7 * 24 * 3600


@transaction.atomic
def project_update_settings(
    *,
    project: Project,
    description: str | None = None,
    instructions: str | None = None,
    template_version: AnnotationTemplateVersion | None | str = "unchanged",
    images_per_task: int | None = None,
    overlap: int | None = None,
    task_order: str | None = None,
    gold_rate: float | None = None,
    lease_seconds: int | None = None,
    generation_settings: dict[str, Any] | None = None,
    model_version_ids: Sequence[int] | None = None,
    presort_reward_version_id: int | None | str = "unchanged",
    user: User | None = None,
) -> Project:
    """Change a project's workflow settings; ``None`` leaves a setting as it is.

    The workflow's own settings live in ``ProjectWorkflow``; the description is the project's, the
    offered model versions generation's (``generation.services.project_model_versions_set``) and the
    pre-sort reward model the reward layer's (:mod:`annotate.workflow.scoring`).
    ``presort_reward_version_id`` (``None`` turns pre-sorting off) must name a reward model ``user``
    may use (``user=None`` is trusted code); keeping the current one needs no right.
    """
    workflow = _workflow_locked(project)
    if presort_reward_version_id != "unchanged":
        reward_scores().presort_set(project=project, version_id=_presort_id(presort_reward_version_id), user=user)
    if description is not None:
        project = project_update(project=project, description=description)
    if instructions is not None:
        if len(instructions) > 20_000:
            raise ApplicationError("Instructions are at most 20,000 characters.", field="instructions")
        workflow.instructions = instructions
    if template_version != "unchanged":
        if template_version is not None:
            if not isinstance(template_version, AnnotationTemplateVersion):
                raise ApplicationError("Unknown template version.", field="template_version")
            if template_version.template.project_id != project.pk:  # as if it did not exist
                raise ApplicationError(f"No template version {template_version.pk} in this project.",
                                       field="template_version")
            if not template_version.is_published:
                raise ApplicationError("Only a published template version can be used.", field="template_version")
        workflow.template_version = template_version
    if images_per_task is not None:
        if not 1 <= images_per_task <= catalogue.MAX_IMAGES:
            raise ApplicationError(f"Images per task must be 1 to {catalogue.MAX_IMAGES}.", field="images_per_task")
        workflow.images_per_task = images_per_task
    overlap_changed = overlap is not None and overlap != workflow.overlap
    if overlap is not None:
        if not 1 <= overlap <= MAX_OVERLAP:
            raise ApplicationError(OVERLAP_OUT_OF_RANGE, field="overlap")
        workflow.overlap = overlap
    if task_order is not None:
        if task_order not in TaskOrder.values:
            raise ApplicationError(f"Task order must be one of {', '.join(TaskOrder.values)}.", field="task_order")
        workflow.task_order = task_order
    if gold_rate is not None:
        if not 0 <= gold_rate <= 1:
            raise ApplicationError("The gold rate is a share from 0 to 1.", field="gold_rate")
        workflow.gold_rate = gold_rate
    if lease_seconds is not None:
        if not MIN_LEASE_SECONDS <= lease_seconds <= MAX_LEASE_SECONDS:
            raise ApplicationError("A lease lasts 10 seconds to 7 days.", field="lease_seconds")
        workflow.lease_seconds = lease_seconds
    if generation_settings is not None:
        # The limits a generation job is held to, checked now rather than when an annotator clicks Generate.
        workflow.generation_settings = generation_settings_validate(generation_settings)
    workflow.save()
    if model_version_ids is not None:
        project_model_versions_set(project=project, version_ids=list(model_version_ids))
    if overlap_changed:
        AnnotationTask.objects.filter(project=project, is_gold=False).update(
            is_open=ExpressionWrapper(Q(taken_count__lt=workflow.overlap), output_field=BooleanField())
        )
    project.workflow = workflow  # type: ignore[attr-defined]
    return project


def _presort_id(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return parse_id(value, field="presort_reward_version")


# --- reward-model scores of task images -------------------------------------------------------


@transaction.atomic
def task_images_score_request(*, project: Project, user: User, reward_version_id: int,
                              task_ids: Sequence[int]) -> list[str]:
    """Queue scoring of the images of ``task_ids`` in ``project`` that ``reward_version_id`` has not
    scored yet; returns the queued image ids.

    ``user`` must review the project and may use the reward model (``reward``); the work is sent
    when the transaction commits (:mod:`annotate.workflow.scoring`).
    """
    project_check(user=user, project=project, action="review")
    image_ids = list(dict.fromkeys(str(pk) for pk in TaskImage.objects.filter(
        task__project=project, task_id__in=list(task_ids)).order_by("task_id", "position")
        .values_list("image_id", flat=True)))
    return reward_scores().request_scoring(user=user, version_id=reward_version_id, image_ids=image_ids)


# --- prompts and tasks ----------------------------------------------------------------------


class PromptImportError(ApplicationError):
    """The file has problems; nothing was imported. ``extra["errors"]`` lists them by line."""


@dataclass
class ImportReport:
    prompt_set: PromptSet
    created: int
    duplicates: list[prompt_import.Duplicate] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"prompt_set": self.prompt_set.pk, "created": self.created,
                "duplicates": [d.as_dict() for d in self.duplicates]}


def _next_positions(project: Project, count: int) -> list[int]:
    start = (AnnotationTask.objects.filter(project=project).aggregate(m=Max("position"))["m"] or 0) + 1
    return list(range(start, start + count))


@transaction.atomic
def prompt_set_import(
    *, project: Project, data: bytes, filename: str, created_by: User, fmt: str | None = None,
    name: str = "", limits: prompt_import.Limits | None = None, deduplicate: bool = False,
) -> ImportReport:
    """Import a prompt file: every prompt becomes a task; any error imports nothing.

    Repeated prompts are kept (two tasks may share a prompt). With ``deduplicate``, prompts repeated
    within the file or already in the project are reported in ``duplicates`` and skipped.
    """
    name_limit = PromptSet._meta.get_field("name").max_length or 200
    name = check_length((name or "").strip(), field="name", maximum=name_limit)
    set_name = name or (filename or "").strip()[:name_limit] or "prompts"  # a long file name is only a default
    fmt = fmt or prompt_import.detect_format(filename)
    if fmt is None:
        raise PromptImportError("Unknown file type; upload a .csv, .jsonl or .txt file.", field="file",
                                extra={"errors": [{"line": 0, "message": "unknown file type"}]})
    result = prompt_import.parse_prompt_file(data, fmt=fmt, limits=limits, deduplicate=deduplicate)
    if result.errors:
        first = result.errors[0]
        where = f"line {first.line}: " if first.line else ""
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise PromptImportError(f"{where}{first.message}{more}. Nothing was imported.", field="file",
                                extra={"errors": [e.as_dict() for e in result.errors]})
    # Serialise imports into one project so positions and the duplicate check stay exact.
    Project.objects.select_for_update().filter(pk=project.pk).first()
    hashes = {p.text: text_sha256(p.text) for p in result.prompts}
    existing = set(
        Prompt.objects.filter(project=project, text_sha256__in=list(hashes.values())).values_list(
            "text_sha256", flat=True)
    ) if deduplicate else set()
    duplicates = list(result.duplicates)
    fresh = []
    for parsed in result.prompts:
        if hashes[parsed.text] in existing:
            duplicates.append(prompt_import.Duplicate(parsed.line, parsed.text, None))
        else:
            fresh.append(parsed)
    duplicates.sort(key=lambda d: d.line)
    prompt_set = PromptSet.objects.create(
        project=project, name=set_name, source_format=fmt,
        prompt_count=len(fresh), duplicate_count=len(duplicates), created_by=created_by,
    )
    prompts = Prompt.objects.bulk_create(
        Prompt(project=project, prompt_set=prompt_set, text=p.text, text_sha256=hashes[p.text],
               negative_prompt=p.negative_prompt, seed=p.seed, tags=list(p.tags), metadata=p.metadata,
               source=PromptSource.IMPORT, created_by=created_by)
        for p in fresh
    )
    _tasks_for_prompts(project=project, prompts=prompts, created_by=created_by)
    return ImportReport(prompt_set=prompt_set, created=len(prompts), duplicates=duplicates)


def _tasks_for_prompts(*, project: Project, prompts: Sequence[Prompt], created_by: User | None) -> list[AnnotationTask]:
    rng = random.SystemRandom()
    positions = _next_positions(project, len(prompts))
    return AnnotationTask.objects.bulk_create(
        AnnotationTask(project=project, prompt=prompt, position=position, random_key=rng.randint(0, RANDOM_KEY_MAX),
                       created_by=created_by)
        for prompt, position in zip(prompts, positions, strict=True)
    )


def _check_images(*, project: Project, image_ids: Sequence[Any]) -> list[Any]:
    ids = [str(image_id) for image_id in image_ids]
    if len(set(ids)) != len(ids):
        raise ApplicationError("An image is listed twice.", field="images")
    if len(ids) > catalogue.MAX_IMAGES:
        raise ApplicationError(f"A task has at most {catalogue.MAX_IMAGES} images.", field="images")
    for position, image_id in enumerate(ids):
        try:  # checked before the query: a database error inside this transaction is never mistaken for bad input
            ids[position] = str(uuid.UUID(image_id))
        except ValueError:
            raise ApplicationError(f"Image id {image_id!r} (number {position + 1}) is not a UUID.",
                                   field="images") from None
    if len(set(ids)) != len(ids):
        raise ApplicationError("An image is listed twice.", field="images")
    found = {str(pk) for pk in GeneratedImage.objects.filter(pk__in=ids).filter(
        Q(job__project=project) | Q(job__isnull=False, job__project__isnull=True) | Q(project=project)
    ).values_list("pk", flat=True)}
    missing = [image_id for image_id in ids if image_id not in found]
    if missing:
        raise ApplicationError(f"Unknown image {missing[0]} (not an image of this project).", field="images")
    return ids


@transaction.atomic
def task_create(
    *, project: Project, prompt_text: str, created_by: User | None, image_ids: Sequence[Any] = (),
    negative_prompt: str = "", gold_ranking: list[list[str]] | None = None,
    source: str = PromptSource.API,
) -> AnnotationTask:
    """One task for one prompt (reusing the project's prompt of the same text), with its images."""
    text = prompt_import.normalize_prompt(prompt_text or "")
    if not text:
        raise ApplicationError("The prompt is empty.", field="prompt")
    if len(text) > prompt_import.MAX_PROMPT_CHARS:
        raise ApplicationError(f"A prompt is at most {prompt_import.MAX_PROMPT_CHARS} characters.", field="prompt")
    ids = _check_images(project=project, image_ids=image_ids)
    Project.objects.select_for_update().filter(pk=project.pk).first()
    digest = text_sha256(text)
    prompt = Prompt.objects.filter(project=project, text_sha256=digest).order_by("pk").first()
    if prompt is None:
        prompt = Prompt.objects.create(project=project, text_sha256=digest, text=text,
                                       negative_prompt=negative_prompt, source=source, created_by=created_by)
    (task,) = _tasks_for_prompts(project=project, prompts=[prompt], created_by=created_by)
    TaskImage.objects.bulk_create(TaskImage(task=task, image_id=image_id, position=i) for i, image_id in enumerate(ids))
    reward_scores().task_images_added(project=project, image_ids=ids)
    if gold_ranking is not None:
        task_set_gold(task=task, ranking=gold_ranking)
        task.refresh_from_db()
    return task


@transaction.atomic
def task_set_images(*, task: AnnotationTask, image_ids: Sequence[Any]) -> AnnotationTask:
    """Replace a task's candidate images (only before anyone has answered it)."""
    (task,) = lock_ids(AnnotationTask, [task.pk])
    if Annotation.objects.filter(task=task).exists():
        raise ApplicationError("The task already has answers; its images can no longer change.", field="images")
    ids = _check_images(project=task.project, image_ids=image_ids)
    TaskImage.objects.filter(task=task).delete()
    TaskImage.objects.bulk_create(TaskImage(task=task, image_id=image_id, position=i) for i, image_id in enumerate(ids))
    reward_scores().task_images_added(project=task.project, image_ids=ids)
    return task


@transaction.atomic
def task_set_gold(*, task: AnnotationTask, ranking: list[list[str]] | None) -> AnnotationTask:
    """Make a task a gold task with its known ranking (``None`` makes it a normal task again)."""
    (task,) = lock_ids(AnnotationTask, [task.pk])
    if ranking is None:
        task.is_gold, task.gold_ranking = False, None
    else:
        component = ranking_component(workflow_of(task.project).template_version)
        groups = _validate_ranking(component, task_image_ids(task_id=task.pk), ranking)
        task.is_gold, task.gold_ranking = True, groups
    # While a task is gold its hand-outs do not count towards the overlap, so ``taken_count`` no longer says
    # how many annotators hold or answered it: count them again (active leases plus submitted answers).
    task.taken_count = TaskAssignment.objects.filter(
        task=task, status__in=(AssignmentStatus.ACTIVE, AssignmentStatus.SUBMITTED)).count()
    task.is_open = task.taken_count < workflow_of(task.project).overlap
    task.save(update_fields=["is_gold", "gold_ranking", "taken_count", "is_open", "updated_at"])
    return task


@transaction.atomic
def task_create_typed(*, project: Project, user: User, prompt_text: str) -> TaskAssignment:
    """An annotator typed their own prompt (Prompt input component): it becomes a task, leased to them.

    Their current lease, if any, is released first (one active lease per annotator).
    """
    current = TaskAssignment.objects.filter(project=project, annotator=user, status=AssignmentStatus.ACTIVE).first()
    if current is not None:
        assignment_release(assignment=current)
    task = task_create(project=project, prompt_text=prompt_text, created_by=user, source=PromptSource.ANNOTATOR)
    workflow = workflow_of(project)
    taken = 1
    AnnotationTask.objects.filter(pk=task.pk).update(taken_count=taken, is_open=taken < workflow.overlap)
    return TaskAssignment.objects.create(
        task=task, project=project, annotator=user, template_version=workflow.template_version,
        lease_expires_at=timezone.now() + timedelta(seconds=workflow.lease_seconds),
    )


# --- generating a task's candidates -------------------------------------------------------------


@transaction.atomic
def task_generation_start(*, project: Project, user: User, assignment: TaskAssignment,
                          model_version_id: int | None = None) -> GenerationJob:
    """Generate the candidates of the task leased by ``assignment`` (the Generate button, simulated
    annotators): a generation job with the project's settings, by the chosen offered version (the
    first offered one by default).

    The images join the task when the job succeeds, in the generation service that marks it succeeded
    (:func:`task_images_attach_generated`), so pages only read. Idempotent per lease: a second call
    returns the same job. ``RateLimitedError`` (generation's limits) passes through.
    """
    versions = project_model_versions(project=project)
    version = (versions.filter(pk=model_version_id).first() if model_version_id else None) or versions.first()
    if version is None:
        raise ApplicationError("This project offers no model version to generate with.", field="model_version")
    workflow, task = workflow_of(project), assignment.task
    job = generation_job_create(
        user=user, model_version=version, prompt=task.prompt.text,
        num_images=min(workflow.images_per_task, settings.GENERATION_MAX_IMAGES_PER_JOB),
        params=workflow.generation_settings or None, project=project,
        idempotency_key=f"task-{task.pk}-assignment-{assignment.pk}",
    )
    TaskGenerationJob.objects.get_or_create(job=job, defaults={"task": task})
    if job.status == JobStatus.SUCCEEDED:  # it succeeded before it was linked (a job older than the link)
        _attach_job_images(task_id=task.pk, job_id=job.pk)
    return job


# --- image-editing tasks (a Source image feeds the Generate button) ------------------------------------


@dataclass(frozen=True)
class EditInput:
    """What the annotation page's edit form sends, parsed by the view (bytes already read within limits)."""

    # "upload", "task" (the task's own image), or "candidate:<image id>" (one generated earlier in the task)
    source_from: str
    upload: bytes | None = None  # the uploaded source file (source_from "upload")
    mask: bytes | None = None  # the mask PNG (inpaint)
    strength: float | None = None  # img2img, inpaint (None: the slider's or the model's default)
    outpaint: tuple[int, int, int, int] | None = None  # px added left, top, right, bottom (outpaint)


def edit_error_located(exc: ApplicationError, plan: catalogue.EditPlan) -> ApplicationError:
    """``exc`` from generation (field source_image, mask, strength or outpaint) named by the template's
    component that holds the input: "Mask painter 'mask' (mask): The mask is empty: ..."; ``field`` is
    ``<component name>.<field>``."""
    holders = {"source_image": plan.source, "mask": plan.mask or plan.source,
               "strength": plan.strength or plan.source, "outpaint": plan.outpaint or plan.source}
    component = holders.get(exc.field or "")
    if component is None:
        return exc
    label = catalogue.CATALOGUE[component["type"]].label
    return ApplicationError(f"{label} {component['name']!r} ({exc.field}): {exc.message}",
                            field=f"{component['name']}.{exc.field}", extra={"component": component["name"]})


def task_edit_plan(*, assignment: TaskAssignment) -> catalogue.EditPlan | None:
    """The edit the leased task's template makes (None: its Generate button makes plain text-to-image)."""
    version = assignment.template_version
    return catalogue.edit_plan(catalogue.normalise_schema(version.schema)["components"]) if version else None


def task_edit_sources(*, task: AnnotationTask) -> tuple[GeneratedImage | None, list[GeneratedImage]]:
    """The images an edit of ``task`` may start from besides an upload: the task's own image (the project
    image its metadata names as ``source_image``) and the candidates generated earlier in the task (by its
    generation jobs, newest job first, and its current candidates)."""
    task_image = None
    named = task.metadata.get("source_image") if isinstance(task.metadata, dict) else None
    if isinstance(named, str):
        try:
            named_id = uuid.UUID(named)
        except ValueError:
            named_id = None
        if named_id is not None:
            task_image = GeneratedImage.objects.filter(pk=named_id).filter(
                Q(job__project=task.project) | Q(project=task.project)).first()
    candidates = list(GeneratedImage.objects.filter(
        Q(job__annotation_task_link__task=task) | Q(annotation_tasks=task)).distinct().order_by("-job_id", "index"))
    return task_image, candidates


def _edit_source_bytes(*, task: AnnotationTask, edit: EditInput, plan: catalogue.EditPlan) -> bytes:
    allowed = plan.source["config"]["sources"]
    kind, _, image_id = edit.source_from.partition(":")

    def refuse(message: str) -> ApplicationError:
        return edit_error_located(ApplicationError(message, field="source_image"), plan)

    if kind not in allowed:
        raise refuse("Choose where the source image comes from: " + ", ".join(allowed) + ".")
    if kind == "upload":
        if not edit.upload:
            raise refuse("Upload a source image: a PNG, JPEG or WebP file.")
        return edit.upload
    task_image, candidates = task_edit_sources(task=task)
    if kind == "task":
        image = task_image
        if image is None:
            raise refuse("This task's data names no image to edit; upload one instead.")
    else:
        image = next((c for c in candidates if str(c.pk) == image_id), None)
        if image is None:
            raise refuse("Choose one of the candidates generated earlier in this task.")
    with default_storage.open(image.storage_key, "rb") as handle:
        return handle.read()


@transaction.atomic
def task_edit_generation_start(*, project: Project, user: User, assignment: TaskAssignment, edit: EditInput,
                               model_version_id: int | None = None) -> GenerationJob:
    """Generate the leased task's candidates as edits of a source image (img2img, inpaint or outpaint, as
    the template's components say): a generation job with ``edit``, linked to the task like
    :func:`task_generation_start`. Errors name the component and field (:func:`edit_error_located`) and
    store nothing. Idempotent per lease and edit: the same inputs return the same job.

    Editing a candidate of a task that has candidates already (and no answer) replaces them with the
    edits once they are generated.
    """
    plan = task_edit_plan(assignment=assignment)
    if plan is None:
        raise ApplicationError("This task's template has no Source image to edit.", field="source_image")
    versions = project_model_versions(project=project)
    version = (versions.filter(pk=model_version_id).first() if model_version_id else None) or versions.first()
    if version is None:
        raise ApplicationError("This project offers no model version to generate with.", field="model_version")
    task, workflow = assignment.task, workflow_of(project)
    source = _edit_source_bytes(task=task, edit=edit, plan=plan)
    strength = None if plan.kind == "outpaint" else edit.strength
    if strength is None and plan.strength is not None:
        strength = plan.strength["config"]["default"] / 100
    request = EditRequest(kind=plan.kind, source=source, mask=edit.mask if plan.kind == "inpaint" else None,
                          strength=strength, outpaint=edit.outpaint if plan.kind == "outpaint" else None)
    digest = hashlib.sha256(repr((request.kind, hashlib.sha256(source).hexdigest(),
                                  hashlib.sha256(request.mask or b"").hexdigest(), request.strength,
                                  request.outpaint)).encode()).hexdigest()
    try:
        job = generation_job_create(
            user=user, model_version=version, prompt=task.prompt.text,
            num_images=min(workflow.images_per_task, settings.GENERATION_MAX_IMAGES_PER_JOB),
            params=workflow.generation_settings or None, project=project, edit=request,
            idempotency_key=f"task-{task.pk}-assignment-{assignment.pk}-edit-{digest[:32]}",
        )
    except ApplicationError as exc:
        raise edit_error_located(exc, plan) from None
    _, linked = TaskGenerationJob.objects.get_or_create(job=job, defaults={"task": task})
    if linked and TaskImage.objects.filter(task=task).exists():
        # An earlier candidate is being edited: the edits will replace the candidates (before any answer).
        (task,) = lock_ids(AnnotationTask, [task.pk])
        if Annotation.objects.filter(task=task).exists():
            raise ApplicationError("The task already has answers; its candidates can no longer change.",
                                   field="source_image")
        TaskImage.objects.filter(task=task).delete()
    if job.status == JobStatus.SUCCEEDED:
        _attach_job_images(task_id=task.pk, job_id=job.pk)
    return job


def task_images_attach_generated(jobs: Sequence[GenerationJob]) -> None:
    """Each task whose generation job just succeeded gets that job's images, unless it has images already.

    Registered with ``generation.registry`` (``AnnotateConfig.ready()``): the generation service that
    marks jobs succeeded calls it inside its transaction.
    """
    links = TaskGenerationJob.objects.filter(job_id__in=[job.pk for job in jobs]).order_by("task_id", "pk")
    for task_id, job_id in links.values_list("task_id", "job_id"):
        _attach_job_images(task_id=task_id, job_id=job_id)


def _attach_job_images(*, task_id: int, job_id: int) -> None:
    (task,) = lock_ids(AnnotationTask, [task_id])  # two jobs of one task finishing together: one attaches
    if TaskImage.objects.filter(task_id=task_id).exists():
        return
    image_ids = list(GeneratedImage.objects.filter(job_id=job_id).order_by("index").values_list("pk", flat=True))
    task_set_images(task=task, image_ids=image_ids)


# --- answers ----------------------------------------------------------------------------------


def _validate_ranking(component: Mapping[str, Any], image_ids: list[str], groups: Any) -> list[list[str]]:
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise ApplicationError("The ranking must be a list of groups (lists) of image ids, best first.",
                               field="ranking")
    groups = [[str(image) if not isinstance(image, str) else image for image in group] for group in groups]
    try:
        return catalogue.ranking_validate_groups(component=component, image_ids=image_ids, groups=groups)
    except catalogue.SubmissionError as exc:
        raise ApplicationError(exc.message, field="ranking") from None


def answers_from_form(*, schema_components: list[dict[str, Any]], image_ids: list[str],
                      data: Any) -> dict[str, Any]:
    """Read the rating, flags, select and text fields of the annotation form into ``answers``."""
    answers: dict[str, Any] = {}
    for c in schema_components:
        name = c["name"]
        if c["type"] == "rating":
            answers[name] = {img: data.get(f"{name}.{img}") for img in image_ids if data.get(f"{name}.{img}")}
        elif c["type"] == "flags":
            answers[name] = {img: data.getlist(f"{name}.{img}") for img in image_ids if data.getlist(f"{name}.{img}")}
        elif c["type"] == "text":
            answers[name] = data.get(name, "")
        elif c["type"] == "select":
            answers[name] = data.getlist(name) if c["config"]["multiple"] else data.get(name, "")
    return answers


def _validate_answers(schema_components: list[dict[str, Any]], image_ids: list[str],
                      answers: Any) -> dict[str, Any]:
    """Check the non-ranking answers against the template; returns them normalised."""
    if answers is None:
        answers = {}
    if not isinstance(answers, dict):
        raise ApplicationError("answers must be an object keyed by component name.", field="answers")
    by_name = {c["name"]: c for c in schema_components}
    unknown = [key for key in answers if key not in by_name]
    if unknown:
        raise ApplicationError(f"Unknown component {unknown[0]!r} in answers.", field=f"answers.{unknown[0]}")
    clean: dict[str, Any] = {}
    for name, c in by_name.items():
        value, config = answers.get(name), c["config"]

        def fail(message: str, _name: str = name) -> ApplicationError:
            return ApplicationError(message, field=f"answers.{_name}")

        if c["type"] in ("rating", "flags"):
            value = value or {}
            if not isinstance(value, dict):
                raise fail(f"{name}: expected an object keyed by image id.")
            for image in value:
                if image not in image_ids:
                    raise fail(f"{name}: unknown image {image!r}.")
            if c["type"] == "rating":
                scores = {}
                for image, score in value.items():
                    try:
                        score = int(score)
                    except (TypeError, ValueError):
                        raise fail(f"{name}: scores are whole numbers.") from None
                    if not config["scale_min"] <= score <= config["scale_max"]:
                        raise fail(f"{name}: scores go from {config['scale_min']} to {config['scale_max']}.")
                    scores[image] = score
                if config["required"] and len(scores) != len(image_ids):
                    raise fail(f"{name}: rate every image.")
                clean[name] = scores
            else:
                flags = {}
                for image, chosen in value.items():
                    if not isinstance(chosen, list) or any(flag not in config["options"] for flag in chosen):
                        raise fail(f"{name}: flags must be a list of {', '.join(config['options'])}.")
                    if chosen:
                        flags[image] = sorted(set(chosen))
                clean[name] = flags
        elif c["type"] == "text":
            text = (value or "").strip() if isinstance(value, str | type(None)) else None
            if text is None:
                raise fail(f"{name}: expected text.")
            if config["required"] and not text:
                raise fail(f"{config['label']}: this field is required.")
            if text and len(text) < config["min_length"]:
                raise fail(f"{config['label']}: at least {config['min_length']} characters.")
            if len(text) > config["max_length"]:
                raise fail(f"{config['label']}: at most {config['max_length']} characters.")
            clean[name] = text
        elif c["type"] == "select" and value not in (None, "", []):
            clean[name] = value
    return clean


@dataclass(frozen=True)
class Submission:
    """A parsed answer: ``ranking`` (tie groups) or ``form`` (the page's POST data) must be given."""

    idempotency_key: str
    ranking: Any = None
    answers: Any = None
    rationale: str | None = None
    duration_ms: int | None = None
    form: Any = None


def _build_answer(version: AnnotationTemplateVersion | None, image_ids: list[str],
                  submission: Submission) -> tuple[list[list[str]], dict[str, Any], str]:
    component = ranking_component(version)
    others = components_of(version, "rating", "flags", "text", "select")
    if submission.form is not None:
        try:
            groups = catalogue.ranking_groups_from_form(component=component, image_ids=image_ids,
                                                        data=submission.form)
        except catalogue.SubmissionError as exc:
            raise ApplicationError(exc.message, field="ranking") from None
        answers = answers_from_form(schema_components=others, image_ids=image_ids, data=submission.form)
        if not others and "rationale" in submission.form:
            answers = {}
    else:
        groups = _validate_ranking(component, image_ids, submission.ranking)
        answers = submission.answers
    answers = _validate_answers(others, image_ids, answers)
    rationale = submission.rationale
    if rationale is None:
        texts = [c["name"] for c in others if c["type"] == "text"]
        rationale = answers.get("rationale", answers.get(texts[0], "")) if texts else ""
        if not texts and submission.form is not None:
            rationale = (submission.form.get("rationale") or "").strip()
    rationale = (rationale or "").strip()
    if len(rationale) > MAX_RATIONALE:
        raise ApplicationError(f"A rationale is at most {MAX_RATIONALE} characters.", field="rationale")
    return groups, answers, rationale


def _annotation_event(annotation: Annotation, **extra: Any) -> dict[str, Any]:
    """The ``data`` of an annotation's webhook events: ids and API URLs (see the README's Webhooks)."""
    project_id, task_id = annotation.project_id, annotation.task_id
    return {
        "annotation": {
            "id": annotation.pk, "status": annotation.status, "task_id": task_id,
            "annotator": {"id": annotation.annotator_id, "username": annotation.annotator.get_username()},
            "template_version_id": annotation.template_version_id, "ranking": annotation.ranking,
            "supersedes_id": annotation.supersedes_id,
            "api_url": url_for("api-annotation-detail", project_id, annotation.pk),
        },
        "task": {"id": task_id, "api_url": url_for("api-task-detail", project_id, task_id)},
        **extra,
    }


def _task_completed_event(*, project: Project, task_id: int) -> dict[str, Any] | None:
    """``task.completed``'s data when the answer just stored gave the task as many current answers as the
    overlap; None otherwise. The task row is locked first, so of two answers committing at once the second
    one counts both."""
    task = AnnotationTask.objects.select_for_update().filter(pk=task_id).values("is_gold", "prompt_id").first()
    if task is None or task["is_gold"]:
        return None
    overlap = workflow_of(project).overlap
    answers = Annotation.objects.filter(task_id=task_id, status=AnnotationStatus.SUBMITTED).count()
    if answers != overlap:
        return None
    return {"task": {"id": task_id, "prompt_id": task["prompt_id"], "answers": answers, "overlap": overlap,
                     "api_url": url_for("api-task-detail", project.pk, task_id),
                     "annotations_api_url": url_for("api-annotation-list", project.pk) + f"?task={task_id}"}}


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApplicationError(f"An idempotency key (1 to {MAX_IDEMPOTENCY_KEY} characters) is required.",
                               field="idempotency_key")
    return key.strip()


@dataclass(frozen=True)
class _Locked:
    """What :func:`_lock_assignment` read in its one statement."""

    assignment: TaskAssignment | None
    replay_id: int | None = None
    image_ids: list[str] = field(default_factory=list)
    has_webhooks: bool = False


def _lock_assignment(*, project: Project, user: User, task_id: int, key: str) -> _Locked:
    """The user's assignment of ``task_id`` in ``project`` (template version joined), locked
    ``FOR UPDATE``; the id of the user's annotation stored under ``key``, if any; the task's
    image ids in display order; and whether the project has active webhook endpoints (most have
    none, so the submit then skips looking them up). One statement (one row per image).

    Plain SQL: this runs on every submit and the ORM took longer to compile its queries than
    PostgreSQL takes to run them.
    """
    hooks, hooks_params = has_subscribers_sql(project_id=project.pk)
    sql = rawsql.query(  # names from model metadata; every value is a parameter
        "SELECT {a.*}, {tv.*}, (SELECT {r.pk} FROM {r} WHERE {r.annotator} = %s AND {r.idempotency_key} = %s), ",
        a=TaskAssignment, tv=AnnotationTemplateVersion, r=Annotation,
    ) + hooks + rawsql.query(
        ", {ti.image} FROM {a} LEFT JOIN {tv} ON {tv.pk} = {a.template_version} "
        "LEFT JOIN {ti} ON {ti.task} = {a.task} WHERE {a.project} = %s AND {a.annotator} = %s AND {a.task} = %s "
        "ORDER BY {ti.position}",
        a=TaskAssignment, tv=AnnotationTemplateVersion, ti=TaskImage,
    ) + rawsql.for_update("a")
    rows = rawsql.fetchall(sql, [user.pk, key, *hooks_params, project.pk, user.pk, task_id])
    if not rows:
        return _Locked(None)
    row = rows[0]
    split = rawsql.width(TaskAssignment)
    assignment = rawsql.load(TaskAssignment, row[:split])
    version_end = split + rawsql.width(AnnotationTemplateVersion)
    assignment.template_version = (
        rawsql.load(AnnotationTemplateVersion, row[split:version_end]) if row[split] is not None else None
    )
    image_ids = [str(rawsql.value(TaskImage, "image", r[-1])) for r in rows if r[-1] is not None]
    return _Locked(assignment, replay_id=row[version_end], image_ids=image_ids, has_webhooks=bool(row[-2]))


@transaction.atomic
def annotation_submit(*, project: Project, user: User, task_id: int, submission: Submission
                      ) -> tuple[Annotation, bool]:
    """Store the annotator's answer to their leased task; returns ``(annotation, created)``.

    Idempotent: a second call with the same ``idempotency_key`` (a double click, a retried
    request) returns the first call's annotation and stores nothing. The assignment row is
    locked first, so two concurrent copies of one submit serialise on it.
    """
    key = _check_key(submission.idempotency_key)
    locked = _lock_assignment(project=project, user=user, task_id=task_id, key=key)
    assignment, replay_id, image_ids = locked.assignment, locked.replay_id, locked.image_ids
    if assignment is None:
        replay = Annotation.objects.filter(annotator=user.pk, idempotency_key=key).first()
        if replay is not None:
            raise ApplicationError("This idempotency key was used for another task.", field="idempotency_key")
        raise ApplicationError("This task is not assigned to you; ask for your next task.", field="task")
    if replay_id is None and assignment.status == AssignmentStatus.SUBMITTED:
        # We waited on the lock for a concurrent copy of this submit: the subquery above saw the
        # snapshot from before it committed, a fresh statement sees its row.
        replay_id = Annotation.objects.filter(annotator=user.pk, idempotency_key=key).values_list(
            "pk", flat=True).first()
    if replay_id is not None:
        replay = Annotation.objects.get(pk=replay_id)
        if replay.task_id != assignment.task_id:
            raise ApplicationError("This idempotency key was used for another task.", field="idempotency_key")
        return replay, False
    if assignment.status == AssignmentStatus.SUBMITTED:
        raise ApplicationError("You already submitted this task; amend your answer instead.", field="task")
    if assignment.status in (AssignmentStatus.SKIPPED, AssignmentStatus.RELEASED, AssignmentStatus.REJECTED):
        raise ApplicationError(
            f"This task is no longer yours to answer ({assignment.get_status_display().lower()}).", field="task")
    if not image_ids:
        raise ApplicationError("This task has no images to rank yet.", field="ranking")
    groups, answers, rationale = _build_answer(assignment.template_version, image_ids, submission)
    if assignment.status == AssignmentStatus.EXPIRED:
        # The reaper returned the slot; take it again if the task still has room.
        (task,) = lock_ids(AnnotationTask, [assignment.task_id])
        if not task.is_gold:
            overlap = workflow_of(project).overlap
            if task.taken_count >= overlap:
                raise ApplicationError("Your lease on this task expired and others have taken it.", field="task")
            taken = task.taken_count + 1
            AnnotationTask.objects.filter(pk=task.pk).update(taken_count=taken, is_open=taken < overlap)
    now = timezone.now()
    duration_ms = submission.duration_ms
    if duration_ms is None or not 0 <= int(duration_ms) <= 24 * 3600 * 1000:
        duration_ms = int((now - assignment.created_at).total_seconds() * 1000)
    annotation = rawsql.insert(
        Annotation, task_id=assignment.task_id, project=project, annotator=user, assignment=assignment,
        template_version=assignment.template_version, ranking=groups, answers=answers, rationale=rationale,
        duration_ms=duration_ms, idempotency_key=key,
    )
    column = rawsql.column
    rawsql.execute(
        f"UPDATE {rawsql.table(TaskAssignment)} SET {column(TaskAssignment, 'status')} = %s, "  # noqa: S608
        f"{column(TaskAssignment, 'finished_at')} = %s, {column(TaskAssignment, 'updated_at')} = %s "
        f"WHERE {column(TaskAssignment, 'pk')} = %s",
        [AssignmentStatus.SUBMITTED.value, rawsql.param(TaskAssignment, "finished_at", now),
         rawsql.param(TaskAssignment, "updated_at", now), assignment.pk],
    )
    # one statement for both events, and none when the project has no endpoint (the loop's hot path)
    hooks = subscribers(project_id=project.pk) if locked.has_webhooks else []
    emit("annotation.created", project_id=project.pk, endpoints=hooks, data=lambda: _annotation_event(annotation))
    emit("task.completed", project_id=project.pk, endpoints=hooks,
         data=lambda: _task_completed_event(project=project, task_id=assignment.task_id))
    if assignment.status == AssignmentStatus.ACTIVE:
        # That was the caller's one active lease in the project (a unique constraint): now they hold none,
        # which spares queue.task_next, which the loop calls next, its look-up of a current lease. (Were the
        # hint ever wrong, the one-active-lease constraint stops task_next's insert and it looks again.)
        lease_known(project, user_id=user.pk, assignment_id=None)
    return annotation, True


@transaction.atomic
def annotation_amend(*, project: Project, user: User, annotation_id: int, submission: Submission) -> Annotation:
    """Replace one of the annotator's recent answers; the old row stays, marked superseded."""
    key = _check_key(submission.idempotency_key)
    replay = Annotation.objects.filter(annotator=user.pk, idempotency_key=key).first()
    if replay is not None:
        if replay.supersedes_id != annotation_id:
            raise ApplicationError("This idempotency key was used for another answer.", field="idempotency_key")
        return replay
    old = (
        Annotation.objects.select_for_update(of=("self",)).select_related("template_version")
        .filter(project=project, annotator=user.pk, pk=annotation_id).first()
    )
    if old is None:
        raise ApplicationError("No such annotation of yours in this project.", field="annotation")
    if old.status != AnnotationStatus.SUBMITTED:
        raise ApplicationError(f"Only your current answer can be amended (this one is {old.status}).",
                               field="annotation")
    if timezone.now() - old.created_at > AMEND_WINDOW:
        raise ApplicationError("Answers can be amended for 24 hours after submitting.", field="annotation")
    image_ids = task_image_ids(task_id=old.task_id)
    groups, answers, rationale = _build_answer(old.template_version, image_ids, submission)
    Annotation.objects.filter(pk=old.pk).update(status=AnnotationStatus.SUPERSEDED, updated_at=timezone.now())
    amended = Annotation.objects.create(
        task_id=old.task_id, project=project, annotator=user, assignment_id=old.assignment_id,
        template_version=old.template_version, ranking=groups, answers=answers, rationale=rationale,
        duration_ms=old.duration_ms, idempotency_key=key, supersedes=old,
    )
    audit_record(event="annotation.amended", instance=amended, actor=user, project_id=project.pk,
                 changes={"ranking": [old.ranking, groups]}, details={"task": old.task_id, "supersedes": old.pk})
    emit("annotation.amended", project_id=project.pk, data=lambda: _annotation_event(amended))
    return amended


@transaction.atomic
def annotation_reject(*, project: Project, annotation_id: int, reviewer: User, note: str = "") -> Annotation:
    """Reject an answer in review: it stays (status rejected) and the task goes back to the queue."""
    note = (note or "").strip()
    if len(note) > 1000:
        raise ApplicationError("A review note is at most 1000 characters.", field="note")
    annotation = (
        Annotation.objects.select_for_update(of=("self",)).select_related("task")
        .filter(project=project, pk=annotation_id).first()
    )
    if annotation is None:
        raise ApplicationError("No such annotation in this project.", field="annotation")
    if annotation.status == AnnotationStatus.REJECTED:
        return annotation
    if annotation.status != AnnotationStatus.SUBMITTED:
        raise ApplicationError("Only a current (not superseded) answer can be rejected.", field="annotation")
    now = timezone.now()
    annotation.status, annotation.reviewed_by, annotation.reviewed_at = AnnotationStatus.REJECTED, reviewer, now
    annotation.review_note = note
    annotation.save(update_fields=["status", "reviewed_by", "reviewed_at", "review_note", "updated_at"])
    audit_record(event="annotation.rejected", instance=annotation, actor=reviewer, project_id=project.pk,
                 changes={"status": [AnnotationStatus.SUBMITTED.value, annotation.status]},
                 details={"task": annotation.task_id, "annotator": annotation.annotator_id, "note": note})
    TaskAssignment.objects.filter(pk=annotation.assignment_id).update(
        status=AssignmentStatus.REJECTED, updated_at=now
    )
    (task,) = lock_ids(AnnotationTask, [annotation.task_id])
    if not task.is_gold:
        taken = max(task.taken_count - 1, 0)
        AnnotationTask.objects.filter(pk=task.pk).update(taken_count=taken,
                                                         is_open=taken < workflow_of(project).overlap)
    emit("annotation.rejected", project_id=project.pk, data=lambda: _annotation_event(
        annotation, reviewer={"id": reviewer.pk, "username": reviewer.get_username()}, review_note=note))
    return annotation


__all__ = [
    "AMEND_WINDOW", "ImportReport", "PromptImportError", "Submission", "annotation_amend", "annotation_reject",
    "annotation_submit", "answers_from_form", "project_update_settings", "prompt_set_import", "task_create",
    "task_create_typed", "task_generation_start", "task_images_attach_generated", "task_images_score_request",
    "task_set_gold", "task_set_images",
]
