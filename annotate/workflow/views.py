"""Pages of the annotation workflow: the annotator's task page, own submissions, prompt sets,
project settings, and the admins' review and agreement pages.

One view and one template per page; an htmx request gets the template's fragment. Every
htmx POST sits on a real ``<form action>``; without JavaScript the same forms post normally
and get a 303 redirect (PRG).
"""

from __future__ import annotations

import contextlib
import string
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from annotate.builder.components import EDIT_COMPONENTS
from annotate.builder.selectors import annotation_form_components
from annotate.models import (
    AnnotationStatus,
    AnnotationTemplateVersion,
    AssignmentStatus,
    TaskAssignment,
    TaskImport,
    TaskOrder,
)
from annotate.workflow import agreement, edit_input, model_agreement, queue
from annotate.workflow import selectors as workflow_selectors
from annotate.workflow import services as workflow_services
from annotate.workflow.access import workflow_of
from annotate.workflow.access import workflow_view as project_view
from annotate.workflow.imports import services as import_services
from annotate.workflow.queue import Handout
from annotate.workflow.scoring import reward_scores
from annotate.workflow.services import Submission
from core.exceptions import ApplicationError
from core.htmx import is_htmx, redirect_after_post, render_page_or_partial
from generation import selectors as generation_selectors
from generation import services as generation_services
from generation.models import GeneratedImage, GenerationJob, JobStatus, ModelVersion
from projects.models import Project
from projects.services import project_set_archived

TASK_TEMPLATE = "annotate/task_annotate.html"


def letters_by_image(images: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {image["id"]: {**image, "letter": string.ascii_uppercase[i % 26]} for i, image in enumerate(images)}


def ranking_display(ranking: list[list[str]], by_id: dict[str, dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Tie groups of ``{"id", "letter", "url"}`` for templates."""
    return [[by_id.get(image, {"id": image, "letter": "?", "url": "", "score": None}) for image in group]
            for group in ranking]


# --- the annotator's page ---------------------------------------------------------------------


def _task_context(request: HttpRequest, project: Project, handout: Handout, *,
                  error: ApplicationError | None = None) -> dict[str, Any]:
    workflow = workflow_of(project)
    context: dict[str, Any] = {
        "project": project,
        "workflow": workflow,
        "handout": handout,
        "task": handout.task,
        "error": error,
        "progress": workflow_selectors.annotator_progress(project=project, user=request.user),
        "free_prompt": next((c for c in workflow_selectors.components_of(workflow.template_version, "prompt_input")
                             if c["config"]["mode"] == "free"), None),
    }
    if handout.task is None:
        return context
    assignment = handout.assignment
    version = assignment.template_version
    images = workflow_selectors.task_images_for_annotator(project=project, task_id=handout.task.pk)
    schema = workflow_selectors.template_schema(version)
    items = annotation_form_components(schema=schema, images=images, prompt=handout.task.prompt.text)
    has_prompt_input = any(c["type"] == "prompt_input" for c in items)
    context.update(_edit_context(project, assignment, images))
    context["edited_from"] = _edited_from(images)
    context.update(
        assignment=assignment,
        images=images,
        items=items,
        has_text=any(c["type"] == "text" for c in items),
        has_prompt_input=has_prompt_input,
        generate=next((c for c in items if c["type"] == "generate_button"), None),
        ranking=workflow_selectors.ranking_component(version),
        idempotency_key=f"assignment-{assignment.pk}",
        keys=[(i + 1, string.ascii_uppercase[i]) for i in range(len(images))],
        can_generate=not images and generation_selectors.project_model_versions(project=project).exists(),
        job_id=request.GET.get("job", "") if request.GET.get("job", "").isdecimal() else "",
    )
    return context


def _edit_context(project: Project, assignment: TaskAssignment, images: list[dict[str, Any]]) -> dict[str, Any]:
    """The edit form's components when the task's template edits a source image (``edit_plan``): shown while
    the task has no candidates, and under the candidates when one of them may be edited."""
    plan = workflow_services.task_edit_plan(assignment=assignment)
    if plan is None:
        return {"edit": None}
    version = generation_selectors.project_model_versions(project=project).first()
    if version is None:
        return {"edit": None}
    if images and "candidate" not in plan.source["config"]["sources"]:
        return {"edit": None}
    limits = generation_services.edit_limits(version)
    task_image, candidates = workflow_services.task_edit_sources(task=assignment.task)
    wanted = {plan.source["name"], plan.generate,
              *(c["name"] for c in (plan.mask, plan.outpaint, plan.strength) if c is not None)}
    schema = workflow_selectors.template_schema(assignment.template_version)
    items = [item for item in annotation_form_components(schema=schema, edit_limits=limits)
             if item["name"] in wanted and item["type"] in EDIT_COMPONENTS]
    for item in items:
        if item["type"] == "source_image":
            item["limits"] = limits
            item["max_upload_label"] = edit_input.megabytes(int(limits["max_upload_bytes"]))
            item["task_image"] = ({"id": str(task_image.pk), "url": workflow_selectors.image_url(task_image.pk)}
                                  if task_image is not None else None)
            item["candidates"] = [{"id": str(image.pk), "url": workflow_selectors.image_url(image.pk)}
                                  for image in candidates]
    return {"edit": {"plan": plan, "items": items, "limits": limits, "on_candidates": bool(images),
                     "button": next((c for c in schema["components"] if c["name"] == plan.generate), None)}}


EDIT_LABELS = {"img2img": "Image-to-image edits", "inpaint": "Inpaintings", "outpaint": "Outpaintings"}


def _edited_from(images: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the candidates were edited from (source, mask, strength or box), shown beside the prompt; None
    when they are not edits. One query."""
    if not images:
        return None
    first = GeneratedImage.objects.filter(pk=images[0]["id"]).only("pk", "edit").first()
    info = generation_selectors.image_edit_info(first) if first is not None else {}
    return {**info, "label": EDIT_LABELS.get(info["kind"], "Edits")} if info else None


def _render_task(request: HttpRequest, project: Project, handout: Handout, *,
                 error: ApplicationError | None = None) -> HttpResponse:
    context = _task_context(request, project, handout, error=error)
    return render_page_or_partial(request, TASK_TEMPLATE, "task", context, status=400 if error else 200)


@require_GET
@project_view("annotate")
def task_annotate(request: HttpRequest, project: Project) -> HttpResponse:
    """The annotator's page: their leased task (a new one when they hold none)."""
    try:
        handout = queue.task_next(project=project, user=request.user)
    except ApplicationError as exc:
        return _render_task(request, project, Handout(None), error=exc)
    return _render_task(request, project, handout)


@require_POST
@project_view("annotate")
def task_submit(request: HttpRequest, project: Project, task_id: int) -> HttpResponse:
    """Store the answer; htmx gets the next task's fragment in the same response, a plain POST a 303."""
    duration = request.POST.get("duration_ms", "")
    submission = Submission(
        idempotency_key=request.POST.get("idempotency_key", ""),
        form=request.POST,
        duration_ms=int(duration) if duration.isdecimal() else None,
    )
    try:
        workflow_services.annotation_submit(project=project, user=request.user, task_id=task_id,
                                            submission=submission)
    except ApplicationError as exc:
        return _render_task(request, project, queue.task_next(project=project, user=request.user), error=exc)
    if not is_htmx(request):
        return redirect_after_post(request, reverse("annotate:task_annotate", args=[project.pk]))
    return _render_task(request, project, queue.task_next(project=project, user=request.user))


@require_POST
@project_view("annotate")
def task_skip(request: HttpRequest, project: Project, task_id: int) -> HttpResponse:
    try:
        queue.assignment_skip(project=project, user=request.user, task_id=task_id,
                              reason=request.POST.get("reason", ""))
    except ApplicationError as exc:
        return _render_task(request, project, queue.task_next(project=project, user=request.user), error=exc)
    if not is_htmx(request):
        return redirect_after_post(request, reverse("annotate:task_annotate", args=[project.pk]))
    return _render_task(request, project, queue.task_next(project=project, user=request.user))


@require_POST
@project_view("annotate")
def task_prompt(request: HttpRequest, project: Project) -> HttpResponse:
    """An annotator typed their own prompt: it becomes a task leased to them."""
    try:
        workflow_services.task_create_typed(project=project, user=request.user,
                                            prompt_text=request.POST.get("prompt", ""))
    except ApplicationError as exc:
        return _render_task(request, project, queue.task_next(project=project, user=request.user), error=exc)
    return redirect_after_post(request, reverse("annotate:task_annotate", args=[project.pk]))


# --- the annotator's own submissions ----------------------------------------------------------


@require_GET
@project_view("annotate")
def review_mine(request: HttpRequest, project: Project) -> HttpResponse:
    annotations = list(workflow_selectors.recent_annotations(project=project, user=request.user))
    images = workflow_selectors.images_for_tasks(task_ids=[a.task_id for a in annotations])
    rows = [{"annotation": a, "ranking": ranking_display(a.ranking, letters_by_image(images.get(a.task_id, [])))}
            for a in annotations]
    return render(request, "annotate/review_mine.html", {"project": project, "rows": rows})


@require_http_methods(["GET", "POST"])
@project_view("annotate")
def review_amend(request: HttpRequest, project: Project, annotation_id: int) -> HttpResponse:
    annotation = workflow_selectors.annotation_for_annotator(project=project, user=request.user,
                                                             annotation_id=annotation_id)
    error = None
    if request.method == "POST":
        try:
            workflow_services.annotation_amend(
                project=project, user=request.user, annotation_id=annotation.pk,
                submission=Submission(idempotency_key=request.POST.get("idempotency_key", ""), form=request.POST),
            )
        except ApplicationError as exc:
            error = exc
        else:
            return redirect_after_post(request, reverse("annotate:review_mine", args=[project.pk]))
    images = workflow_selectors.task_images(task_id=annotation.task_id)
    by_id = letters_by_image(images)
    schema = workflow_selectors.template_schema(annotation.template_version)
    items = annotation_form_components(schema=schema, images=images, prompt=annotation.task.prompt.text)
    history = [{"annotation": a, "ranking": ranking_display(a.ranking, by_id)}
               for a in workflow_selectors.annotation_history(annotation=annotation)]
    return render(request, "annotate/review_amend.html", {
        "project": project, "annotation": annotation, "items": items, "history": history, "error": error,
        "has_text": any(c["type"] == "text" for c in items), "idempotency_key": f"amend-{annotation.pk}",
    }, status=400 if error else 200)


# --- prompt sets and settings -----------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@project_view("manage")
def promptset_list(request: HttpRequest, project: Project) -> HttpResponse:
    """Upload a prompt file (CSV, JSONL or text) and see the sets imported so far."""
    error: ApplicationError | None = None
    if request.method == "POST":
        upload = request.FILES.get("file")
        if upload is None:
            error = ApplicationError("Choose a file to upload.", field="file")
        else:
            limit = workflow_services.prompt_import.MAX_FILE_BYTES
            data = upload.read(limit + 1)
            try:
                report = workflow_services.prompt_set_import(
                    project=project, data=data, filename=upload.name or "", created_by=request.user,
                    fmt=request.POST.get("format") or None, name=request.POST.get("name", ""),
                    deduplicate=request.POST.get("deduplicate") == "on",
                )
            except ApplicationError as exc:
                error = exc
            else:
                request.session["last_import"] = report.as_dict()
                return redirect_after_post(request, reverse("annotate:promptset_list", args=[project.pk]))
    last_import = request.session.pop("last_import", None) if request.method == "GET" else None
    return render(request, "annotate/promptset_list.html", {
        "project": project, "prompt_sets": workflow_selectors.prompt_sets(project=project), "error": error,
        "errors": (error.extra.get("errors") if error else None) or [], "last_import": last_import,
    }, status=400 if error else 200)


@require_http_methods(["GET", "POST"])
@project_view("manage")
def project_settings(request: HttpRequest, project: Project) -> HttpResponse:
    versions = AnnotationTemplateVersion.objects.filter(
        template__project=project, status=AnnotationTemplateVersion.Status.PUBLISHED
    ).select_related("template").order_by("template__name", "-number")
    error: ApplicationError | None = None
    if request.method == "POST":
        post = request.POST
        action = post.get("action", "save")
        try:
            if action in ("archive", "unarchive"):
                project_set_archived(project=project, archived=action == "archive")
            else:
                version_id = post.get("template_version", "")
                version = versions.filter(pk=version_id).first() if version_id.isdecimal() else None
                if version_id and version is None:
                    raise ApplicationError("Choose one of this project's published versions.",
                                           field="template_version")
                presort = post.get("presort_reward_version")
                workflow_services.project_update_settings(
                    project=project, user=request.user,
                    presort_reward_version_id="unchanged" if presort is None else (presort or None),
                    description=post.get("description", ""),
                    instructions=post.get("instructions", ""), template_version=version,
                    images_per_task=_int(post, "images_per_task"), overlap=_int(post, "overlap"),
                    task_order=post.get("task_order") or None, gold_rate=_float(post, "gold_rate"),
                    lease_seconds=_int(post, "lease_seconds"),
                    model_version_ids=[int(v) for v in post.getlist("model_versions") if v.isdecimal()],
                )
        except ApplicationError as exc:
            error = exc
        else:
            return redirect_after_post(request, reverse("annotate:project_settings", args=[project.pk]))
    reward_versions = list(workflow_selectors.reward_versions_for_review(user=request.user))
    current = reward_scores().presort_version(project=project)
    if current is not None and current.pk not in {v.pk for v in reward_versions}:
        reward_versions.insert(0, current)  # chosen by another admin: shown, and kept when saving
    return render(request, "annotate/project_settings.html", {
        "project": project, "workflow": workflow_of(project), "versions": versions, "orders": TaskOrder.choices,
        "error": error, "model_versions": ModelVersion.objects.filter(enabled=True).order_by("name"),
        "chosen_versions": generation_selectors.project_model_version_ids(project=project),
        "reward_versions": reward_versions, "presort_version_id": current.pk if current is not None else None,
    }, status=400 if error else 200)


def _int(post: Any, key: str) -> int | None:
    value = (post.get(key) or "").strip()
    if not value:
        return None
    if not value.lstrip("-").isdecimal() or len(value) > 19:
        raise ApplicationError(f"{key.replace('_', ' ').capitalize()} must be a whole number.", field=key)
    return int(value)


def _float(post: Any, key: str) -> float | None:
    value = (post.get(key) or "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ApplicationError(f"{key.replace('_', ' ').capitalize()} must be a number.", field=key) from None


# --- review (project admins) ------------------------------------------------------------------


REVIEW_PAGE_SIZE = 25


def _chosen_reward(value: str, versions: list[Any]) -> Any:
    """The reward version picked with ``?reward=<id>`` among those the user may use (None: none picked)."""
    if not value:
        return None
    chosen = next((v for v in versions if str(v.pk) == value), None)
    if chosen is None:
        raise ApplicationError("Choose one of the reward models listed.", field="reward")
    return chosen


def _model_comparison(by_id: dict[str, dict[str, Any]], annotations: list[Any],
                      scores: dict[str, float]) -> dict[str, Any]:
    """The reward model's ordering of a task's images and where it disagrees with the humans.

    ``pairs`` are the disagreements with the Borda consensus of the submitted rankings (each
    annotation gets its own in ``by_annotation``); a tie on the human side is no disagreement.
    """
    items = list(by_id)

    def display(pairs: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
        return [{"preferred": by_id[a], "other": by_id[b]} for a, b in pairs]

    submitted = [a.ranking for a in annotations if a.status == AnnotationStatus.SUBMITTED]
    consensus = agreement.consensus(submitted, items) if submitted else None
    pairs = display(model_agreement.disagreeing_pairs(consensus, scores, items)) if consensus else []
    return {
        "order": ranking_display(model_agreement.model_ranking(scores, items), by_id),
        "unscored": [image for image in by_id.values() if image["score"] is None],
        "consensus": ranking_display(consensus, by_id) if consensus else None,
        "pairs": pairs,
        "by_annotation": {a.pk: display(model_agreement.disagreeing_pairs(a.ranking, scores, items))
                          for a in annotations},
    }


@require_GET
@project_view("review")
def review_tasks(request: HttpRequest, project: Project) -> HttpResponse:
    """Tasks with every annotator's ranking side by side (paginated; fixed query count per page).

    Filters (query parameters, kept by the pagination links): ``status`` (unanswered, answered,
    rejected, gold), ``annotator`` (a username: only tasks they answered, and the status is theirs),
    ``disagreement`` (any, 25, 50: the annotators disagree on that share of image pairs or more) and
    ``sort`` (position, or disagreement: most first). With ``?reward=<id>`` each task also shows that
    reward model's stored scores, its ordering and the pairs where it disagrees with the annotators.
    """
    reward_versions = list(workflow_selectors.reward_versions_for_review(user=request.user))
    error: ApplicationError | None = None
    try:
        filters = workflow_selectors.review_filters_parse(request.GET)
    except ApplicationError as exc:
        filters, error = workflow_selectors.ReviewFilters(), exc
    try:
        reward = _chosen_reward(request.GET.get("reward", ""), reward_versions)
    except ApplicationError as exc:
        reward, error = None, error or exc
    listing = workflow_selectors.review_page(project=project, filters=filters, page=request.GET.get("page"),
                                             per_page=REVIEW_PAGE_SIZE)
    tasks = listing.tasks
    scores = workflow_selectors.image_scores(
        reward_version_id=reward.pk, image_ids=[ti.image_id for task in tasks for ti in task.task_images.all()]
    ) if reward is not None else {}
    rows, unscored = [], 0
    for task in tasks:
        images = [{"id": str(ti.image_id), "url": workflow_selectors.image_url(ti.image_id),
                   "score": scores.get(str(ti.image_id))} for ti in task.task_images.all()]
        by_id = letters_by_image(images)
        annotations = list(task.annotations.all())
        model = _model_comparison(by_id, annotations, scores) if reward is not None else None
        unscored += len(model["unscored"]) if model else 0
        rows.append({
            "task": task, "images": list(by_id.values()), "model": model,
            "disagreement": agreement.disagreement(
                [a.ranking for a in annotations if a.status == AnnotationStatus.SUBMITTED]),
            "submitted": sum(1 for a in annotations if a.status == AnnotationStatus.SUBMITTED),
            "annotations": [{"annotation": a, "ranking": ranking_display(a.ranking, by_id),
                             "model_pairs": model["by_annotation"][a.pk] if model else [],
                             "chosen": a.annotator.username == filters.annotator}
                            for a in annotations],
            "gold": ranking_display(task.gold_ranking, by_id) if task.gold_ranking else None,
        })
    query = filters.as_query() | ({"reward": str(reward.pk)} if reward is not None else {})
    return render_page_or_partial(request, "annotate/review_tasks.html", "rows", {
        "project": project, "page": listing.page, "rows": rows, "reward_versions": reward_versions,
        "reward": reward, "unscored": unscored, "error": error, "filters": filters,
        "filtered": bool(filters.as_query()), "page_query": urlencode(query),
        "statuses": workflow_selectors.REVIEW_STATUSES.items(),
        "disagreements": [(key, label) for key, (label, _) in workflow_selectors.REVIEW_DISAGREEMENTS.items()],
        "sorts": workflow_selectors.REVIEW_SORTS.items(),
        "annotators": workflow_selectors.review_annotators(project=project),
    }, status=400 if error else 200)


@require_POST
@project_view("review")
def review_score(request: HttpRequest, project: Project) -> HttpResponse:
    """Queue the chosen reward model's scoring of the images of one review page's tasks (PRG)."""
    reward, page = request.POST.get("reward", ""), request.POST.get("page", "1")
    filters = workflow_selectors.ReviewFilters()
    try:
        filters = workflow_selectors.review_filters_parse(request.POST)
        if not reward.isdecimal():
            raise ApplicationError("Choose a reward model first.", field="reward")
        task_ids = workflow_selectors.review_task_ids(project=project, page=page, per_page=REVIEW_PAGE_SIZE,
                                                      filters=filters)
        queued = workflow_services.task_images_score_request(
            project=project, user=request.user, reward_version_id=int(reward), task_ids=task_ids)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Queued {len(queued)} image(s) for scoring; reload the page to see the scores."
                         if queued else "Every image on this page is scored already.")
    query = filters.as_query() | ({"reward": reward} if reward.isdecimal() else {}) | {"page": page}
    return redirect_after_post(request, f"{reverse('annotate:review_tasks', args=[project.pk])}?{urlencode(query)}")


@require_POST
@project_view("review")
def review_reject(request: HttpRequest, project: Project, annotation_id: int) -> HttpResponse:
    try:
        workflow_services.annotation_reject(project=project, annotation_id=annotation_id, reviewer=request.user,
                                            note=request.POST.get("note", ""))
    except ApplicationError as exc:
        return render(request, "annotate/project_forbidden.html", {"message": exc.message}, status=400)
    return redirect_after_post(request, request.POST.get("next") if _safe_next(request) else
                               reverse("annotate:review_tasks", args=[project.pk]))


def _safe_next(request: HttpRequest) -> bool:
    target = request.POST.get("next", "")
    return bool(target) and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()})


@require_GET
@project_view("review")
def review_stats(request: HttpRequest, project: Project) -> HttpResponse:
    """Per-annotator stats and project agreement, as tables and bar charts."""
    result = workflow_selectors.project_agreement(project=project)
    return render(request, "annotate/review_stats.html", {"project": project, "agreement": result})


# --- Generate with live progress ------------------------------------------------------------


def _leased_task(project: Project, user: Any, task_id: int) -> TaskAssignment:
    assignment = (TaskAssignment.objects.select_related("task__prompt")
                  .filter(project=project, annotator=user.pk, task_id=task_id, status=AssignmentStatus.ACTIVE).first())
    if assignment is None:
        raise Http404("No such task leased to you")
    return assignment


@require_POST
@project_view("annotate")
def task_generate(request: HttpRequest, project: Project, task_id: int) -> HttpResponse:
    """Generate the leased task's candidates (a generation job); the page then polls its progress."""
    assignment = _leased_task(project, request.user, task_id)
    chosen = request.POST.get("model_version", "")
    try:
        job = workflow_services.task_generation_start(
            project=project, user=request.user, assignment=assignment,
            model_version_id=int(chosen) if chosen.isdigit() else None)
    except ApplicationError as exc:
        return _render_task(request, project, Handout(assignment), error=exc)
    url = reverse("annotate:task_annotate", args=[project.pk]) + f"?job={job.pk}"
    if not is_htmx(request):
        return redirect_after_post(request, url)
    return _generation_progress(request, project, assignment, job)


def _edit_input(request: HttpRequest, plan: Any, limits: dict[str, Any]) -> workflow_services.EditInput:
    """The edit form's fields (named after the template's components) as an ``EditInput``."""
    post, source = request.POST, plan.source
    sources = source["config"]["sources"]
    source_from = post.get(f"{source['name']}.from", "") or ("upload" if sources == ["upload"] else "")
    upload = (edit_input.read_upload(request.FILES.get(f"{source['name']}.file"), limits=limits,
                                     field="source_image", plan=plan)
              if source_from == "upload" else None)
    mask = (edit_input.read_upload(request.FILES.get(f"{plan.mask['name']}.png"), limits=limits, field="mask",
                                   plan=plan)
            if plan.kind == "inpaint" and plan.mask is not None else None)
    strength = edit_input.parse_strength(post.get(plan.strength["name"], "") if plan.strength else "", plan=plan)
    name = plan.outpaint["name"] if plan.outpaint is not None else ""
    box = edit_input.parse_outpaint({side: post.get(f"{name}.{side}", "") for side in edit_input.SIDES}, plan=plan)
    return workflow_services.EditInput(source_from=source_from, upload=upload, mask=mask, strength=strength,
                                       outpaint=box)


def _edit_failed(request: HttpRequest, project: Project, assignment: TaskAssignment,
                 exc: ApplicationError) -> HttpResponse:
    """htmx: the located error in the generation region, the form (its painted mask, its file) untouched;
    a plain POST: the page with the error."""
    if is_htmx(request):
        return render(request, "annotate/task_annotate.html#edit_error", {"error": exc}, status=400)
    return _render_task(request, project, Handout(assignment), error=exc)


@csrf_exempt  # checked below by csrf_protect, once the body's size is known to be acceptable
@require_POST
@project_view("annotate")
def task_generate_edit(request: HttpRequest, project: Project, task_id: int) -> HttpResponse:
    """Generate the leased task's candidates as edits of a source image (multipart: the source upload or
    the chosen image, the mask PNG, the strength, the outpaint box). A body larger than two files at the
    model's upload limit is refused before it is read."""
    assignment = _leased_task(project, request.user, task_id)
    plan = workflow_services.task_edit_plan(assignment=assignment)
    version = generation_selectors.project_model_versions(project=project).first()
    if plan is None or version is None:
        return _edit_failed(request, project, assignment, ApplicationError(
            "This task has nothing to edit with: its template has no Source image or the project no model.",
            field="source_image"))
    limits = generation_services.edit_limits(version)
    too_large = edit_input.body_too_large(request.META.get("CONTENT_LENGTH") or "", limits=limits, plan=plan)
    if too_large is not None:
        # Not read: the CSRF check would parse it. The connection carries the rest, which Django discards.
        return _edit_failed(request, project, assignment, too_large)
    return _task_generate_edit_checked(request, project, assignment, plan, limits)


@csrf_protect
def _task_generate_edit_checked(request: HttpRequest, project: Project, assignment: TaskAssignment, plan: Any,
                                limits: dict[str, Any]) -> HttpResponse:
    chosen = request.POST.get("model_version", "")
    try:
        edit = _edit_input(request, plan, limits)
        job = workflow_services.task_edit_generation_start(
            project=project, user=request.user, assignment=assignment, edit=edit,
            model_version_id=int(chosen) if chosen.isdigit() else None)
    except ApplicationError as exc:
        return _edit_failed(request, project, assignment, exc)
    url = reverse("annotate:task_annotate", args=[project.pk]) + f"?job={job.pk}"
    if not is_htmx(request):
        return redirect_after_post(request, url)
    return _generation_progress(request, project, assignment, job)


def _generation_progress(request: HttpRequest, project: Project, assignment: TaskAssignment,
                         job: GenerationJob) -> HttpResponse:
    """Only reads: the job's images joined the task in the service that marked the job succeeded."""
    job.refresh_from_db()
    if job.status == JobStatus.SUCCEEDED:
        if not is_htmx(request):
            return redirect_after_post(request, reverse("annotate:task_annotate", args=[project.pk]))
        # The task, now with its images to rank, replaces the whole task region in place (no page reload):
        # the same fragment a submit answers with. 286 stops the poll.
        task = _render_task(request, project, Handout(assignment))
        response = HttpResponseStopPolling(task.content)
        response["Content-Type"] = task["Content-Type"]
        response["HX-Retarget"] = "#task-region"
        response["HX-Reswap"] = "innerHTML"
        return response
    poll_url = reverse("annotate:task_generation", args=[project.pk, assignment.task_id, job.pk])
    response = render(request, "components/generation_progress.html",
                      {"status": generation_selectors.job_status(job), "poll_url": poll_url,
                       "poll_ms": generation_selectors.poll_interval_ms(job)})
    if job.is_finished:
        stop = HttpResponseStopPolling(response.content)
        stop["Content-Type"] = response["Content-Type"]
        return stop
    return response


@require_GET
@project_view("annotate")
def task_generation(request: HttpRequest, project: Project, task_id: int, job_id: int) -> HttpResponse:
    """The progress fragment of the leased task's generation job (htmx polls it every second)."""
    assignment = _leased_task(project, request.user, task_id)
    job = GenerationJob.objects.filter(pk=job_id, project=project, created_by=request.user).first()
    if job is None:
        raise Http404("No such generation job")
    return _generation_progress(request, project, assignment, job)


# --- task imports with candidate images ---------------------------------------------------------


@require_http_methods(["GET", "POST"])
@project_view("manage")
def task_import(request: HttpRequest, project: Project) -> HttpResponse:
    """Upload a table (CSV, JSONL, Parquet, a zipped dataset) with its images, or name files under the
    import root; check it (dry run) or import it. Small imports finish in the request, larger ones on a
    worker: either way the answer is a redirect to the import's page."""
    error: ApplicationError | None = None
    if request.method == "POST":
        table = request.FILES.get("file")
        try:
            created = import_services.task_import_create(
                project=project, user=request.user, name=request.POST.get("name", ""),
                fmt=request.POST.get("format") or None, dry_run="check" in request.POST,
                table=table, table_path=(request.POST.get("path") or "").strip() if table is None else "",
                images=request.FILES.getlist("images"), images_zip=request.FILES.get("images_zip"),
                images_path=(request.POST.get("images_path") or "").strip(),
                options=import_services.ImportOptions(deduplicate=request.POST.get("deduplicate") == "on",
                                                      key_column=(request.POST.get("key_column") or "").strip()),
            )
        except ApplicationError as exc:
            error = exc
        else:
            import_services.task_import_start(task_import=created)
            return redirect_after_post(request, reverse("annotate:task_import_detail", args=[project.pk, created.pk]))
    imports = TaskImport.objects.filter(project=project).select_related("created_by").order_by("-created_at")[:20]
    return render(request, "annotate/import_list.html", {
        "project": project, "imports": imports, "error": error, "import_root": bool(settings.IMPORT_ROOT),
        "workflow": workflow_of(project),
    }, status=400 if error else 200)


@require_GET
@project_view("manage")
def task_import_detail(request: HttpRequest, project: Project, import_id: int) -> HttpResponse:
    """An import's progress bar (htmx polls the fragment until it ends) and its report."""
    task_import = TaskImport.objects.filter(project=project, pk=import_id).select_related("prompt_set").first()
    if task_import is None:
        raise Http404("No such import")
    response = render_page_or_partial(request, "annotate/import_detail.html", "progress",
                                      {"project": project, "task_import": task_import})
    if is_htmx(request) and task_import.is_finished:
        stop = HttpResponseStopPolling(response.content)
        stop["Content-Type"] = response["Content-Type"]
        return stop
    return response


@require_POST
@project_view("manage")
def task_import_cancel(request: HttpRequest, project: Project, import_id: int) -> HttpResponse:
    task_import = TaskImport.objects.filter(project=project, pk=import_id).first()
    if task_import is None:
        raise Http404("No such import")
    with contextlib.suppress(ApplicationError):  # it finished meanwhile: the page says how
        import_services.task_import_cancel(task_import=task_import)
    return redirect_after_post(request, reverse("annotate:task_import_detail", args=[project.pk, import_id]))
