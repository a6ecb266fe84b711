from __future__ import annotations

from django.urls import path

from annotate import views
from annotate.builder import views as template_views
from annotate.workflow import views as workflow_views

app_name = "annotate"

_t = "<int:project_id>/templates/<int:template_id>/"

urlpatterns = [
    path("", views.project_list, name="project_list"),
    path("new/", views.project_create, name="project_create"),
    path("<int:project_id>/", views.project_detail, name="project_detail"),
    # Template builder (issue 3)
    path("templates/", template_views.template_overview, name="template_overview"),
    path("<int:project_id>/templates/", template_views.template_list, name="template_list"),
    path("<int:project_id>/templates/new/", template_views.template_create, name="template_create"),
    path("<int:project_id>/templates/preset/", template_views.template_create_preset, name="template_create_preset"),
    path("<int:project_id>/templates/import/", template_views.template_import, name="template_import"),
    path(_t, template_views.template_builder, name="template_builder"),
    path(_t + "components/add/", template_views.template_component_add, name="template_component_add"),
    path(_t + "components/reorder/", template_views.template_components_reorder, name="template_components_reorder"),
    path(_t + "components/<slug:name>/remove/", template_views.template_component_remove,
         name="template_component_remove"),
    path(_t + "components/<slug:name>/move/", template_views.template_component_move, name="template_component_move"),
    path(_t + "components/<slug:name>/configure/", template_views.template_component_configure,
         name="template_component_configure"),
    path(_t + "settings/", template_views.template_settings, name="template_settings"),
    path(_t + "publish/", template_views.template_publish, name="template_publish"),
    path(_t + "duplicate/", template_views.template_duplicate, name="template_duplicate"),
    path(_t + "history/", template_views.template_history, name="template_history"),
    path(_t + "export/", template_views.template_export, name="template_export"),
    # Annotation workflow (issue 4)
    path("<int:project_id>/annotate/", workflow_views.task_annotate, name="task_annotate"),
    path("<int:project_id>/annotate/prompt/", workflow_views.task_prompt, name="task_prompt"),
    path("<int:project_id>/tasks/<int:task_id>/submit/", workflow_views.task_submit, name="task_submit"),
    path("<int:project_id>/tasks/<int:task_id>/skip/", workflow_views.task_skip, name="task_skip"),
    path("<int:project_id>/tasks/<int:task_id>/generate/", workflow_views.task_generate, name="task_generate"),
    path("<int:project_id>/tasks/<int:task_id>/generate/edit/", workflow_views.task_generate_edit,
         name="task_generate_edit"),
    path("<int:project_id>/tasks/<int:task_id>/generation/<int:job_id>/", workflow_views.task_generation,
         name="task_generation"),
    path("<int:project_id>/my-annotations/", workflow_views.review_mine, name="review_mine"),
    path("<int:project_id>/my-annotations/<int:annotation_id>/amend/", workflow_views.review_amend,
         name="review_amend"),
    path("<int:project_id>/prompt-sets/", workflow_views.promptset_list, name="promptset_list"),
    path("<int:project_id>/imports/", workflow_views.task_import, name="task_import"),
    path("<int:project_id>/imports/<int:import_id>/", workflow_views.task_import_detail, name="task_import_detail"),
    path("<int:project_id>/imports/<int:import_id>/cancel/", workflow_views.task_import_cancel,
         name="task_import_cancel"),
    path("<int:project_id>/settings/", workflow_views.project_settings, name="project_settings"),
    path("<int:project_id>/review/", workflow_views.review_tasks, name="review_tasks"),
    path("<int:project_id>/review/stats/", workflow_views.review_stats, name="review_stats"),
    path("<int:project_id>/review/score/", workflow_views.review_score, name="review_score"),
    path("<int:project_id>/review/annotations/<int:annotation_id>/reject/", workflow_views.review_reject,
         name="review_reject"),
]
