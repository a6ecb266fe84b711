"""The client's members and arena calls, and `pickwise members` / `pickwise arena`, against the live test
server: what an admin can do, what the rules refuse (400 naming the field), and 403/404 for everyone else."""

from __future__ import annotations

import json

import pytest
from pickwise_client import NotFoundError, PermissionDeniedError, ValidationError
from pickwise_client.cli import ExitCode, app
from typer.testing import CliRunner

from projects.models import ProjectMembership
from projects.roles import Role
from rlhf.loop.arena import arena_create
from tests.client.conftest import token_for
from tests.factories import UserFactory
from tests.rlhf.test_arena import comparisons, version, vote_for


@pytest.fixture
def newcomer(db):
    return UserFactory(username="nick.new+1@lab", email="nick@example.org", role=Role.ANNOTATOR)


def test_members_are_listed_set_and_removed(admin_api, annotator_api, project, newcomer, other_project):
    assert list(admin_api.members.list(project.pk)) == [
        {"user_id": project.created_by.pk, "username": "alice-admin", "role": "admin"},
        {"user_id": project.memberships.get(role=Role.ML_ENGINEER).user_id, "username": "mel-ml",
         "role": "ml_engineer"},
        {"user_id": project.memberships.get(role=Role.ANNOTATOR).user_id, "username": "anna-annotator",
         "role": "annotator"}]
    added = admin_api.members.set(project.pk, "nick.new+1@lab", "annotator")  # a username that needs quoting
    assert added == {"user_id": newcomer.pk, "username": "nick.new+1@lab", "role": "annotator"}

    with pytest.raises(ValidationError) as refused:
        admin_api.members.set(project.pk, "nick.new+1@lab", "admin")
    assert (refused.value.status, refused.value.field) == (400, "role")
    assert refused.value.message == ("nick.new+1@lab cannot have the Project admin role: their global role "
                                     "(Annotators) allows only Annotator.")
    with pytest.raises(ValidationError) as last_admin:
        admin_api.members.remove(project.pk, "alice-admin")
    assert last_admin.value.field == "user" and "last admin" in last_admin.value.message
    with pytest.raises(NotFoundError) as ghost:
        admin_api.members.set(project.pk, "ghost", "annotator")
    assert ghost.value.message == "No user named 'ghost'."

    with pytest.raises(PermissionDeniedError):
        list(annotator_api.members.list(project.pk))
    with pytest.raises(PermissionDeniedError):
        annotator_api.members.remove(project.pk, "nick.new+1@lab")
    with pytest.raises(NotFoundError):
        list(admin_api.members.list(other_project.pk))

    admin_api.members.remove(project.pk, "nick.new+1@lab")
    assert "nick.new+1@lab" not in {m["username"] for m in admin_api.members.list(project.pk)}


def test_members_commands(live_server, project, admin_user, annotator, newcomer):
    runner = CliRunner()

    def run(*args: str, user=admin_user):
        return runner.invoke(app, list(args), env={"PICKWISE_URL": live_server.url, "PICKWISE_TOKEN": token_for(user)},
                             catch_exceptions=False)

    p = str(project.pk)
    table = run("members", "list", "-p", p)
    assert table.exit_code == 0
    assert [line.split() for line in table.stdout.splitlines()][:2] == [
        ["USER", "ID", "USERNAME", "ROLE"], [str(admin_user.pk), "alice-admin", "admin"]]
    done = run("members", "set", "nick.new+1@lab", "annotator", "-p", p)
    assert done.exit_code == 0 and done.stderr == f"nick.new+1@lab is annotator in project {p}.\n"
    assert ProjectMembership.objects.get(project=project, user=newcomer).role == Role.ANNOTATOR

    refused = run("members", "set", "nick.new+1@lab", "ml_engineer", "-p", p)
    assert refused.exit_code == ExitCode.API_ERROR and "role: nick.new+1@lab cannot have the ML engineer role" in \
        refused.stderr
    assert run("members", "set", "nick.new+1@lab", "owner", "-p", p).exit_code == ExitCode.USAGE
    assert run("members", "list", "-p", p, user=annotator).exit_code == ExitCode.PERMISSION
    assert run("members", "remove", "ghost", "-p", p).exit_code == ExitCode.NOT_FOUND

    removed = run("members", "remove", "nick.new+1@lab", "-p", p)
    assert removed.exit_code == 0 and removed.stderr == f"Removed nick.new+1@lab from project {p}.\n"
    listed = json.loads(run("members", "list", "-p", p, "--json").stdout)
    assert [m["username"] for m in listed] == ["alice-admin", "mel-ml", "anna-annotator"]


def test_arena_results(admin_api, ml_api, annotator_api, project, admin_user, annotator, live_server, ml_engineer):
    with pytest.raises(NotFoundError) as none_yet:
        ml_api.arena.results(project.pk)
    assert none_yet.value.message == "Project 'Shapes' is not an arena; set one up first."

    old, new = version("arena-old"), version("arena-new")
    arena = arena_create(project=project, user=admin_user, versions=[old, new])
    comparisons(arena, project, new, old, range(10))
    for wanted in [new] * 7 + [old] * 2 + [None]:
        vote_for(arena, annotator, wanted)

    results = ml_api.arena.results(project.pk)
    assert results["votes"] == 10
    top, bottom = results["leaderboard"]
    assert (top["model_version"], top["wins"], top["losses"], top["ties"]) == ("arena-new", 7, 2, 1)
    assert (bottom["model_version"], bottom["wins"], bottom["losses"], bottom["ties"]) == ("arena-old", 2, 7, 1)
    assert top["strength"] / bottom["strength"] == pytest.approx(7.6 / 2.6, rel=1e-6)
    [pair] = results["head_to_head"]
    assert {k: pair[k] for k in ("a", "b", "a_wins", "b_wins", "ties", "win_rate")} == {
        "a": "arena-new", "b": "arena-old", "a_wins": 7, "b_wins": 2, "ties": 1, "win_rate": 0.75}
    assert pair["ci_low"] == pytest.approx(0.44218, abs=1e-4) and pair["ci_high"] == pytest.approx(0.91906, abs=1e-4)
    assert admin_api.arena.results(project.pk) == results

    with pytest.raises(PermissionDeniedError) as voter:
        annotator_api.arena.results(project.pk)  # a voter must not learn which version won
    assert voter.value.status == 403

    shown = CliRunner().invoke(app, ["arena", "results", "-p", str(project.pk)], catch_exceptions=False,
                               env={"PICKWISE_URL": live_server.url, "PICKWISE_TOKEN": token_for(ml_engineer)})
    assert shown.exit_code == 0
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "STRENGTH", "WINS", "LOSSES", "TIES"]
    assert lines[1].split()[0] == "arena-new" and lines[1].split()[2:] == ["7", "2", "1"]
    assert lines[-1].split() == ["arena-new", "arena-old", "7", "2", "1", "0.750", "0.442-0.919"]
