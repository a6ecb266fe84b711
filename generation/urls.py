from __future__ import annotations

from django.urls import path

from generation import api, views

app_name = "generation"

urlpatterns = [
    path("", views.generate, name="generate"),
    path("jobs/<int:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job_cancel"),
    path("images/<uuid:image_id>.png", views.image, name="image"),
    path("images/<uuid:image_id>/source.png", views.image_edit_source, name="image_edit_source"),
    path("images/<uuid:image_id>/mask.png", views.image_edit_mask, name="image_edit_mask"),
]

# Mounted under /api/ by config/urls.py.
api_urlpatterns = [
    path("model-versions/", api.model_version_list, name="api-model-versions"),
    path("generation-jobs/", api.job_list_create, name="api-generation-jobs"),
    path("generation-jobs/<int:job_id>/", api.job_detail, name="api-generation-job"),
    path("generation-jobs/<int:job_id>/cancel/", api.job_cancel, name="api-generation-job-cancel"),
]
