"""The one access API decides every role x action x membership state as the rule says, through each of
its entry points: the one-statement loader, the check of a loaded project, the yes/no, the project lists,
and the annotation workflow's hot-path loader (its own SQL statement, built from the same parts)."""

from __future__ import annotations

import itertools

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Permission
from django.http import Http404
from django.utils import timezone

from annotate.workflow.access import project_for_annotation
from core.exceptions import PermissionDeniedError
from projects.access import project_check, project_get_for_user, projects_for_user, user_can
from projects.models import Project
from projects.roles import Role
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

ACTIONS = ("view", "manage", "review", "annotate", "export", "train")
# The rule, restated from the README rather than read from projects.roles: what each global group grants,
# and what each membership role allows in its project. An action needs both; anything short of "view"
# hides the project (404), anything short of the action is refused (403).
GROUP_GRANTS: dict[str | None, set[str]] = {
    Role.ADMIN: set(ACTIONS),
    Role.ANNOTATOR: {"view", "annotate"},
    Role.ML_ENGINEER: {"view", "export", "train"},
    None: set(),
}
ROLE_ALLOWS: dict[str, set[str]] = {
    Role.ADMIN: set(ACTIONS),
    Role.ANNOTATOR: {"view", "annotate"},
    Role.ML_ENGINEER: {"view", "export", "train"},
}


def expected(group: str | None, membership: str | None, action: str) -> str:
    grants = GROUP_GRANTS[group]
    if membership is None or "view" not in grants or "view" not in ROLE_ALLOWS[membership]:
        return "404"
    return "ok" if action in grants and action in ROLE_ALLOWS[membership] else "403"


def outcome(call) -> str:
    try:
        call()
    except Http404:
        return "404"
    except PermissionDeniedError:
        return "403"
    return "ok"


@pytest.fixture
def cases(db):
    """(user, expected outcome by action) for every group x membership role (or none), and the edge cases."""
    project = ProjectFactory(name="Access")
    people = []
    for group, membership in itertools.product(GROUP_GRANTS, [*ROLE_ALLOWS, None]):
        user = UserFactory(username=f"{group or 'nogroup'}-as-{membership or 'outsider'}", role=group)
        if membership is not None:
            MembershipFactory(project=project, user=user, role=membership)
        people.append((user, {action: expected(group, membership, action) for action in ACTIONS}))
    direct = UserFactory(username="direct-permissions")  # no group: permissions granted to the user itself
    direct.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="projects", codename__in=["view_project", "annotate_tasks"]))
    MembershipFactory(project=project, user=direct, role=Role.ADMIN)
    people.append((direct, {action: "ok" if action in ("view", "annotate") else "403" for action in ACTIONS}))
    inactive = UserFactory(username="inactive-admin", role=Role.ADMIN)
    MembershipFactory(project=project, user=inactive, role=Role.ADMIN)
    inactive.is_active = False
    inactive.save()
    people.append((inactive, dict.fromkeys(ACTIONS, "404")))
    root = UserFactory(username="root")  # a superuser may do everything, member or not
    root.is_superuser = True
    root.save()
    people.append((root, dict.fromkeys(ACTIONS, "ok")))
    return project, people


def fresh(user):
    """The user as a new request would load it (no cached permissions)."""
    return get_user_model().objects.get(pk=user.pk)


@pytest.mark.parametrize("action", ACTIONS)
def test_every_entry_point_decides_every_role_and_membership_as_the_rule_says(cases, action):
    project, people = cases
    seen = set()
    for user, outcomes in people:
        want = outcomes[action]
        seen.add(want)
        entry_points = (
            lambda u: project_get_for_user(user=u, project_id=project.pk, action=action),
            lambda u: project_check(user=u, project=Project.objects.get(pk=project.pk), action=action),
            lambda u: project_for_annotation(user=u, project_id=project.pk, action=action),
            lambda u: project_for_annotation(user=u, project_id=project.pk, action=action, with_active_lease=True),
        )
        got = tuple(outcome(lambda call=call, user=user: call(fresh(user))) for call in entry_points)
        assert got == (want,) * 4, (user.username, action)
        assert user_can(user=fresh(user), project=Project.objects.get(pk=project.pk), action=action) is (
            want == "ok"), (user.username, action)
        listed = projects_for_user(user=fresh(user), action=action).filter(pk=project.pk).exists()
        assert listed is (want == "ok"), (user.username, action)
    assert {"ok", "404"} <= seen
    assert ("403" in seen) is (action != "view")


def test_anonymous_users_and_unknown_or_malformed_ids_get_404(cases):
    project, people = cases
    anonymous = AnonymousUser()
    assert outcome(lambda: project_get_for_user(user=anonymous, project_id=project.pk, action="view")) == "404"
    assert outcome(lambda: project_for_annotation(user=anonymous, project_id=project.pk, action="view")) == "404"
    assert user_can(user=anonymous, project=project, action="view") is False
    assert not projects_for_user(user=anonymous).exists()
    admin = next(user for user, _ in people if user.username == "admin-as-admin")
    for project_id in (10**9, "12abc", None):
        assert outcome(lambda p=project_id: project_get_for_user(user=admin, project_id=p, action="view")) == "404"
        assert outcome(lambda p=project_id: project_for_annotation(user=admin, project_id=p, action="view")) == "404"


def test_an_unknown_action_is_a_programming_error(cases):
    project, people = cases
    with pytest.raises(ValueError, match="unknown project action 'fly'"):
        project_get_for_user(user=people[0][0], project_id=project.pk, action="fly")
    with pytest.raises(ValueError, match="unknown project action 'fly'"):
        user_can(user=people[0][0], project=project, action="fly")


def test_archived_projects_are_listed_only_when_asked_for_and_stay_reachable(cases):
    project, people = cases
    admin = next(user for user, _ in people if user.username == "admin-as-admin")
    Project.objects.filter(pk=project.pk).update(archived_at=timezone.now())
    assert not projects_for_user(user=admin).filter(pk=project.pk).exists()
    assert projects_for_user(user=admin, include_archived=True).filter(pk=project.pk).exists()
    assert project_get_for_user(user=admin, project_id=project.pk, action="manage").pk == project.pk
