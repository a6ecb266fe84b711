"""The projects app's pages: the start page, and a project's Members page (project admins).

The Members page is one view and one template (``projects/membership_list.html``); its three forms
(add, change a role, remove) post to real form actions. A plain POST redirects (PRG) with a message;
an htmx POST gets the members fragment back, with the outcome said in a status line or the error
next to the field it concerns (400).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from core.audit import audit_entries, entry_data
from core.exceptions import ApplicationError
from core.htmx import is_htmx, redirect_after_post, render_page_or_partial
from core.parsing import query_int
from projects import selectors, services
from projects.access import project_view, projects_for_user, user_can
from projects.models import Project, ProjectMembership
from projects.roles import Role

MEMBERS_TEMPLATE = "projects/membership_list.html"


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


def _members_page(request: HttpRequest, project: Project, *, error: ApplicationError | None = None,
                  error_user_id: int | None = None, notice: str = "", status: int = 200) -> HttpResponse:
    """The page (plain requests) or its members fragment (htmx), with the add form's values kept on error."""
    context: dict[str, Any] = {
        "project": project, "rows": selectors.member_rows(project=project), "roles": Role.choices,
        "error": error, "error_user_id": error_user_id, "notice": notice,
        "add_identifier": request.POST.get("user", "") if error and error_user_id is None else "",
        "add_role": request.POST.get("role", Role.ANNOTATOR) if error and error_user_id is None else Role.ANNOTATOR,
    }
    return render_page_or_partial(request, MEMBERS_TEMPLATE, "members", context, status=status)


def _done(request: HttpRequest, project: Project, notice: str) -> HttpResponse:
    """After a change: the fragment with the notice (htmx), or PRG back to the page with it as a message.
    An admin who took their own right to manage away goes to the project's page instead."""
    members_url = reverse("projects:membership_list", args=[project.pk])
    project = Project.objects.get(pk=project.pk)  # fresh: the acting admin may have changed their own role
    if not user_can(user=request.user, project=project, action="manage"):
        messages.success(request, notice)
        if user_can(user=request.user, project=project, action="view"):
            return redirect_after_post(request, reverse("annotate:project_detail", args=[project.pk]))
        return redirect_after_post(request, reverse("annotate:project_list"))
    if is_htmx(request):
        return _members_page(request, project, notice=notice)
    messages.success(request, notice)
    return redirect_after_post(request, members_url)


@require_http_methods(["GET", "POST"])
@project_view("manage")
def membership_list(request: HttpRequest, project: Project) -> HttpResponse:
    """The members and their roles; a POST adds someone by username or email."""
    if request.method == "GET":
        return _members_page(request, project)
    try:
        membership = services.membership_add(project=project, identifier=request.POST.get("user", ""),
                                             role=request.POST.get("role", ""), by=request.user)
    except ApplicationError as exc:
        return _members_page(request, project, error=exc, status=400)
    return _done(request, project, f"Added {membership.user.get_username()} as {membership.get_role_display()}.")


def _member(project: Project, user_id: int) -> User:
    membership = ProjectMembership.objects.filter(project=project, user_id=user_id).select_related("user").first()
    if membership is None:
        raise Http404("No such member")
    return membership.user


@require_POST
@project_view("manage")
def membership_role(request: HttpRequest, project: Project, user_id: int) -> HttpResponse:
    user = _member(project, user_id)
    try:
        membership = services.membership_set_role(project=project, user=user, role=request.POST.get("role", ""),
                                                  by=request.user)
    except ApplicationError as exc:
        return _members_page(request, project, error=exc, error_user_id=user.pk, status=400)
    return _done(request, project, f"{user.get_username()} is now {membership.get_role_display()}.")


@require_POST
@project_view("manage")
def membership_remove(request: HttpRequest, project: Project, user_id: int) -> HttpResponse:
    user = _member(project, user_id)
    try:
        services.membership_remove(project=project, user=user, by=request.user)
    except ApplicationError as exc:
        return _members_page(request, project, error=exc, error_user_id=user.pk, status=400)
    return _done(request, project, f"Removed {user.get_username()} from the project.")
