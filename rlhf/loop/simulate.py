"""Simulated annotators: accounts that work a project's queue through the browser's own services.

Each simulated annotator asks :func:`annotate.queue.task_next` for a task, generates its images when
it has none (the Generate button's service, :func:`generation.services.generation_job_create`, run
in this process by :func:`generation.worker.run_job`, then :func:`annotate.workflow_services.
task_set_images`, exactly as the page's progress poll does), ranks them with a preference function
plus Bradley-Terry noise (:mod:`rlhf.preferences`), writes a rationale and submits with
:func:`annotate.workflow_services.annotation_submit`. Overlap, leases and permissions are the
queue's and the services' own: a simulated annotator is refused exactly where a person would be.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.core.files.storage import default_storage
from django.db import transaction
from PIL import Image

from annotate import queue
from annotate.access import can
from annotate.models import Project, TaskAssignment
from annotate.services import membership_set
from annotate.workflow_selectors import ranking_component, task_image_ids
from annotate.workflow_services import Submission, annotation_submit, task_set_images
from core.exceptions import ApplicationError, PermissionDeniedError
from core.roles import GROUP_NAMES, Role
from rlhf.preferences import SimulationConfig, noisy_ranking

GENERATION_WAIT_S = 600


@dataclass
class SimulationReport:
    annotations: int = 0
    generation_jobs: int = 0
    per_annotator: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"annotations": self.annotations, "generation_jobs": self.generation_jobs,
                "per_annotator": dict(self.per_annotator), "seconds": round(self.seconds, 2)}


@transaction.atomic
def simulated_annotators_ensure(*, project: Project, count: int, prefix: str = "sim-annotator") -> list[User]:
    """``count`` annotator accounts ``<prefix>-1`` ... (created if missing, with an unusable password),
    each in the Annotators group and an annotator member of ``project``."""
    if not 1 <= count <= 100:
        raise ApplicationError("Simulate 1 to 100 annotators.", field="annotators")
    group = Group.objects.get(name=GROUP_NAMES[Role.ANNOTATOR])
    users = []
    for i in range(1, count + 1):
        user, created = get_user_model().objects.get_or_create(username=f"{prefix}-{i}")
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        user.groups.add(group)
        membership_set(project=project, user=user, role=Role.ANNOTATOR)
        users.append(user)
    return users


def _load_image(storage_key: str) -> Image.Image:
    with default_storage.open(storage_key, "rb") as handle:
        image = Image.open(handle)
        image.load()
    return image.convert("RGB")


def _generate(*, project: Project, user: User, assignment: TaskAssignment, model_version_id: int | None) -> bool:
    """What the Generate button and its progress poll do, with the job run in this process."""
    from generation import services as generation_services
    from generation import worker
    from generation.models import JobStatus

    versions = project.model_versions.filter(enabled=True).order_by("name")
    version = (versions.filter(pk=model_version_id).first() if model_version_id else None) or versions.first()
    if version is None:
        raise ApplicationError("This project offers no model version to generate with.", field="model_version")
    task = assignment.task
    while True:
        try:
            job = generation_services.generation_job_create(
                user=user, model_version=version, prompt=task.prompt.text,
                num_images=min(project.images_per_task, settings.GENERATION_MAX_IMAGES_PER_JOB),
                params=project.generation_settings or None, project=project,
                idempotency_key=f"task-{task.pk}-assignment-{assignment.pk}",
            )
            break
        except generation_services.RateLimitedError as exc:  # a person would wait too
            time.sleep(exc.retry_after)
    worker.run_job(job.pk)
    deadline = time.monotonic() + GENERATION_WAIT_S
    job.refresh_from_db()
    while not job.is_finished:  # a Celery worker claimed it first: wait for it, as the page polls
        if time.monotonic() > deadline:
            raise ApplicationError(f"Generation job {job.pk} did not finish in time.", field="generation")
        time.sleep(0.2)
        job.refresh_from_db()
    if job.status != JobStatus.SUCCEEDED:
        raise ApplicationError(f"Generation job {job.pk} {job.status}: {job.error}", field="generation")
    if not task_image_ids(task_id=task.pk):
        image_ids = [image.pk for image in sorted(job.images.all(), key=lambda image: image.index)]
        task_set_images(task=task, image_ids=image_ids)
    return True


def ranking_groups(order: Sequence[str], mode: str) -> list[list[str]]:
    """Tie groups for an order of image ids (best first), shaped for the template's ranking mode."""
    if mode == "best_of_n":
        return [[order[0]]]
    return [[image] for image in order]


def annotators_simulate(
    *,
    project: Project,
    users: Sequence[User],
    config: SimulationConfig,
    max_annotations: int | None = None,
    model_version_id: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SimulationReport:
    """Let ``users`` work ``project``'s queue in turns until it is empty (or ``max_annotations``).

    Every user must be allowed to annotate the project (PermissionDeniedError otherwise, before anything
    is written). Annotator ``i`` draws their noise from ``config.seed + i``.
    """
    for user in users:
        if not can(user=user, action="view", project=project) or not can(user=user, action="annotate",
                                                                           project=project):
            raise PermissionDeniedError(f"{user.username} may not annotate in project {project.name!r}.")
    preference = config.preference_fn()
    rngs = {user.pk: np.random.default_rng(config.seed + i) for i, user in enumerate(users)}
    report = SimulationReport(per_annotator={user.username: 0 for user in users})
    started = time.monotonic()
    active = list(users)
    while active:
        for user in list(active):
            if max_annotations is not None and report.annotations >= max_annotations:
                report.seconds = time.monotonic() - started
                return report
            handout = queue.task_next(project=project, user=user)
            assignment = handout.assignment
            if assignment is None:
                active.remove(user)
                continue
            task = assignment.task
            image_ids = task_image_ids(task_id=task.pk)
            if not image_ids:
                _generate(project=project, user=user, assignment=assignment, model_version_id=model_version_id)
                report.generation_jobs += 1
                image_ids = task_image_ids(task_id=task.pk)
            from generation.models import GeneratedImage

            keys = dict(GeneratedImage.objects.filter(pk__in=image_ids).values_list("pk", "storage_key"))
            keys = {str(k): v for k, v in keys.items()}
            scores = [float(preference(_load_image(keys[i]), task.prompt.text)) for i in image_ids]
            order = [image_ids[i] for i in noisy_ranking(scores, temperature=config.temperature, rng=rngs[user.pk])]
            mode = ranking_component(assignment.template_version)["config"].get("mode", "full")
            groups = ranking_groups(order, mode)
            rationale = ""
            if config.rationale:
                rationale = (f"Simulated annotator preferring {config.preference} (T={config.temperature:g}); "
                             "scores " + ", ".join(f"{s:.3f}" for s in sorted(scores, reverse=True)) + ".")
            annotation_submit(project=project, user=user, task_id=task.pk, submission=Submission(
                idempotency_key=f"sim-{task.pk}-{assignment.pk}", ranking=groups,
                answers=_text_answers(assignment, rationale), rationale=rationale,
            ))
            report.annotations += 1
            report.per_annotator[user.username] += 1
            if on_progress is not None:
                on_progress(report.annotations)
    report.seconds = time.monotonic() - started
    return report


def _text_answers(assignment: TaskAssignment, rationale: str) -> dict[str, Any]:
    """Fill the template's text components (a required "Why?" box) with the rationale."""
    from annotate.workflow_selectors import components_of

    return {c["name"]: rationale for c in components_of(assignment.template_version, "text")}
