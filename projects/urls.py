from __future__ import annotations

from django.urls import path

from projects import views

app_name = "projects"

urlpatterns = [
    path("<int:project_id>/members/", views.membership_list, name="membership_list"),
    path("<int:project_id>/members/<int:user_id>/role/", views.membership_role, name="membership_role"),
    path("<int:project_id>/members/<int:user_id>/remove/", views.membership_remove, name="membership_remove"),
]
