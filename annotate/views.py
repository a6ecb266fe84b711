from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from annotate import access, selectors, services
from annotate.forms import ProjectForm
from annotate.models import Project
from core import roles
from core.exceptions import ApplicationError
from core.htmx import redirect_after_post


@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    projects = selectors.projects_for_user(user=request.user)
    return render(request, "annotate/project_list.html", {"projects": projects})


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


@login_required
def project_detail(request: HttpRequest, project_id: int) -> HttpResponse:
    try:
        project = selectors.project_for_user(user=request.user, project_id=project_id)
        project = Project.objects.select_related("template_version__template").get(pk=project.pk)
    except Project.DoesNotExist:
        raise Http404("No such project") from None
    can = {action: access.can(user=request.user, action=action, project=project)
           for action in ("manage", "annotate", "review", "export", "train")}
    members = project.memberships.select_related("user").order_by("role", "user__username")
    return render(request, "annotate/project_detail.html", {"project": project, "members": members, "project_can": can})
