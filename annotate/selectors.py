from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet

from annotate.models import Project


def projects_for_user(*, user: User | AnonymousUser, include_archived: bool = False) -> QuerySet[Project]:
    """The projects ``user`` belongs to (every project for a superuser)."""
    if not user.is_authenticated:
        return Project.objects.none()
    queryset = Project.objects.all() if user.is_superuser else Project.objects.filter(memberships__user=user)
    if not include_archived:
        queryset = queryset.filter(archived_at__isnull=True)
    return queryset.select_related("created_by").order_by("-created_at")


def project_for_user(*, user: User | AnonymousUser, project_id: int) -> Project:
    """One project ``user`` may see; ``Project.DoesNotExist`` otherwise (never reveals others)."""
    return projects_for_user(user=user, include_archived=True).get(pk=project_id)
