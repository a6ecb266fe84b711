"""A project's pages: the list of one's projects, creating one, and its overview with what one may do there."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from annotate.workflow.access import workflow_of, workflow_view
from core.exceptions import ApplicationError
from core.htmx import redirect_after_post
from projects import roles, services
from projects.access import projects_for_user, user_can
from projects.forms import ProjectForm
from projects.models import Project
from projects.webhooks.selectors import endpoints_disabled_automatically


@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    return render(request, "annotate/project_list.html", {"projects": projects_for_user(user=request.user)})


@login_required
@permission_required(roles.MANAGE, raise_exception=True)
@require_http_methods(["GET", "POST"])
def project_create(request: HttpRequest) -> HttpResponse:
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            project = services.project_create(created_by=request.user, **form.cleaned_data)
        except ApplicationError as exc:
            form.add_error(exc.field, exc.message)
        else:
            return redirect_after_post(request, reverse("annotate:project_detail", args=[project.pk]))
    return render(request, "annotate/project_create.html", {"form": form}, status=400 if form.errors else 200)


@workflow_view("view")
def project_detail(request: HttpRequest, project: Project) -> HttpResponse:
    can = {action: user_can(user=request.user, action=action, project=project)
           for action in ("manage", "annotate", "review", "export", "train")}
    members = project.memberships.select_related("user").order_by("role", "user__username")
    return render(request, "annotate/project_detail.html", {
        "project": project, "workflow": workflow_of(project), "members": members, "project_can": can,
        "disabled_webhooks": endpoints_disabled_automatically(project=project) if can["manage"] else []})
