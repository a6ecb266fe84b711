from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from projects.access import projects_for_user


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The start page: the projects the signed-in user belongs to."""
    return render(request, "core/home.html", {"projects": projects_for_user(user=request.user)})
