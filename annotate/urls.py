from __future__ import annotations

from django.urls import path

from annotate import views

app_name = "annotate"

urlpatterns = [
    path("", views.project_list, name="project_list"),
    path("new/", views.project_create, name="project_create"),
    path("<int:project_id>/", views.project_detail, name="project_detail"),
]
