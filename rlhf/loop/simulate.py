"""Simulated annotators: accounts that work a project's queue through the browser's own services.

Each simulated annotator asks :func:`annotate.workflow.queue.task_next` for a task, generates its images
when it has none (the Generate button's service, :func:`annotate.workflow.services.task_generation_start`,
with the job run in this process by :func:`generation.worker.run_job`: the service that marks the job
succeeded attaches its images to the task, as for a person), ranks them with a preference function
plus Bradley-Terry noise (:mod:`rlhf.preferences`), writes a rationale and submits with
:func:`annotate.workflow.services.annotation_submit`. Overlap, leases and permissions are the
queue's and the services' own: a simulated annotator is refused exactly where a person would be.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.core.files.storage import default_storage
from django.db import transaction
from PIL import Image

from annotate.models import TaskAssignment
from annotate.workflow import queue
from annotate.workflow.selectors import components_of, ranking_component, task_image_ids
from annotate.workflow.services import Submission, annotation_submit, task_generation_start
from core.exceptions import ApplicationError, PermissionDeniedError
from generation import worker
from generation.models import GeneratedImage, JobStatus
from generation.services import RateLimitedError
from projects.access import user_can
from projects.models import Project
from projects.roles import GROUP_NAMES, Role
from projects.services import membership_set
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
    """What the Generate button does, with the job run in this process (or by a worker that took it first)."""
    while True:
        try:
            job = task_generation_start(project=project, user=user, assignment=assignment,
                                        model_version_id=model_version_id)
            break
        except RateLimitedError as exc:  # a person would wait too
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
        if not user_can(user=user, action="annotate", project=project):
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
    return {c["name"]: rationale for c in components_of(assignment.template_version, "text")}
