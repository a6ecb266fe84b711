from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from core.audit import audit_entries, entry_data
from core.exceptions import ApplicationError
from core.parsing import query_int
from projects.access import project_view, projects_for_user
from projects.models import Project


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The start page: the projects the signed-in user belongs to."""
    return render(request, "core/home.html", {"projects": projects_for_user(user=request.user)})


AUDIT_PAGE_SIZE = 50


@project_view("manage")
def project_audit(request: HttpRequest, project: Project) -> HttpResponse:
    """The project's audit trail (project admins): who added or removed members, changed roles, amended
    or rejected rankings, published templates, exported, and started, cancelled or retried runs."""
    page = Paginator(audit_entries(project_id=project.pk), AUDIT_PAGE_SIZE).get_page(
        query_int(request.GET, "page", minimum=1, blank_is_missing=True) if _page_ok(request) else 1)
    return render(request, "projects/project_audit.html", {
        "project": project, "page": page, "entries": [entry_data(entry) for entry in page.object_list]})


def _page_ok(request: HttpRequest) -> bool:
    try:
        query_int(request.GET, "page", minimum=1, blank_is_missing=True)
    except ApplicationError:
        return False
    return True
