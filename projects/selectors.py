"""Reads of the projects app that pages and the API share."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.contrib.auth.models import Permission, User
from django.db.models import Case, IntegerField, QuerySet, Value, When

from projects.models import Project, ProjectMembership
from projects.roles import GROUP_NAMES, Role, role_permissions


def project_members(*, project: Project) -> QuerySet[ProjectMembership]:
    """The project's memberships with their users, admins first, then by username: one query."""
    order = {Role.ADMIN: 0, Role.ML_ENGINEER: 1, Role.ANNOTATOR: 2}
    return (
        ProjectMembership.objects.filter(project=project)
        .select_related("user")
        .annotate(role_order=Case(*(When(role=role, then=Value(rank)) for role, rank in order.items()),
                                  default=Value(9), output_field=IntegerField()))
        .order_by("role_order", "user__username")
    )


@dataclass(frozen=True)
class MemberRow:
    """One member as the Members page shows them: the membership, the global role groups the user is in,
    and the membership roles those groups allow."""

    membership: ProjectMembership
    groups: tuple[str, ...]
    allowed_roles: tuple[str, ...]

    @property
    def user(self) -> User:
        return self.membership.user


def _permissions_by_user(user_ids: list[int]) -> tuple[dict[int, set[str]], dict[int, list[str]]]:
    """Every ``app_label.codename`` each user holds (through groups or directly) and the role groups
    they are in: three queries for any number of users."""
    perms: dict[int, set[str]] = defaultdict(set)
    groups: dict[int, list[str]] = defaultdict(list)
    memberships = User.groups.through.objects.filter(user_id__in=user_ids).values_list("user_id", "group_id",
                                                                                        "group__name")
    users_by_group: dict[int, list[int]] = defaultdict(list)
    for user_id, group_id, name in memberships:
        users_by_group[group_id].append(user_id)
        if name in GROUP_NAMES.values():
            groups[user_id].append(name)
    granted = Permission.objects.filter(group__in=list(users_by_group)).values_list(
        "group", "content_type__app_label", "codename")
    for group_id, app_label, codename in granted:
        for user_id in users_by_group[group_id]:
            perms[user_id].add(f"{app_label}.{codename}")
    direct = User.user_permissions.through.objects.filter(user_id__in=user_ids).values_list(
        "user_id", "permission__content_type__app_label", "permission__codename")
    for user_id, app_label, codename in direct:
        perms[user_id].add(f"{app_label}.{codename}")
    return perms, groups


def member_rows(*, project: Project) -> list[MemberRow]:
    """The Members page's rows (:class:`MemberRow`): four queries whatever the number of members."""
    memberships = list(project_members(project=project))
    perms, groups = _permissions_by_user([m.user_id for m in memberships])
    rows = []
    for membership in memberships:
        user = membership.user
        if user.is_superuser and user.is_active:
            allowed = tuple(Role.values)
        elif not user.is_active:
            allowed = ()
        else:
            allowed = tuple(role for role in Role.values if role_permissions(role) <= perms[user.pk])
        rows.append(MemberRow(membership=membership, groups=tuple(sorted(groups[user.pk])), allowed_roles=allowed))
    return rows

