"""Pages of the loop: a project's round timeline, the blind arena and its results, an evaluation report."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods
from django_htmx.http import HttpResponseStopPolling

from annotate.workflow.selectors import image_url
from core.charts import Chart, Series, line_chart_svg
from core.exceptions import ApplicationError
from core.htmx import redirect_after_post, render_page_or_partial
from generation.models import GenerationJob, JobStatus
from generation.selectors import model_versions_enabled
from projects import roles
from projects.access import project_check, project_view, user_can
from projects.models import Project
from rlhf.loop import arena as arena_services
from rlhf.loop.evaluate import SAMPLE_SIDES, evaluation_sample_key
from rlhf.loop.forms import ArenaSetupForm, RoundStartForm
from rlhf.loop.rounds import RoundConfig, loop_round_start, project_current_version, rounds_for_project
from rlhf.models import Arena, RunStatus, VersionEvaluation
from rlhf.preferences import PREFERENCES
from rlhf.runs.selectors import finetune_start_versions


def _rounds_chart(rounds: list) -> str:
    """Preference and adherence of each round's new version, by round (needs two finished rounds)."""
    done = [r for r in rounds if r.stats.get("score_version") is not None]
    if len(done) < 2:
        return ""
    chart = Chart(title="Each round's new version", x_label="round", markers=True, series=[
        Series("preference score", [(r.number, r.stats.get("score_version")) for r in done]),
        Series("adherence", [(r.number, r.stats.get("adherence_version")) for r in done], dashed=True),
    ])
    return line_chart_svg(chart)


def _rounds_grid(rounds: list) -> dict[str, Any] | None:
    """The same held-out captions and seeds by every version: the base, then each finished round's new version.

    From the images each round's evaluation against the base kept (``stats["against_base"]``, whose
    ``samples`` list them); one row per (caption, seed), one column per version, None where a version has no
    image for the row (an evaluation on other captions). One query, however many rounds. None before the first
    round is evaluated.
    """
    done = [r for r in rounds if (r.stats.get("against_base") or {}).get("evaluation") and r.output_version]
    if not done:
        return None
    evaluations = {e.pk: e for e in VersionEvaluation.objects.filter(
        pk__in=[r.stats["against_base"]["evaluation"] for r in done]).only("pk", "results", "baseline_id")}
    columns: list[dict[str, Any]] = [{"title": f"base ({done[0].input_version.name})"
                                      if done[0].number == 1 else "base"}]
    cells: dict[tuple[str, int], dict[int, str]] = {}
    for column, r in enumerate(done, start=1):
        evaluation = evaluations.get(r.stats["against_base"]["evaluation"])
        columns.append({"title": f"round {r.number} ({r.output_version.name})"})
        for sample in ((evaluation.results or {}).get("samples") or []) if evaluation else []:
            row = cells.setdefault((sample["prompt"], sample["seed"]), {})
            row[column] = reverse("rlhf:evaluation_sample", args=[evaluation.pk, "version", sample["index"]])
            row.setdefault(0, reverse("rlhf:evaluation_sample", args=[evaluation.pk, "baseline", sample["index"]]))
    if not cells:
        return None
    rows = [{"prompt": prompt, "seed": seed, "cells": [row.get(i) for i in range(len(columns))]}
            for (prompt, seed), row in cells.items()]
    return {"columns": columns, "rows": rows}


def _round_form(request: HttpRequest, project: Project) -> RoundStartForm | None:
    """The Start-a-round form for users who may train in this project (None for everyone else)."""
    if not user_can(user=request.user, action="train", project=project):
        return None
    return RoundStartForm(request.POST if request.method == "POST" else None, preferences=sorted(PREFERENCES),
                          versions=finetune_start_versions(),
                          first_round=project_current_version(project=project) is None)


def _timeline(request: HttpRequest, project: Project, form: RoundStartForm | None, status: int = 200
              ) -> HttpResponse:
    rounds = rounds_for_project(project=project)
    running = any(r.status in (RunStatus.QUEUED, RunStatus.RUNNING) for r in rounds)
    context = {"project": project, "rounds": rounds, "chart": _rounds_chart(rounds), "form": form,
               "running": running, "grid": _rounds_grid(rounds)}
    response = render_page_or_partial(request, "rlhf/round_timeline.html", "timeline", context)
    response.status_code = status
    if getattr(request, "htmx", False) and request.method == "GET" and not running:
        return HttpResponseStopPolling(response.content)  # nothing left to follow
    return response


@project_view("view")
def round_timeline(request: HttpRequest, project: Project) -> HttpResponse:
    """The project's rounds as a timeline: data size, agreement, reward accuracy, preference/adherence change."""
    return _timeline(request, project, _round_form(request, project))


@project_view("train")
@require_http_methods(["POST"])
def round_start(request: HttpRequest, project: Project) -> HttpResponse:
    """Queue the project's next round (simulated annotators) for a gpu-train worker."""
    form = _round_form(request, project)
    if form is not None and form.is_valid():
        data = form.cleaned_data
        try:
            config = RoundConfig(prompts=data["prompts"], images_per_prompt=data["images_per_prompt"],
                                 annotators=data["annotators"], preference=data["preference"],
                                 temperature=data["temperature"], label_accuracy=data["label_accuracy"],
                                 method=data["method"],
                                 reward_model=data["method"] == "ddpo")
            loop_round_start(project=project, user=request.user, config=config,
                             start_version=data["start_version"])
        except ValueError as exc:
            form.add_error(None, str(exc))
        except ApplicationError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            return redirect_after_post(request, reverse("rlhf:round_timeline", args=[project.pk]))
    return _timeline(request, project, form, status=400)


@project_view("annotate")
@require_http_methods(["GET", "POST"])
def arena_vote(request: HttpRequest, project: Project) -> HttpResponse:
    """The blind arena: two images, no labels, A / tie / B."""
    arena = get_object_or_404(Arena, project=project)
    error = None
    if request.method == "POST":
        try:
            arena_services.arena_vote(arena=arena, user=request.user,
                                      comparison_id=int(request.POST.get("comparison") or 0),
                                      choice=request.POST.get("choice", ""))
            return redirect_after_post(request, reverse("rlhf:arena_vote", args=[project.pk]))
        except (ApplicationError, ValueError) as exc:
            error = str(exc)
    matchup = arena_services.arena_next(arena=arena, user=request.user)
    context = {"project": project, "matchup": matchup, "error": error,
               "left_url": image_url(matchup.left.pk) if matchup else "",
               "right_url": image_url(matchup.right.pk) if matchup else ""}
    return render_page_or_partial(request, "rlhf/arena_vote.html", "matchup", context)


@project_view("manage")
@require_http_methods(["GET", "POST"])
def arena_setup(request: HttpRequest, project: Project) -> HttpResponse:
    """Project admins make the project a blind arena between model versions; rendering runs on a gpu worker."""
    form = ArenaSetupForm(request.POST or None, versions=model_versions_enabled())
    if request.method == "POST" and form.is_valid():
        try:
            arena_services.arena_setup(project=project, user=request.user, versions=form.cleaned_data["versions"],
                                       prompts=form.prompt_list(), seeds=form.cleaned_data["seeds"])
        except ApplicationError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            return redirect_after_post(request, reverse("rlhf:arena_setup", args=[project.pk]))
    arena = Arena.objects.filter(project=project).prefetch_related("versions").first()
    context = {"project": project, "form": form, "arena": arena,
               "generation": arena_services.arena_generation_latest(arena=arena) if arena else None,
               "comparisons": arena.comparisons.count() if arena else 0,
               "pending_jobs": GenerationJob.objects.filter(
                   project=project, status__in=(JobStatus.QUEUED, JobStatus.RUNNING)).count()}
    return render(request, "rlhf/arena_setup.html", context, status=400 if form.errors else 200)


@project_view("view")
def arena_results(request: HttpRequest, project: Project) -> HttpResponse:
    arena = get_object_or_404(Arena, project=project)
    if not (user_can(user=request.user, action="train", project=project)
            or user_can(user=request.user, action="manage", project=project)):
        raise Http404("No such arena")  # voters never see which version won while they vote
    results = arena_services.arena_results(arena=arena)
    return render_page_or_partial(request, "rlhf/arena_results.html", "results",
                                  {"project": project, "results": results})


def _evaluation(request: HttpRequest, evaluation_id: int) -> VersionEvaluation:
    """The evaluation, for members of its project (or, without a project, users who may train); 404 otherwise."""
    evaluation = get_object_or_404(VersionEvaluation.objects.select_related("version", "baseline", "project"),
                                   pk=evaluation_id)
    if evaluation.project is not None:
        project_check(user=request.user, project=evaluation.project, action="view")
    elif not request.user.has_perm(roles.TRAIN):
        raise Http404("No such evaluation")
    return evaluation


@login_required
def evaluation_sample(request: HttpRequest, evaluation_id: int, side: str, index: int) -> FileResponse:
    """One image an evaluation kept (``side`` version or baseline), for whoever may read the evaluation."""
    evaluation = _evaluation(request, evaluation_id)
    kept = {sample["index"] for sample in (evaluation.results or {}).get("samples") or []}
    if side not in SAMPLE_SIDES or index not in kept:
        raise Http404("No such image")
    key = evaluation_sample_key(evaluation.pk, side, index)
    if not default_storage.exists(key):
        raise Http404("No such image")
    response = FileResponse(default_storage.open(key, "rb"), content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


@login_required
def evaluation_detail(request: HttpRequest, evaluation_id: int) -> HttpResponse:
    evaluation = _evaluation(request, evaluation_id)
    results = evaluation.results or {}
    relative = results.get("score_relative")
    low, high = results.get("score_relative_interval") or (None, None)
    relative_percent = None if relative is None else (
        100 * relative, None if low is None else 100 * low, None if high is None else 100 * high)
    return render_page_or_partial(request, "rlhf/evaluation_detail.html", "report",
                                  {"evaluation": evaluation, "results": results, "relative_percent": relative_percent})
