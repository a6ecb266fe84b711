"""Who may do what to which project.

An action is allowed when the user's global group grants its permission *and* their
membership role in that project allows it. Superusers may do everything.
"""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.http import Http404

from annotate.models import Project, ProjectMembership
from core.exceptions import PermissionDeniedError
from core.roles import ACTION_PERMISSIONS, ROLE_ACTIONS

AnyUser = User | AnonymousUser


def membership_role(*, user: AnyUser, project: Project) -> str | None:
    if not user.is_authenticated:
        return None
    cached = getattr(project, "_membership_roles", None)
    if cached is not None and user.pk in cached:
        return cached[user.pk]
    return (
        ProjectMembership.objects.filter(project=project, user_id=user.pk).values_list("role", flat=True).first()
    )


def can(*, user: AnyUser, action: str, project: Project) -> bool:
    if action not in ACTION_PERMISSIONS:
        raise ValueError(f"unknown project action {action!r}")
    if not user.is_authenticated or not user.is_active:
        return False
    if getattr(user, "is_superuser", False):
        return True
    if not user.has_perm(ACTION_PERMISSIONS[action]):
        return False
    role = membership_role(user=user, project=project)
    return role is not None and action in ROLE_ACTIONS[role]


def require(*, user: AnyUser, action: str, project: Project) -> None:
    """Raise 404 to non-members (a project's existence is private) and 403 to members who lack the right."""
    if not can(user=user, action="view", project=project):
        raise Http404("No such project")
    if not can(user=user, action=action, project=project):
        raise PermissionDeniedError(f"You may not {action} in project {project.name!r}.")
