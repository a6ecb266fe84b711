from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet

from projects.access import projects_for_user, user_can
from projects.models import Project
from rlhf.models import PreferenceExport


def exportable_projects(*, user: User | AnonymousUser) -> QuerySet[Project]:
    """Projects whose rankings ``user`` may export (ML engineers and admins of the project): one query."""
    return projects_for_user(user=user, action="export")


def exports_for_user(*, user: User | AnonymousUser, project: Project | None = None) -> QuerySet[PreferenceExport]:
    allowed = exportable_projects(user=user).values("pk") if project is None else [project.pk]
    return (
        PreferenceExport.objects.filter(project_id__in=allowed)
        .select_related("project", "created_by")
        .order_by("-created_at", "-pk")
    )


def export_for_user(*, user: User | AnonymousUser, export_id: int) -> PreferenceExport:
    """An export the user may see; ``PreferenceExport.DoesNotExist`` otherwise."""
    export = PreferenceExport.objects.select_related("project", "created_by").get(pk=export_id)
    if not user_can(user=user, action="export", project=export.project):
        raise PreferenceExport.DoesNotExist
    return export
