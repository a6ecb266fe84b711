"""Reads for the annotation workflow: access in one query, the annotator's task, review and stats.

Every selector here runs a fixed number of queries whatever the number of tasks, images,
annotators or annotations (lists are fetched with ``select_related``/``prefetch_related``
or computed in one aggregate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from django.contrib.auth.models import AnonymousUser, Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db.models import (
    Count,
    Exists,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
)
from django.http import Http404
from django.urls import NoReverseMatch, get_script_prefix, get_urlconf, reverse

from annotate import agreement, model_agreement
from annotate import components as catalogue
from annotate.models import (
    Annotation,
    AnnotationStatus,
    AnnotationTask,
    AnnotationTemplateVersion,
    AssignmentStatus,
    Project,
    ProjectMembership,
    PromptSet,
    TaskAssignment,
    TaskImage,
)
from core import rawsql
from core.exceptions import PermissionDeniedError
from core.roles import ACTION_PERMISSIONS, ROLE_ACTIONS

AnyUser = User | AnonymousUser

# The ranking rules when a project has no template (or its template has no Ranking component).
DEFAULT_RANKING_COMPONENT: dict[str, Any] = {
    "type": "ranking",
    "name": "ranking",
    "config": {"label": "Rank the images", "images": "images", "mode": "full", "allow_ties": False,
               "allow_partial": False},
}


# --- access ---------------------------------------------------------------------------------


def _perms_sql(user_id: int, view_permission: str, action_permission: str) -> tuple[str, list[Any]]:
    """A scalar subquery: which of the two permissions the user holds, directly or through a
    group, as bits (1: ``view_permission``, 2: ``action_permission``).

    Both in one subquery, over the user's group and own permissions once: planning it costs
    PostgreSQL about half of two separate ``EXISTS`` checks.
    """
    (view_app, view_code), (act_app, act_code) = (p.split(".", 1) for p in (view_permission, action_permission))
    perm, ct = rawsql.table(Permission), rawsql.table(ContentType)
    group_perms = rawsql.table(Group.permissions.through)
    user_groups, user_perms = rawsql.table(User.groups.through), rawsql.table(User.user_permissions.through)
    sql = (
        "(SELECT COALESCE(MAX(CASE WHEN ct.app_label = %s AND p.codename = %s THEN 1 ELSE 0 END) "  # noqa: S608
        "+ 2 * MAX(CASE WHEN ct.app_label = %s AND p.codename = %s THEN 1 ELSE 0 END), 0) "
        f"FROM {perm} p JOIN {ct} ct ON ct.id = p.content_type_id "
        "WHERE (ct.app_label, p.codename) IN ((%s, %s), (%s, %s)) AND p.id IN ("
        f"SELECT gp.permission_id FROM {group_perms} gp JOIN {user_groups} ug ON ug.group_id = gp.group_id "
        f"WHERE ug.user_id = %s UNION ALL SELECT up.permission_id FROM {user_perms} up WHERE up.user_id = %s))"
    )
    return sql, [view_app, view_code, act_app, act_code, view_app, view_code, act_app, act_code, user_id, user_id]


def _project_row(*, user_id: int, project_id: int, action: str, with_active_lease: bool) -> tuple[Any, ...] | None:
    """One row: the project's columns, its template version's, then the user's membership role,
    whether they may view and may do ``action`` (bits, see :func:`_perms_sql`), and (optionally)
    their active lease's id.

    Plain SQL: the API's annotator loop loads the project on every request, and compiling this
    as an ORM query (four subqueries, a join) cost more CPU than PostgreSQL spends running it.
    """
    perms, perm_params = _perms_sql(user_id, ACTION_PERMISSIONS["view"], ACTION_PERMISSIONS[action])
    lease, lease_params = "NULL", []
    if with_active_lease:  # saves the queue a query: the caller's current lease in this project, if any
        lease = (f"(SELECT a.id FROM {rawsql.table(TaskAssignment)} a WHERE a.project_id = p.id "  # noqa: S608
                 "AND a.annotator_id = %s AND a.status = %s LIMIT 1)")
        lease_params = [user_id, AssignmentStatus.ACTIVE.value]
    sql = (
        f"SELECT {rawsql.columns(Project, 'p')}, {rawsql.columns(AnnotationTemplateVersion, 'tv')}, "  # noqa: S608
        f"(SELECT m.role FROM {rawsql.table(ProjectMembership)} m WHERE m.project_id = p.id AND m.user_id = %s), "
        f"{perms}, {lease} "
        f"FROM {rawsql.table(Project)} p "
        f"LEFT JOIN {rawsql.table(AnnotationTemplateVersion)} tv ON tv.id = p.template_version_id WHERE p.id = %s"
    )
    return rawsql.fetchone(sql, [user_id, *perm_params, *lease_params, project_id])


def project_for_action(*, user: AnyUser, project_id: int, action: str, with_active_lease: bool = False) -> Project:
    """The project, in one query, when ``user`` may do ``action`` in it (same rules as ``access.require``).

    Non-members (and unknown ids) get ``Http404``; members without the right get
    ``PermissionDeniedError``. The project comes with its template version joined and the
    user's role cached for ``access.can``; with ``with_active_lease``, ``active_assignment_id``
    says whether the user holds a lease in it (for :func:`annotate.queue.task_next`).
    """
    if action not in ACTION_PERMISSIONS:
        raise ValueError(f"unknown project action {action!r}")
    if not user.is_authenticated or not user.is_active:
        raise Http404("No such project")
    try:
        project_id = int(project_id)
    except (TypeError, ValueError):
        raise Http404("No such project") from None
    row = _project_row(user_id=user.pk, project_id=project_id, action=action, with_active_lease=with_active_lease)
    if row is None:
        raise Http404("No such project")
    project_end = rawsql.width(Project)
    version_end = project_end + rawsql.width(AnnotationTemplateVersion)
    project = rawsql.load(Project, row[:project_end])
    project.template_version = (
        rawsql.load(AnnotationTemplateVersion, row[project_end:version_end]) if row[project_end] is not None else None
    )
    role, perm_bits, lease_id = row[version_end:]
    may_view, may_act = bool(perm_bits & 1), bool(perm_bits & 2)
    if with_active_lease:
        project.active_assignment_id = lease_id  # type: ignore[attr-defined]
    if user.is_superuser:
        project._membership_roles = {}  # type: ignore[attr-defined]
        return project
    project._membership_roles = {user.pk: role}  # type: ignore[attr-defined]
    if role is None or not may_view or "view" not in ROLE_ACTIONS[role]:
        raise Http404("No such project")
    if not may_act or action not in ROLE_ACTIONS[role]:
        raise PermissionDeniedError(f"You may not {action} in project {project.name!r}.")
    return project


# --- template rules -------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _normalised_schema(version_id: int, schema_json: str) -> dict[str, Any]:
    import json

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
    import json

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


def active_assignment(*, project: Project, user: AnyUser) -> TaskAssignment | None:
    """The annotator's current lease in ``project`` (with task and prompt), or None: one query."""
    return (
        TaskAssignment.objects.filter(project=project, annotator=user.pk, status=AssignmentStatus.ACTIVE)
        .select_related("task__prompt", "template_version")
        .first()
    )


def task_images(*, task_id: int) -> list[dict[str, Any]]:
    """``[{"id", "url", "position", "width", "height"}]`` in display order: one query.

    Plain SQL: every "next task" reads them, and compiling the ORM query cost more than
    running it (the ids come back as UUIDs on every database, as the ORM returns them).
    """
    from generation.models import GeneratedImage  # generation imports annotate: import lazily

    rows = rawsql.fetchall(
        f"SELECT ti.image_id, ti.position, gi.width, gi.height FROM {rawsql.table(TaskImage)} ti "  # noqa: S608
        f"JOIN {rawsql.table(GeneratedImage)} gi ON gi.id = ti.image_id WHERE ti.task_id = %s ORDER BY ti.position",
        [task_id],
    )
    images = []
    for raw_id, position, width, height in rows:
        image_id = rawsql.value(TaskImage, "image", raw_id)
        images.append({"id": str(image_id), "url": image_url(image_id), "position": position, "width": width,
                       "height": height})
    return images


def image_scores(*, reward_version_id: int, image_ids: Sequence[Any]) -> dict[str, float]:
    """Stored reward-model scores ``{image id: score}`` (one query); images not scored yet are absent."""
    from rlhf.models import ImageScore  # rlhf imports annotate: import lazily

    if not image_ids:
        return {}
    return {str(image_id): score for image_id, score in ImageScore.objects.filter(
        reward_version_id=reward_version_id, image_id__in=list(image_ids)).values_list("image_id", "score")}


def task_images_for_annotator(*, project: Project, task_id: int) -> list[dict[str, Any]]:
    """:func:`task_images`, ordered by the project's pre-sort reward model when it has one.

    Highest stored score first; images without a score keep their display order after the
    scored ones. Two queries at most; the ranking an annotator submits names image ids, so the
    order shown changes nothing stored.
    """
    images = task_images(task_id=task_id)
    if project.presort_reward_version_id is None or len(images) < 2:
        return images
    scores = image_scores(reward_version_id=project.presort_reward_version_id,
                          image_ids=[image["id"] for image in images])
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


def review_task_ids(*, project: Project, page: Any, per_page: int) -> list[int]:
    """The ids of the tasks on one page of :func:`tasks_for_review` (same order, same paging): two queries."""
    from django.core.paginator import Paginator

    ids = AnnotationTask.objects.filter(project=project).order_by("position").values_list("pk", flat=True)
    return list(Paginator(ids, per_page).get_page(page).object_list)


def reward_versions_for_review(*, user: AnyUser) -> QuerySet[Any]:
    """The reward-model versions ``user`` may score with (``rlhf.run_selectors.reward_versions_for_user``)."""
    from rlhf.run_selectors import reward_versions_for_user  # rlhf imports annotate: import lazily

    return reward_versions_for_user(user=user)


def annotations_for_project(*, project: Project) -> QuerySet[Annotation]:
    return (
        Annotation.objects.filter(project=project)
        .select_related("annotator", "task__prompt")
        .order_by("-created_at", "-pk")
    )


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
