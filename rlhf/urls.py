from __future__ import annotations

from django.urls import path

from rlhf.datasets import views
from rlhf.loop import views as loop_views
from rlhf.runs import views as run_views

app_name = "rlhf"

urlpatterns = [
    path("", views.index, name="index"),
    path("projects/<int:project_id>/exports/new/", views.export_create, name="export_create"),
    path("exports/<int:export_id>/", views.export_detail, name="export_detail"),
    path("exports/<int:export_id>/cancel/", views.export_cancel, name="export_cancel"),
    path("exports/<int:export_id>/download/", views.export_download, name="export_download"),
    path("reward-runs/", run_views.reward_run_list, name="reward_run_list"),
    path("projects/<int:project_id>/reward-runs/new/", run_views.reward_run_create, name="reward_run_create"),
    path("reward-runs/<int:run_id>/", run_views.reward_run_detail, name="reward_run_detail"),
    path("reward-runs/<int:run_id>/cancel/", run_views.reward_run_cancel, name="reward_run_cancel"),
    path("finetune-runs/", run_views.finetune_run_list, name="finetune_run_list"),
    path("projects/<int:project_id>/finetune-runs/new/", run_views.finetune_run_create, name="finetune_run_create"),
    path("finetune-runs/<int:run_id>/", run_views.finetune_run_detail, name="finetune_run_detail"),
    path("finetune-runs/<int:run_id>/cancel/", run_views.finetune_run_cancel, name="finetune_run_cancel"),
    path("finetune-runs/<int:run_id>/retry/", run_views.finetune_run_retry, name="finetune_run_retry"),
    path("finetune-runs/<int:run_id>/images/<slug:label>/<int:index>.png", run_views.finetune_run_image,
         name="finetune_run_image"),
    # the closed loop (issue 10)
    path("projects/<int:project_id>/rounds/", loop_views.round_timeline, name="round_timeline"),
    path("projects/<int:project_id>/rounds/start/", loop_views.round_start, name="round_start"),
    path("projects/<int:project_id>/arena/", loop_views.arena_vote, name="arena_vote"),
    path("projects/<int:project_id>/arena/results/", loop_views.arena_results, name="arena_results"),
    path("projects/<int:project_id>/arena/setup/", loop_views.arena_setup, name="arena_setup"),
    path("evaluations/<int:evaluation_id>/", loop_views.evaluation_detail, name="evaluation_detail"),
    path("evaluations/<int:evaluation_id>/samples/<slug:side>/<int:index>.png", loop_views.evaluation_sample,
         name="evaluation_sample"),
]
