"""Two admins demoting (or removing) each other at the same moment on real PostgreSQL: the project keeps an admin."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from core.exceptions import ApplicationError
from projects import services
from projects.models import ProjectMembership
from projects.roles import Role
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("change", ["demote", "remove"])
def test_two_admins_taking_each_other_out_at_once_leave_one_admin(change):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL (run through `make test`)")
    project = ProjectFactory(name="Two admins")
    first, second = (UserFactory(username=f"{change}-{n}", role=Role.ADMIN, password=None) for n in (1, 2))
    for user in (first, second):
        MembershipFactory(project=project, user=user, role=Role.ADMIN)
    barrier, outcomes = threading.Barrier(2), []

    def take_out(user):
        try:
            barrier.wait()
            if change == "demote":
                services.membership_set_role(project=project, user=user, role=Role.ANNOTATOR)
            else:
                services.membership_remove(project=project, user=user)
            outcomes.append("done")
        except ApplicationError as exc:
            outcomes.append(exc.field)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=take_out, args=(user,)) for user in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["done", "role" if change == "demote" else "user"]
    assert ProjectMembership.objects.filter(project=project, role=Role.ADMIN).count() == 1
