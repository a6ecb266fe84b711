"""Reads for the annotation workflow: template rules, the annotator's task, review and stats.

The project itself (with its workflow settings and the access decision) is loaded by
:mod:`annotate.workflow.access`.

Every selector here runs a fixed number of queries whatever the number of tasks, images,
annotators or annotations (lists are fetched with ``select_related``/``prefetch_related``
or computed in one aggregate).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.core.paginator import Paginator
from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet
from django.http import Http404
from django.urls import NoReverseMatch, get_script_prefix, get_urlconf, reverse

from annotate.builder import components as catalogue
from annotate.models import (
    Annotation,
    AnnotationStatus,
    AnnotationTask,
    AnnotationTemplateVersion,
    AssignmentStatus,
    PromptSet,
    TaskAssignment,
    TaskImage,
)
from annotate.workflow import agreement, model_agreement
from annotate.workflow.scoring import reward_scores
from core import rawsql
from core.exceptions import ApplicationError
from generation.models import GeneratedImage
from projects.models import Project

AnyUser = User | AnonymousUser

# The ranking rules when a project has no template (or its template has no Ranking component).
DEFAULT_RANKING_COMPONENT: dict[str, Any] = {
    "type": "ranking",
    "name": "ranking",
    "config": {"label": "Rank the images", "images": "images", "mode": "full", "allow_ties": False,
               "allow_partial": False},
}


# --- template rules -------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _normalised_schema(version_id: int, schema_json: str) -> dict[str, Any]:
    return catalogue.normalise_schema(json.loads(schema_json))


# What annotators see when a project has no template version yet: the task's images, a full
# ranking without ties, and an optional rationale.
DEFAULT_SCHEMA: dict[str, Any] = catalogue.normalise_schema({
    "schema_version": catalogue.SCHEMA_VERSION,
    "components": [
        {"type": "images", "name": "images", "config": {"source": "task", "count": 4, "blind": True}},
        {"type": "ranking", "name": "ranking", "config": {"images": "images", "mode": "full"}},
        {"type": "text", "name": "rationale", "config": {"label": "Rationale", "required": False}},
    ],
})


def template_schema(version: AnnotationTemplateVersion | None) -> dict[str, Any]:
    """The version's normalised schema (cached: published versions never change)."""
    if version is None:
        return DEFAULT_SCHEMA
    if version.is_published:
        return _normalised_schema(version.pk, json.dumps(version.schema, sort_keys=True))
    return catalogue.normalise_schema(version.schema)


def ranking_component(version: AnnotationTemplateVersion | None) -> dict[str, Any]:
    """The template's first Ranking component (or the default: full ranking, no ties, no partial)."""
    for component in template_schema(version)["components"]:
        if component["type"] == "ranking":
            return component
    return DEFAULT_RANKING_COMPONENT


def components_of(version: AnnotationTemplateVersion | None, *types: str) -> list[dict[str, Any]]:
    return [c for c in template_schema(version)["components"] if not types or c["type"] in types]


# --- images -----------------------------------------------------------------------------------


_SAMPLE_IMAGE_ID = "00000000-0000-0000-0000-000000000000"


@lru_cache(maxsize=16)
def _image_url_pattern(script_prefix: str, urlconf: str | None) -> str | None:
    try:
        return reverse("generation:image", args=[_SAMPLE_IMAGE_ID])
    except NoReverseMatch:
        return None


def image_url(image_id: Any) -> str:
    """Where the browser loads an image (the generation app's permission-checked view).

    The URL is reversed once (per script prefix and URLconf) and the id filled in: every
    handed-out task lists its images, and a ``reverse()`` per image showed in profiles.
    """
    pattern = _image_url_pattern(get_script_prefix(), get_urlconf())
    if pattern is None:
        return f"/generation/images/{image_id}.png"
    return pattern.replace(_SAMPLE_IMAGE_ID, str(image_id))


def task_image_ids(*, task_id: int) -> list[str]:
    """The task's image ids (strings), in display order: one query. (Submit reads them with its
    assignment, in ``workflow_services._lock_assignment``; this serves the rarer paths.)"""
    return [str(pk) for pk in
            TaskImage.objects.filter(task_id=task_id).order_by("position").values_list("image_id", flat=True)]


# --- the annotator's side ---------------------------------------------------------------------


# What task_images selects over TaskImage ``ti`` joined to GeneratedImage ``gi`` (the queue selects it too,
# with the task it hands out); task_images_from_rows turns the rows into the handout's image list.
TASK_IMAGE_COLUMNS = "{ti.image}, {ti.position}, {gi.width}, {gi.height}"


def task_images_from_rows(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """:func:`task_images`' list from rows ending in the four :data:`TASK_IMAGE_COLUMNS` (rows without an
    image, from an outer join, are left out)."""
    images = []
    for *_, raw_id, position, width, height in rows:
        if raw_id is None:
            continue
        image_id = rawsql.value(TaskImage, "image", raw_id)
        images.append({"id": str(image_id), "url": image_url(image_id), "position": position, "width": width,
                       "height": height})
    return images


def task_images(*, task_id: int) -> list[dict[str, Any]]:
    """``[{"id", "url", "position", "width", "height"}]`` in display order: one query.

    Plain SQL: compiling the ORM query cost more than running it (the ids come back as UUIDs on
    every database, as the ORM returns them). A task the queue hands out comes with its images,
    read in the queue's own statement (``queue._lock_next_task``); this serves the other paths.
    """
    rows = rawsql.fetchall(rawsql.query(
        "SELECT " + TASK_IMAGE_COLUMNS + " FROM {ti} JOIN {gi} ON {gi.pk} = {ti.image} "  # noqa: S608 - names only
        "WHERE {ti.task} = %s ORDER BY {ti.position}", ti=TaskImage, gi=GeneratedImage), [task_id])
    return task_images_from_rows(rows)


def task_images_for_annotator(*, project: Project, task_id: int) -> list[dict[str, Any]]:
    """:func:`task_images`, ordered by the project's pre-sort reward model when it has one
    (:mod:`annotate.workflow.scoring`).

    Highest stored score first; images without a score keep their display order after the
    scored ones. Two queries at most; the ranking an annotator submits names image ids, so the
    order shown changes nothing stored.
    """
    images = task_images(task_id=task_id)
    if len(images) < 2:
        return images
    scores = reward_scores().presort_scores(project=project, image_ids=[image["id"] for image in images])
    if not scores:
        return images
    return model_agreement.order_by_score(images, scores, key=lambda image: image["id"])


@dataclass
class Progress:
    done: int
    remaining: int

    @property
    def total(self) -> int:
        return self.done + self.remaining


def annotator_progress(*, project: Project, user: AnyUser) -> Progress:
    """Submitted by the annotator, and open tasks they could still take: one query."""
    mine = TaskAssignment.objects.filter(task=OuterRef("pk"), annotator=user.pk)
    counts = AnnotationTask.objects.filter(project=project).aggregate(
        remaining=Count("pk", filter=Q(is_open=True, is_gold=False) & ~Q(Exists(mine))),
        done=Count(
            "pk",
            filter=Q(Exists(mine.filter(status=AssignmentStatus.SUBMITTED))),
        ),
    )
    return Progress(done=counts["done"] or 0, remaining=counts["remaining"] or 0)


def recent_annotations(*, project: Project, user: AnyUser, limit: int = 20) -> QuerySet[Annotation]:
    """The annotator's latest submitted answers (to review and amend), newest first."""
    return (
        Annotation.objects.filter(project=project, annotator=user.pk, status=AnnotationStatus.SUBMITTED)
        .select_related("task__prompt")
        .order_by("-created_at", "-pk")[:limit]
    )


def annotation_for_annotator(*, project: Project, user: AnyUser, annotation_id: int) -> Annotation:
    """One of the annotator's own annotations in ``project`` (404 otherwise), with its history."""
    annotation = (
        Annotation.objects.filter(project=project, annotator=user.pk, pk=annotation_id)
        .select_related("task__prompt", "template_version", "supersedes")
        .first()
    )
    if annotation is None:
        raise Http404("No such annotation")
    return annotation


def annotation_history(*, annotation: Annotation) -> list[Annotation]:
    """The amendment chain of ``annotation`` (it first, then what it superseded): one query."""
    rows = {
        a.pk: a
        for a in Annotation.objects.filter(task_id=annotation.task_id, annotator_id=annotation.annotator_id)
    }
    chain: list[Annotation] = []
    current: Annotation | None = rows.get(annotation.pk)
    while current is not None:
        chain.append(current)
        current = rows.get(current.supersedes_id) if current.supersedes_id else None
    return chain


# --- lists (API and pages) ------------------------------------------------------------------


def prompt_sets(*, project: Project) -> QuerySet[PromptSet]:
    return PromptSet.objects.filter(project=project).select_related("created_by").order_by("-created_at", "-pk")


def tasks_for_review(*, project: Project) -> QuerySet[AnnotationTask]:
    """Tasks with prompt, images and every non-superseded annotation (annotator joined)."""
    return (
        AnnotationTask.objects.filter(project=project)
        .select_related("prompt")
        .prefetch_related(
            Prefetch("task_images", queryset=TaskImage.objects.order_by("position")),
            Prefetch(
                "annotations",
                queryset=Annotation.objects.exclude(status=AnnotationStatus.SUPERSEDED)
                .select_related("annotator")
                .order_by("created_at", "pk"),
            ),
        )
        .annotate(
            submitted_count=Count("annotations", filter=Q(annotations__status=AnnotationStatus.SUBMITTED))
        )
        .order_by("position")
    )


# --- the review page's filters ----------------------------------------------------------------

REVIEW_STATUSES: dict[str, str] = {
    "unanswered": "Unanswered", "answered": "Answered", "rejected": "With a rejected answer", "gold": "Gold",
}
# The least disagreement a task must show (1 - the mean pairwise agreement of its submitted rankings).
REVIEW_DISAGREEMENTS: dict[str, tuple[str, float]] = {
    "any": ("on any pair", 0.0), "25": ("on 25% of pairs or more", 0.25), "50": ("on half the pairs or more", 0.5),
}
REVIEW_SORTS: dict[str, str] = {"position": "Queue order", "disagreement": "Most disagreement first"}


@dataclass(frozen=True)
class ReviewFilters:
    """What the review page shows: ``status`` (a key of ``REVIEW_STATUSES`` or ""), ``annotator`` (a username
    or ""; the status is then theirs), ``disagreement`` (a key of ``REVIEW_DISAGREEMENTS`` or "") and ``sort``."""

    status: str = ""
    annotator: str = ""
    disagreement: str = ""
    sort: str = "position"

    @property
    def needs_disagreement(self) -> bool:
        return bool(self.disagreement) or self.sort == "disagreement"

    def as_query(self) -> dict[str, str]:
        """The non-default filters as query parameters (for links that keep them)."""
        values = {"status": self.status, "annotator": self.annotator, "disagreement": self.disagreement,
                  "sort": "" if self.sort == "position" else self.sort}
        return {key: value for key, value in values.items() if value}


def review_filters_parse(params: Any) -> ReviewFilters:
    """:class:`ReviewFilters` from query parameters; an unknown value is an error naming its parameter."""
    def choice(name: str, allowed: Sequence[str], default: str = "") -> str:
        value = (params.get(name) or "").strip()
        if value and value not in allowed:
            raise ApplicationError(f"{name.capitalize()} must be one of: {', '.join(allowed)}.", field=name)
        return value or default

    return ReviewFilters(status=choice("status", list(REVIEW_STATUSES)),
                         annotator=(params.get("annotator") or "").strip()[:150],
                         disagreement=choice("disagreement", list(REVIEW_DISAGREEMENTS)),
                         sort=choice("sort", list(REVIEW_SORTS), "position"))


def review_annotators(*, project: Project) -> list[str]:
    """Usernames of everyone with an answer (submitted, amended or rejected) in ``project``: one query."""
    return list(User.objects.filter(annotations__project=project).distinct().order_by("username")
                .values_list("username", flat=True))


def _filtered_tasks(project: Project, filters: ReviewFilters) -> QuerySet[AnnotationTask]:
    """The project's tasks that pass the status and annotator filters (SQL only; no rows loaded)."""
    tasks = AnnotationTask.objects.filter(project=project)
    answers = Annotation.objects.filter(task=OuterRef("pk"))
    if filters.annotator:
        answers = answers.filter(annotator__username=filters.annotator)
        if filters.status != "unanswered":
            tasks = tasks.filter(Exists(answers.filter(status__in=[AnnotationStatus.SUBMITTED,
                                                                    AnnotationStatus.REJECTED])))
    if filters.status == "unanswered":
        tasks = tasks.filter(~Exists(answers.filter(status=AnnotationStatus.SUBMITTED)))
    elif filters.status == "answered":
        tasks = tasks.filter(Exists(answers.filter(status=AnnotationStatus.SUBMITTED)))
    elif filters.status == "rejected":
        tasks = tasks.filter(Exists(answers.filter(status=AnnotationStatus.REJECTED)))
    elif filters.status == "gold":
        tasks = tasks.filter(is_gold=True)
    return tasks


def task_disagreements(*, tasks: QuerySet[AnnotationTask]) -> dict[int, float]:
    """Task id -> :func:`agreement.disagreement` of its submitted rankings, for the tasks (of ``tasks``)
    with two or more: one query, computed in Python (like the agreement page's figures)."""
    rankings: dict[int, list[Any]] = {}
    for task_id, ranking in Annotation.objects.filter(task__in=tasks.values("pk"),
                                                      status=AnnotationStatus.SUBMITTED).values_list(
            "task_id", "ranking"):
        rankings.setdefault(task_id, []).append(ranking)
    result = {}
    for task_id, task_rankings in rankings.items():
        value = agreement.disagreement(task_rankings)
        if value is not None:
            result[task_id] = value
    return result


@dataclass
class ReviewPage:
    """One page of the review list: the paginator's page (of task ids), the tasks on it in order (as
    :func:`tasks_for_review` loads them) and, when the filters asked for it, every matching task's
    disagreement."""

    page: Any
    tasks: list[AnnotationTask]
    disagreements: dict[int, float] | None


def _review_page_ids(project: Project, filters: ReviewFilters, page: Any, per_page: int
                     ) -> tuple[Any, dict[int, float] | None]:
    tasks = _filtered_tasks(project, filters)
    if not filters.needs_disagreement:
        return Paginator(tasks.order_by("position").values_list("pk", flat=True), per_page).get_page(page), None
    disagreements = task_disagreements(tasks=tasks)
    ordered = list(tasks.order_by("position").values_list("pk", flat=True))
    if filters.disagreement:
        _, least = REVIEW_DISAGREEMENTS[filters.disagreement]
        ordered = [pk for pk in ordered if pk in disagreements and (
            disagreements[pk] > 1e-9 if least == 0 else disagreements[pk] >= least - 1e-9)]
    if filters.sort == "disagreement":  # most first; tasks with fewer than two answers last, in queue order
        ordered.sort(key=lambda pk: -disagreements.get(pk, -1.0))
    return Paginator(ordered, per_page).get_page(page), disagreements


def review_page(*, project: Project, filters: ReviewFilters, page: Any, per_page: int) -> ReviewPage:
    """The review list's page under ``filters``: a fixed number of queries whatever the number of rows
    (four or five for the ids and the paging, then :func:`tasks_for_review`'s four for the page's tasks)."""
    paged, disagreements = _review_page_ids(project, filters, page, per_page)
    ids = list(paged.object_list)
    by_id = {task.pk: task for task in tasks_for_review(project=project).filter(pk__in=ids)} if ids else {}
    return ReviewPage(page=paged, tasks=[by_id[pk] for pk in ids if pk in by_id], disagreements=disagreements)


def review_task_ids(*, project: Project, page: Any, per_page: int,
                    filters: ReviewFilters | None = None) -> list[int]:
    """The ids of the tasks on one page of the review list (same filters, order and paging)."""
    paged, _ = _review_page_ids(project, filters or ReviewFilters(), page, per_page)
    return list(paged.object_list)


def reward_versions_for_review(*, user: AnyUser) -> list[Any]:
    """The reward-model versions ``user`` may score with (:mod:`annotate.workflow.scoring`)."""
    return reward_scores().versions_for(user=user)


def image_scores(*, reward_version_id: int, image_ids: Sequence[Any]) -> dict[str, float]:
    """Stored reward-model scores ``{image id: score}`` (one query); images not scored yet are absent."""
    if not image_ids:
        return {}
    return reward_scores().scores(version_id=reward_version_id, image_ids=list(image_ids))


# --- stats and agreement --------------------------------------------------------------------


@dataclass
class AnnotatorStats:
    user_id: int
    username: str
    tasks_done: int = 0
    rejected: int = 0
    skipped: int = 0
    median_seconds: float | None = None
    consensus_tau: float | None = None
    gold_accuracy: float | None = None
    gold_count: int = 0
    durations: list[float] = field(default_factory=list, repr=False)


@dataclass
class ProjectAgreement:
    annotators: list[AnnotatorStats]
    pairwise: list[dict[str, Any]]  # per annotator pair: tasks in common, agreement, tau
    task_w: list[dict[str, Any]]  # per task: id, prompt, raters, W
    mean_pairwise_agreement: float | None
    mean_tau: float | None
    mean_w: float | None


def project_agreement(*, project: Project) -> ProjectAgreement:
    """Per-annotator stats and project agreement from the submitted annotations: three queries.

    * consensus tau: for each task with 2+ rankings, tau-b between the annotator's ranking
      and the Borda consensus of the *other* annotators, averaged over tasks;
    * gold accuracy: mean pairwise agreement with the gold ranking over the gold tasks done;
    * pairwise: per annotator pair, mean pairwise agreement and mean tau-b over common tasks;
    * W: Kendall's W (tie-corrected) per task with 2+ rankings, over the task's images.
    """
    rows = list(
        Annotation.objects.filter(project=project, status=AnnotationStatus.SUBMITTED)
        .values_list("task_id", "annotator_id", "annotator__username", "ranking", "duration_ms",
                     "task__is_gold", "task__gold_ranking", "task__prompt__text")
    )
    outcomes = (
        TaskAssignment.objects.filter(project=project, status__in=[AssignmentStatus.SKIPPED,
                                                                   AssignmentStatus.REJECTED])
        .values_list("annotator_id", "annotator__username", "status")
        .annotate(n=Count("pk"))
    )
    images_by_task: dict[int, list[str]] = {}
    for task_id, image_id in TaskImage.objects.filter(task__project=project).order_by(
        "task_id", "position"
    ).values_list("task_id", "image_id"):
        images_by_task.setdefault(task_id, []).append(str(image_id))

    stats: dict[int, AnnotatorStats] = {}
    by_task: dict[int, dict[int, Any]] = {}
    prompts: dict[int, str] = {}
    gold_scores: dict[int, list[float]] = {}
    for task_id, user_id, username, ranking, duration_ms, is_gold, gold_ranking, prompt in rows:
        entry = stats.setdefault(user_id, AnnotatorStats(user_id, username))
        entry.tasks_done += 1
        if duration_ms is not None:
            entry.durations.append(duration_ms / 1000)
        if is_gold:
            score = agreement.pairwise_agreement(ranking, gold_ranking)
            if score is not None:
                gold_scores.setdefault(user_id, []).append(score)
            continue
        by_task.setdefault(task_id, {})[user_id] = ranking
        prompts[task_id] = prompt
    for user_id, username, status, n in outcomes:
        entry = stats.setdefault(user_id, AnnotatorStats(user_id, username))
        if status == AssignmentStatus.REJECTED:
            entry.rejected += n
        else:
            entry.skipped += n

    consensus_taus: dict[int, list[float | None]] = {}
    pair_scores: dict[tuple[int, int], dict[str, list[float | None]]] = {}
    task_w: list[dict[str, Any]] = []
    for task_id, rankings in by_task.items():
        if len(rankings) < 2:
            continue
        items = images_by_task.get(task_id)
        users = sorted(rankings)
        for user_id in users:
            others = [rankings[other] for other in users if other != user_id]
            consensus_taus.setdefault(user_id, []).append(
                agreement.kendall_tau_b(rankings[user_id], agreement.consensus(others, items))
            )
        for i, a in enumerate(users):
            for b in users[i + 1:]:
                scores = pair_scores.setdefault((a, b), {"agreement": [], "tau": []})
                scores["agreement"].append(agreement.pairwise_agreement(rankings[a], rankings[b]))
                scores["tau"].append(agreement.kendall_tau_b(rankings[a], rankings[b]))
        task_w.append({"task_id": task_id, "prompt": prompts[task_id], "raters": len(users),
                       "w": agreement.kendalls_w([rankings[u] for u in users], items)})

    for user_id, entry in stats.items():
        entry.median_seconds = agreement.median_or_none(entry.durations)
        entry.consensus_tau = agreement.mean_or_none(consensus_taus.get(user_id, []))
        golds = gold_scores.get(user_id, [])
        entry.gold_count = len(golds)
        entry.gold_accuracy = agreement.mean_or_none(golds)
    names = {user_id: entry.username for user_id, entry in stats.items()}
    pairwise = [
        {"a": names[a], "b": names[b], "a_id": a, "b_id": b, "tasks": len(scores["agreement"]),
         "agreement": agreement.mean_or_none(scores["agreement"]), "tau": agreement.mean_or_none(scores["tau"])}
        for (a, b), scores in sorted(pair_scores.items())
    ]
    task_w.sort(key=lambda row: row["task_id"])
    return ProjectAgreement(
        annotators=sorted(stats.values(), key=lambda s: s.username),
        pairwise=pairwise,
        task_w=task_w,
        mean_pairwise_agreement=agreement.mean_or_none([p["agreement"] for p in pairwise]),
        mean_tau=agreement.mean_or_none([p["tau"] for p in pairwise]),
        mean_w=agreement.mean_or_none([row["w"] for row in task_w]),
    )


def images_for_tasks(*, task_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Task id -> its images (``{"id", "url"}``) in display order: one query for any number of tasks."""
    result: dict[int, list[dict[str, Any]]] = {}
    for task_id, image_id in TaskImage.objects.filter(task_id__in=task_ids).order_by(
        "task_id", "position"
    ).values_list("task_id", "image_id"):
        result.setdefault(task_id, []).append({"id": str(image_id), "url": image_url(image_id)})
    return result
