"""Browser pages for reward-model runs and fine-tune runs (htmx: one view, one template, a polled fragment)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from core.exceptions import ApplicationError
from core.htmx import redirect_after_post, render_page_or_partial
from projects.access import project_view
from projects.models import Project
from rlhf.models import FineTuneRun, RewardModelRun
from rlhf.runs import finetune, reward
from rlhf.runs import selectors as run_selectors
from rlhf.runs.forms import FineTuneRunForm, RewardRunForm


def _form_error(form: forms.Form, exc: ApplicationError) -> None:
    field = exc.field if exc.field in form.fields else None
    if field is None and exc.field and "hyperparameters" in form.fields and exc.field not in ("status",):
        field = "hyperparameters"  # a single hyper-parameter (lr, batch_size, ...) was out of range
    form.add_error(field, exc.message)


def _poll_response(request: HttpRequest, response: HttpResponse, finished: bool) -> HttpResponse:
    if getattr(request, "htmx", False) and finished:
        stop = HttpResponseStopPolling(response.content)
        stop["HX-Refresh"] = "true"  # the full page shows the final metrics and images
        return stop
    return response


# --- reward-model runs ------------------------------------------------------------------------------


@login_required
def reward_run_list(request: HttpRequest) -> HttpResponse:
    return render(request, "rlhf/reward_run_list.html", {
        "projects": run_selectors.trainable_projects(user=request.user),
        "runs": run_selectors.reward_runs_for_user(user=request.user)[:100],
        "versions": run_selectors.reward_versions_for_user(user=request.user)[:100],
    })


@project_view("train")
@require_http_methods(["GET", "POST"])
def reward_run_create(request: HttpRequest, project: Project) -> HttpResponse:
    form = RewardRunForm(request.POST or None)
    form.fields["export"].queryset = run_selectors.training_exports(user=request.user, project=project)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            run = reward.reward_run_create(
                user=request.user, export=data["export"], backbone=data["backbone"], preset=data["preset"],
                hyperparameters=data["hyperparameters"], name=data["name"],
            )
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            return redirect_after_post(request, reverse("rlhf:reward_run_detail", args=[run.pk]))
    return render(request, "rlhf/reward_run_create.html", {"project": project, "form": form},
                  status=400 if form.errors else 200)


def _reward_run(request: HttpRequest, run_id: int) -> RewardModelRun:
    try:
        run = run_selectors.reward_run_get(run_id=run_id)
    except RewardModelRun.DoesNotExist:
        raise Http404("No such run") from None
    run_selectors.require_train(user=request.user, project=run.project)
    return run


@login_required
def reward_run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _reward_run(request, run_id)
    context: dict[str, Any] = {"run": run, "charts": run_selectors.reward_run_charts(run),
                               "summary": run_selectors.reward_run_summary(run)}
    response = render_page_or_partial(request, "rlhf/reward_run_detail.html", "progress", context)
    return _poll_response(request, response, run.is_finished)


@login_required
@require_POST
def reward_run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _reward_run(request, run_id)
    try:
        reward.reward_run_cancel(run=run, user=request.user)
    except ApplicationError as exc:
        return render(request, "rlhf/reward_run_detail.html", {
            "run": run, "charts": run_selectors.reward_run_charts(run),
            "summary": run_selectors.reward_run_summary(run), "error": exc.message}, status=400)
    return redirect_after_post(request, reverse("rlhf:reward_run_detail", args=[run.pk]))


# --- fine-tune runs ---------------------------------------------------------------------------------


@login_required
def finetune_run_list(request: HttpRequest) -> HttpResponse:
    return render(request, "rlhf/finetune_run_list.html", {
        "projects": run_selectors.trainable_projects(user=request.user),
        "runs": run_selectors.finetune_runs_for_user(user=request.user)[:100],
    })


@project_view("train")
@require_http_methods(["GET", "POST"])
def finetune_run_create(request: HttpRequest, project: Project) -> HttpResponse:
    form = FineTuneRunForm(request.POST or None)
    form.fields["export"].queryset = run_selectors.training_exports(user=request.user, project=project)
    form.fields["reward_version"].queryset = run_selectors.reward_versions_for_user(user=request.user,
                                                                                     project=project)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            run = finetune.finetune_run_create(
                user=request.user, project=project, base_version=data["base_version"], method=data["method"],
                export=data["export"], reward_name=data["reward"], reward_version=data["reward_version"],
                prompt_source=data["prompt_source"], preset=data["preset"],
                hyperparameters=data["hyperparameters"], eval_prompts=data["eval_prompts"].splitlines(),
                name=data["name"],
            )
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            return redirect_after_post(request, reverse("rlhf:finetune_run_detail", args=[run.pk]))
    return render(request, "rlhf/finetune_run_create.html", {"project": project, "form": form},
                  status=400 if form.errors else 200)


def _finetune_run(request: HttpRequest, run_id: int) -> FineTuneRun:
    try:
        run = run_selectors.finetune_run_get(run_id=run_id)
    except FineTuneRun.DoesNotExist:
        raise Http404("No such run") from None
    run_selectors.require_train(user=request.user, project=run.project)
    return run


def _finetune_context(run: FineTuneRun) -> dict[str, Any]:
    return {"run": run, "charts": run_selectors.finetune_run_charts(run), "grids": run_selectors.finetune_grids(run)}


@login_required
def finetune_run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _finetune_run(request, run_id)
    response = render_page_or_partial(request, "rlhf/finetune_run_detail.html", "progress", _finetune_context(run))
    return _poll_response(request, response, run.is_finished)


@login_required
@require_POST
def finetune_run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _finetune_run(request, run_id)
    try:
        finetune.finetune_run_cancel(run=run, user=request.user)
    except ApplicationError as exc:
        return render(request, "rlhf/finetune_run_detail.html", {**_finetune_context(run), "error": exc.message},
                      status=400)
    return redirect_after_post(request, reverse("rlhf:finetune_run_detail", args=[run.pk]))


@login_required
@require_POST
def finetune_run_retry(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _finetune_run(request, run_id)
    try:
        finetune.finetune_run_retry(run=run, user=request.user)
    except ApplicationError as exc:
        return render(request, "rlhf/finetune_run_detail.html", {**_finetune_context(run), "error": exc.message},
                      status=400)
    return redirect_after_post(request, reverse("rlhf:finetune_run_detail", args=[run.pk]))


@login_required
def finetune_run_image(request: HttpRequest, run_id: int, label: str, index: int) -> FileResponse:
    """One evaluation image, for users who may train in the run's project."""
    run = _finetune_run(request, run_id)
    grid = next((g for g in run.eval_grids if g["label"] == label), None)
    image = next((image for image in (grid or {}).get("images", []) if image["index"] == index), None)
    if image is None:
        raise Http404("No such image")
    key = image["key"]  # the attempt that rendered the grid stored it under its own key
    if not default_storage.exists(key):
        raise Http404("No such image")
    response = FileResponse(default_storage.open(key, "rb"), content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response
