from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from annotate import access, selectors
from core import roles


@login_required
@permission_required(roles.EXPORT, raise_exception=True)
def index(request: HttpRequest) -> HttpResponse:
    """The ML engineer's start page: the projects whose preferences they may export or train on."""
    projects = [
        project
        for project in selectors.projects_for_user(user=request.user).prefetch_related("memberships")
        if access.can(user=request.user, action="export", project=project)
    ]
    return render(request, "rlhf/index.html", {"projects": projects})
