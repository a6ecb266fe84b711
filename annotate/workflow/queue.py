"""The task queue: hand an annotator their next task, skip, and return expired leases.

How a task is handed out (:func:`task_next`):

1. An annotator with an active, unexpired lease in the project gets that task again (a
   page refresh or a retried request never reserves a second task).
2. With probability the workflow's ``gold_rate`` a gold task the annotator has not seen is tried
   first; gold tasks are offered to everyone once and never count towards the overlap.
3. Otherwise the first open task in the project's order (``position`` or ``random_key``) that
   the annotator has never been assigned, locked with ``SELECT ... FOR UPDATE SKIP LOCKED``:
   concurrent annotators skip each other's locked rows instead of waiting. Its
   ``taken_count`` goes up under that lock, so a task never has more than ``overlap`` active
   leases plus submitted annotations, and a ``TaskAssignment`` row (unique per task and
   annotator; one active per annotator and project) records the lease.

The lease expires after the workflow's ``lease_seconds``; the reaper (registered with
``core.tasks.register_reaper``, run by beat) marks expired leases and gives their slots back.

Steps 2 and 3 run on every "next task" request, so their three statements (lock the task and
read its prompt and images, count the lease, insert the assignment) are plain SQL through
:mod:`core.rawsql`: compiling them with the ORM cost more CPU than PostgreSQL spends running
them. The rarer paths (an existing or expired lease, skips, the reaper) keep the ORM.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotate.models import (
    AnnotationTask,
    AssignmentStatus,
    Project,
    Prompt,
    TaskAssignment,
    TaskImage,
    TaskOrder,
)
from annotate.workflow.access import no_lease_noted, workflow_of
from annotate.workflow.selectors import TASK_IMAGE_COLUMNS, task_images_from_rows
from core import rawsql
from core.exceptions import ApplicationError
from core.locks import lock_ids
from core.tasks import register_reaper
from generation.models import GeneratedImage

MAX_SKIP_REASON = 500


@dataclass(frozen=True)
class Handout:
    """What :func:`task_next` hands out: the lease and its task (prompt joined), or nothing left; with the
    task's images (``selectors.task_images``' list) when the statement that locked the task read them too."""

    assignment: TaskAssignment | None
    images: list[dict[str, Any]] | None = None

    @property
    def task(self) -> AnnotationTask | None:
        return self.assignment.task if self.assignment else None


def _lock_next_task(*, project: Project, user: User, gold: bool) -> tuple[AnnotationTask, list[dict[str, Any]]] | None:
    """The first task in the project's order that ``user`` was never assigned (open, non-gold
    ones; or gold ones, in random order), with its prompt and its images, locked ``FOR UPDATE
    SKIP LOCKED``.

    Plain SQL: this runs on every "next task" and the ORM took longer to compile it than
    PostgreSQL takes to run it. The partial indexes on (project, position) and (project,
    random_key) for open, non-gold tasks serve the subquery that picks and locks the task; the
    outer query joins its prompt and images (one row per image). The outer query reads the
    task as the statement's snapshot saw it, which a transaction committing just before the lock
    may have changed since: so the caller changes ``taken_count`` relative to the locked row
    (:func:`_take_slot`), never from these values.
    """
    order = "random_key" if gold or workflow_of(project).task_order == TaskOrder.RANDOM else "position"
    still_open, params = ("", [project.pk, gold]) if gold else (" AND {c.is_open} = %s", [project.pk, gold, True])
    sql = rawsql.query(  # names from model metadata; every value is a parameter
        "SELECT {t.*}, {p.*}, " + TASK_IMAGE_COLUMNS + " FROM {t} JOIN {p} ON {p.pk} = {t.prompt} "  # noqa: S608
        "LEFT JOIN {ti} ON {ti.task} = {t.pk} LEFT JOIN {gi} ON {gi.pk} = {ti.image} "
        "WHERE {t.pk} = (SELECT {c.pk} FROM {c} WHERE {c.project} = %s AND {c.is_gold} = %s" + still_open +
        " AND NOT EXISTS (SELECT 1 FROM {a} WHERE {a.task} = {c.pk} AND {a.annotator} = %s) "
        "ORDER BY {c." + order + "}, {c.pk} LIMIT 1" + rawsql.for_update("c", skip_locked=True) + ") "
        "ORDER BY {ti.position}",
        t=AnnotationTask, p=Prompt, ti=TaskImage, gi=GeneratedImage, c=AnnotationTask, a=TaskAssignment,
    )
    rows = rawsql.fetchall(sql, [*params, user.pk])
    if not rows:
        return None
    split, prompt_end = rawsql.width(AnnotationTask), rawsql.width(AnnotationTask) + rawsql.width(Prompt)
    task = rawsql.load(AnnotationTask, rows[0][:split])
    task.prompt = rawsql.load(Prompt, rows[0][split:prompt_end])
    return task, task_images_from_rows(rows)


def _take_slot(task: AnnotationTask, *, overlap: int) -> None:
    """One more lease on the locked, non-gold ``task``: ``taken_count`` up by one and ``is_open`` while it
    is below ``overlap``, computed from the row as locked (one statement); ``task`` gets the new values."""
    table, taken, is_open = (rawsql.table(AnnotationTask), rawsql.column(AnnotationTask, "taken_count"),
                             rawsql.column(AnnotationTask, "is_open"))
    row = rawsql.fetchone(
        f"UPDATE {table} SET {taken} = {taken} + 1, {is_open} = {taken} + 1 < %s "  # noqa: S608 - names only
        f"WHERE {rawsql.column(AnnotationTask, 'pk')} = %s RETURNING {taken}, {is_open}", [overlap, task.pk])
    if row is None:
        raise RuntimeError(f"task {task.pk} vanished while locked")
    task.taken_count, task.is_open = row[0], rawsql.value(AnnotationTask, "is_open", row[1])

@transaction.atomic
def _task_next_attempt(*, project: Project, user: User, gold_first: bool, check_active: bool) -> Handout:
    now = timezone.now()
    current = None
    if check_active:
        current = (
            TaskAssignment.objects.filter(project=project, annotator=user.pk, status=AssignmentStatus.ACTIVE)
            .select_related("task__prompt", "template_version")
            .first()
        )
    if current is not None:
        if current.lease_expires_at > now:
            return Handout(current)
        _expire([current.pk])  # our own lease ran out before the reaper saw it
    found = _lock_next_task(project=project, user=user, gold=True) if gold_first else None
    if found is None:
        found = _lock_next_task(project=project, user=user, gold=False)
    if found is None:
        return Handout(None)
    task, images = found
    workflow = workflow_of(project)
    if not task.is_gold:
        _take_slot(task, overlap=workflow.overlap)
    assignment = rawsql.insert(
        TaskAssignment, task=task, project=project, annotator=user, template_version=workflow.template_version,
        lease_expires_at=now + timedelta(seconds=workflow.lease_seconds),
    )
    return Handout(assignment, images=images)


def task_next(*, project: Project, user: User, rng: random.Random | None = None) -> Handout:
    """Hand ``user`` their next task in ``project`` (see the module docstring).

    Two concurrent calls by the same annotator can both find no active lease; the database's
    one-active-lease constraint stops the second, which then retries and finds the first's lease.
    """
    if project.is_archived:
        raise ApplicationError("This project is archived; it hands out no tasks.", field="project")
    gold_rate = workflow_of(project).gold_rate
    gold_first = gold_rate > 0 and (rng or random).random() < gold_rate
    # The project may say that the user holds no lease (loaded with ``with_active_lease=True``, or the user's
    # lease just submitted): then there is none to look up. Were it wrong, the one-active-lease constraint
    # stops the insert and the retry looks.
    check_active = not no_lease_noted(project, user_id=user.pk)
    for attempt in range(3):
        try:
            return _task_next_attempt(project=project, user=user, gold_first=gold_first, check_active=check_active)
        except IntegrityError:
            if attempt == 2 or transaction.get_connection().in_atomic_block:
                raise
            check_active = True
    raise AssertionError("unreachable")


def _expire(assignment_ids: list[int], *, status: str = AssignmentStatus.EXPIRED, reason: str = "") -> int:
    if not assignment_ids:
        return 0
    assignments = list(
        TaskAssignment.objects.filter(pk__in=sorted(assignment_ids), status=AssignmentStatus.ACTIVE)
        .select_related("task__project__workflow")
        .select_for_update(of=("self",))
        .order_by("pk")
    )
    if not assignments:
        return 0
    TaskAssignment.objects.filter(pk__in=[a.pk for a in assignments]).update(
        status=status, finished_at=timezone.now(), skip_reason=reason, updated_at=timezone.now()
    )
    task_ids = sorted({a.task_id for a in assignments if not a.task.is_gold})
    if task_ids:
        for task in lock_ids(AnnotationTask, task_ids):
            freed = sum(1 for a in assignments if a.task_id == task.pk)
            taken = max(task.taken_count - freed, 0)
            overlap = next(workflow_of(a.task.project).overlap for a in assignments if a.task_id == task.pk)
            AnnotationTask.objects.filter(pk=task.pk).update(taken_count=taken, is_open=taken < overlap)
    return len(assignments)


@transaction.atomic
def assignment_skip(*, project: Project, user: User, task_id: int, reason: str) -> TaskAssignment:
    """The annotator gives their leased task back with a reason; it will not be offered to them again."""
    reason = (reason or "").strip()
    if not reason:
        raise ApplicationError("Say why you skip this task.", field="reason")
    if len(reason) > MAX_SKIP_REASON:
        raise ApplicationError(f"A skip reason is at most {MAX_SKIP_REASON} characters.", field="reason")
    assignment = (
        TaskAssignment.objects.select_for_update()
        .filter(project=project, annotator=user.pk, task_id=task_id)
        .first()
    )
    if assignment is None:
        raise ApplicationError("This task is not assigned to you.", field="task")
    if assignment.status == AssignmentStatus.SKIPPED:
        return assignment  # a retried skip
    if assignment.status != AssignmentStatus.ACTIVE:
        raise ApplicationError(
            f"This task is no longer leased to you ({assignment.get_status_display().lower()}).", field="task"
        )
    _expire([assignment.pk], status=AssignmentStatus.SKIPPED, reason=reason)
    assignment.refresh_from_db()
    return assignment


@transaction.atomic
def assignment_release(*, assignment: TaskAssignment) -> None:
    """Give an active lease back without a reason (used when an annotator types their own prompt)."""
    _expire([assignment.pk], status=AssignmentStatus.RELEASED)


@register_reaper("annotate.expired_leases")
@transaction.atomic
def leases_reap(*, now=None, batch: int = 1000) -> int:
    """Return every expired lease to the queue; returns how many were reaped."""
    now = now or timezone.now()
    ids = list(
        TaskAssignment.objects.filter(status=AssignmentStatus.ACTIVE, lease_expires_at__lte=now)
        .order_by("pk")
        .values_list("pk", flat=True)[:batch]
    )
    return _expire(ids)
