"""Reads for reward-model runs, reward versions, fine-tune runs and scores (one query per list, no N+1)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet
from django.http import Http404

from annotate.models import AnnotationTask
from core.charts import Chart, Series, chart_context
from generation.models import ModelKind, ModelVersion
from projects.access import project_check, projects_for_user
from projects.models import Project
from rlhf.models import (
    FineTuneRun,
    ImageScore,
    PreferenceExport,
    RewardModelRun,
    RewardModelVersion,
    RunStatus,
)
from rlhf.runs.grids import grid_order

User = AbstractBaseUser | AnonymousUser


def trainable_projects(*, user: User) -> list[Project]:
    """Projects where ``user`` may start runs (ML engineers and admins of the project)."""
    return list(projects_for_user(user=user, action="train"))


def _scope(user: User, project: Project | None) -> Q:
    if getattr(user, "is_superuser", False) and project is None:
        return Q()
    if project is not None:
        return Q(project_id=project.pk)
    return Q(project_id__in=projects_for_user(user=user, action="train").values("pk"))


def require_train(*, user: User, project: Project | None) -> None:
    """404 for non-members, 403 for members who may not train; runs outside a project: superusers only."""
    if project is None:
        if not getattr(user, "is_superuser", False):
            raise Http404("No such run")
        return
    project_check(user=user, project=project, action="train")


def training_exports(*, user: User, project: Project | None = None) -> QuerySet[PreferenceExport]:
    """Succeeded pickapic/listwise exports with image bytes that ``user`` may train on."""
    return (
        PreferenceExport.objects.filter(_scope(user, project), status=RunStatus.SUCCEEDED, include_images=True,
                                        format__in=[PreferenceExport.Format.PICKAPIC,
                                                    PreferenceExport.Format.LISTWISE])
        .select_related("project").order_by("-created_at", "-pk")
    )


def finetune_start_versions() -> QuerySet[ModelVersion]:
    """What a fine-tune may start from: base versions (a fresh LoRA) and enabled LoRA versions on a base
    version (continued); bases first. Their files are checked when the run is created."""
    return (
        ModelVersion.objects.filter(Q(kind=ModelKind.BASE)
                                    | Q(kind=ModelKind.LORA, enabled=True, parent__kind=ModelKind.BASE))
        .select_related("parent").order_by("kind", "name")
    )


def reward_runs_for_user(*, user: User, project: Project | None = None) -> QuerySet[RewardModelRun]:
    return (
        RewardModelRun.objects.filter(_scope(user, project))
        .select_related("project", "export", "created_by", "registered_version")
        .order_by("-created_at", "-pk")
    )


def reward_run_get(*, run_id: int) -> RewardModelRun:
    """A run by id (``RewardModelRun.DoesNotExist`` otherwise); check access with :func:`require_train`."""
    return RewardModelRun.objects.select_related("project", "export", "created_by", "registered_version").get(
        pk=run_id)


def reward_versions_for_user(*, user: User, project: Project | None = None) -> QuerySet[RewardModelVersion]:
    return (
        RewardModelVersion.objects.filter(_scope(user, project))
        .select_related("project", "run", "export").order_by("-created_at", "-pk")
    )


def reward_version_get(*, version_id: int) -> RewardModelVersion:
    return RewardModelVersion.objects.select_related("project", "run", "export").get(pk=version_id)


def finetune_runs_for_user(*, user: User, project: Project | None = None) -> QuerySet[FineTuneRun]:
    return (
        FineTuneRun.objects.filter(_scope(user, project))
        .select_related("project", "base_version", "export", "reward_version", "result_version", "created_by")
        .order_by("-created_at", "-pk")
    )


def finetune_run_get(*, run_id: int) -> FineTuneRun:
    return FineTuneRun.objects.select_related(
        "project", "base_version", "export", "reward_version", "result_version", "created_by").get(pk=run_id)


def scores_for_task(task: AnnotationTask, reward_version: RewardModelVersion) -> dict[str, float | None]:
    """``{image id: score or None}`` for the task's images under ``reward_version``, in task order.

    Scores come from background scoring (``rlhf.runs.scoring.image_scores_request``); an image not scored
    yet maps to None.
    """
    image_ids = [str(i) for i in task.task_images.order_by("position").values_list("image_id", flat=True)]
    found = {str(image_id): value for image_id, value in ImageScore.objects.filter(
        reward_version=reward_version, image_id__in=image_ids).values_list("image_id", "score")}
    return {image_id: found.get(image_id) for image_id in image_ids}


# --- charts -----------------------------------------------------------------------------------------------


def _series(history: list[dict[str, Any]], key: str, label: str, **kwargs: Any) -> Series:
    return Series(label=label, points=[(p.get("step"), p.get(key)) for p in history if key in p], **kwargs)


def reward_run_charts(run: RewardModelRun) -> list[dict[str, object]]:
    history = run.history or []
    charts = [
        Chart(title="Training loss", series=[_series(history, "loss", "loss")], x_label="step"),
        Chart(title="Accuracy", series=[_series(history, "accuracy", "train batch accuracy"),
                                        _series(history, "val_accuracy", "validation accuracy")],
              x_label="step", y_range=(0.0, 1.0), markers=True),
    ]
    test = (run.results or {}).get("test") or (run.results or {}).get("validation")
    if test and test.get("calibration"):
        bins = test["calibration"]
        charts.append(Chart(
            title="Calibration (predicted vs observed P(image 0 preferred))",
            series=[Series("reward model", [(b["mean_predicted"], b["observed"]) for b in bins])],
            x_label="predicted", y_label="observed", x_range=(0.0, 1.0), y_range=(0.0, 1.0), diagonal=True,
            markers=True,
        ))
    return [chart_context(c) for c in charts]


def finetune_run_charts(run: FineTuneRun) -> list[dict[str, object]]:
    history = run.history or []
    if run.method == FineTuneRun.Method.DPO:
        charts = [
            Chart(title="DPO loss", series=[_series(history, "loss", "loss")], x_label="step"),
            Chart(title="Implicit accuracy", series=[_series(history, "implicit_accuracy", "implicit accuracy")],
                  x_label="step", y_range=(0.0, 1.0)),
            Chart(title="Denoising error on chosen images", series=[_series(history, "mse_chosen", "MSE (chosen)")],
                  x_label="step"),
        ]
    elif any("implicit_accuracy" in p for p in history):  # DDPO's group_dpo objective: DPO on ranked groups
        charts = [
            Chart(title="Mean reward", series=[_series(history, "reward_mean", "mean reward")],
                  x_label="iteration", markers=True),
            Chart(title="Implicit accuracy on the replayed pairs",
                  series=[_series(history, "implicit_accuracy", "implicit accuracy")],
                  x_label="iteration", y_range=(0.0, 1.0), markers=True),
            Chart(title="DPO loss", series=[_series(history, "loss", "loss")], x_label="iteration", markers=True),
        ]
    else:
        charts = [
            Chart(title="Mean reward", series=[_series(history, "reward_mean", "mean reward")],
                  x_label="iteration", markers=True),
            Chart(title="KL and loss", series=[_series(history, "approx_kl", "approx. KL"),
                                               _series(history, "kl", "KL to base"),
                                               _series(history, "loss", "loss", dashed=True)],
                  x_label="iteration", markers=True),
        ]
    if any("chosen_error_change" in p for p in history):  # DPO and group_dpo runs (older ones did not log it)
        charts.append(Chart(
            title="Preferred images against the starting model",
            series=[_series(history, "chosen_error_change", "denoising error, policy minus reference")],
            x_label="iteration" if run.method == FineTuneRun.Method.DDPO else "step",
            y_label="above 0: less likely", markers=run.method == FineTuneRun.Method.DDPO,
        ))
    return [chart_context(c) for c in charts]


def reward_run_summary(run: RewardModelRun) -> dict[str, Any]:
    """The final metrics in display order: accuracies next to the agreement ceiling, per-model rows."""
    results = run.results or {}
    test, validation, ceiling = results.get("test"), results.get("validation"), results.get("ceiling")
    by_model = sorted(((name, row.get("accuracy"), int(row.get("pairs") or 0))
                       for name, row in ((test or validation or {}).get("by_model") or {}).items()),
                      key=lambda r: r[0])
    return {"test": test, "validation": validation, "ceiling": ceiling, "by_model": by_model}


def finetune_grids(run: FineTuneRun) -> list[dict[str, Any]]:
    """Base, checkpoint and final images side by side: one row per (prompt, seed), one column per grid.

    Columns are in :func:`grid_order`, each ``{"label", "step", "title", "error"}``; a row's ``cells``
    line up with them (None where a grid has no image for the row, e.g. its rendering failed).
    """
    grids = sorted(run.eval_grids or [], key=grid_order)
    if not grids:
        return []
    unit = "iteration" if run.method == FineTuneRun.Method.DDPO else "step"
    continued = (run.lineage or {}).get("continued_from")  # the "base" grid is then that LoRA version's
    start = f"start ({continued['name']})" if continued else "base"
    columns = []
    for grid in grids:
        at = f"{unit} {grid['step']}"
        title = {"base": start, "final": f"final ({at})"}.get(grid["label"], at)
        columns.append({"label": grid["label"], "step": grid["step"], "title": title, "error": grid.get("error", "")})
    rows: dict[int, dict[str, Any]] = {}
    for image in (image for grid in grids for image in grid["images"]):
        rows.setdefault(image["index"], {"prompt": image["prompt"], "seed": image["seed"]})
    present = [{image["index"] for image in grid["images"]} for grid in grids]
    for index, row in rows.items():
        row["cells"] = [{"label": grid["label"], "index": index} if index in has else None
                        for grid, has in zip(grids, present, strict=True)]
    return [{"columns": columns, "rows": [rows[i] for i in sorted(rows)]}]
