from __future__ import annotations

from django.urls import path

from rlhf import views

app_name = "rlhf"

urlpatterns = [
    path("", views.index, name="index"),
]
