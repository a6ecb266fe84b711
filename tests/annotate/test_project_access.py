"""project_for_action (one plain SQL statement) decides exactly as access.require (the ORM and has_perm)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.http import Http404

from annotate import access, workflow_selectors
from core.exceptions import PermissionDeniedError
from core.roles import ACTION_PERMISSIONS, Role
from tests.factories import MembershipFactory, UserFactory


def outcome(call) -> str:
    try:
        call()
    except Http404:
        return "404"
    except PermissionDeniedError:
        return "403"
    return "ok"


@pytest.fixture
def people(project, admin_user, annotator, ml_engineer):
    """Members in each role, plus the edge cases: no group, a direct permission, a stranger, a superuser."""
    no_group = UserFactory(username="member-without-group")
    MembershipFactory(project=project, user=no_group, role=Role.ANNOTATOR)
    direct = UserFactory(username="direct-permissions")
    direct.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="annotate", codename__in=["view_project", "annotate_tasks"]))
    MembershipFactory(project=project, user=direct, role=Role.ANNOTATOR)
    inactive = UserFactory(username="inactive", role=Role.ANNOTATOR)
    MembershipFactory(project=project, user=inactive, role=Role.ANNOTATOR)
    inactive.is_active = False
    inactive.save()
    admin_as_annotator = UserFactory(username="admin-group-annotator-role", role=Role.ADMIN)
    MembershipFactory(project=project, user=admin_as_annotator, role=Role.ANNOTATOR)
    stranger = UserFactory(username="stranger", role=Role.ADMIN)
    superuser = UserFactory(username="root")
    superuser.is_superuser = True
    superuser.save()
    return [admin_user, annotator, ml_engineer, no_group, direct, inactive, admin_as_annotator, stranger, superuser]


@pytest.mark.parametrize("action", sorted(ACTION_PERMISSIONS))
def test_project_for_action_matches_access_require(project, people, action):
    from django.contrib.auth import get_user_model

    seen = set()
    for person in people:
        user = get_user_model().objects.get(pk=person.pk)  # fresh: no permission cache
        expected = outcome(lambda user=user: access.require(user=user, action=action, project=project))
        user = get_user_model().objects.get(pk=person.pk)
        got = outcome(lambda user=user: workflow_selectors.project_for_action(
            user=user, project_id=project.pk, action=action))
        assert got == expected, (user.username, action)
        seen.add(got)
    assert "ok" in seen and "404" in seen
    if action != "view":
        assert "403" in seen


def test_unknown_project_is_404(annotator, db):
    with pytest.raises(Http404):
        workflow_selectors.project_for_action(user=annotator, project_id=10**9, action="view")
