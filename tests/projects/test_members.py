"""Team management: the membership services' rules, the members API (exact statuses for every role), and the
Members page with and without htmx (PRG, fragments, errors next to their field, a fixed query count)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from core.exceptions import ApplicationError
from projects import services
from projects.models import ProjectMembership
from projects.roles import Role
from tests.factories import PASSWORD, MembershipFactory, UserFactory, api_client_for

HX = {"HTTP_HX_REQUEST": "true"}


def roles_of(project) -> dict[str, str]:
    return dict(ProjectMembership.objects.filter(project=project).values_list("user__username", "role"))


@pytest.fixture
def bob(db):
    """A second project admin (global role), not yet a member."""
    return UserFactory(username="bob-admin", email="Bob@Example.org", role=Role.ADMIN)


@pytest.fixture
def newcomer(db):
    return UserFactory(username="nina-annotator", email="nina@example.org", role=Role.ANNOTATOR)


# --- services ----------------------------------------------------------------------------------


def test_add_by_username_or_email_in_a_role_the_global_group_allows(project, bob, newcomer, ml_engineer):
    added = services.membership_add(project=project, identifier="nina-annotator", role=Role.ANNOTATOR)
    assert (added.user, added.role) == (newcomer, Role.ANNOTATOR)
    by_email = services.membership_add(project=project, identifier="  bob@example.ORG ", role=Role.ML_ENGINEER)
    assert by_email.user == bob and by_email.role == Role.ML_ENGINEER  # a Project admin may hold any role

    with pytest.raises(ApplicationError) as again:
        services.membership_add(project=project, identifier="bob-admin", role=Role.ADMIN)
    assert again.value.field == "user"
    assert again.value.message == ("bob-admin is already a member (as ML engineer); change their role in the list "
                                   "instead.")
    with pytest.raises(ApplicationError) as unknown:
        services.membership_add(project=project, identifier="nobody@example.org", role=Role.ANNOTATOR)
    assert (unknown.value.field, unknown.value.message) == (
        "user", "No user with the username or email 'nobody@example.org'.")
    with pytest.raises(ApplicationError) as blank:
        services.membership_add(project=project, identifier=" ", role=Role.ANNOTATOR)
    assert blank.value.field == "user"
    with pytest.raises(ApplicationError) as bad_role:
        services.membership_add(project=project, identifier="nina-annotator", role="owner")
    assert bad_role.value.field == "role"


def test_the_global_group_must_allow_the_role(project, newcomer, ml_engineer):
    with pytest.raises(ApplicationError) as refused:
        services.membership_add(project=project, identifier="nina-annotator", role=Role.ADMIN)
    assert refused.value.field == "role"
    assert refused.value.message == ("nina-annotator cannot have the Project admin role: their global role "
                                     "(Annotators) allows only Annotator.")
    with pytest.raises(ApplicationError) as demote:
        services.membership_set_role(project=project, user=ml_engineer, role=Role.ANNOTATOR)
    assert (demote.value.field, demote.value.message) == (
        "role", "mel-ml cannot have the Annotator role: their global role (ML engineers) allows only ML engineer.")
    loner = UserFactory(username="no-group")
    with pytest.raises(ApplicationError) as no_group:
        services.membership_add(project=project, identifier="no-group", role=Role.ANNOTATOR)
    assert no_group.value.field == "role" and "has no global role" in no_group.value.message
    loner.user_permissions.add(*Permission.objects.filter(codename__in=["view_project", "annotate_tasks"]))
    loner = type(loner).objects.get(pk=loner.pk)  # a fresh permission cache
    assert services.roles_allowed(loner) == [Role.ANNOTATOR]  # direct permissions count like a group's
    inactive = UserFactory(username="gone", role=Role.ANNOTATOR)
    inactive.is_active = False
    inactive.save()
    with pytest.raises(ApplicationError) as deactivated:
        services.membership_add(project=project, identifier="gone", role=Role.ANNOTATOR)
    assert deactivated.value.message == "gone is deactivated and cannot be a member."
    assert roles_of(project) == {"alice-admin": "admin", "anna-annotator": "annotator", "mel-ml": "ml_engineer"}


def test_the_last_admin_can_be_neither_demoted_nor_removed(project, admin_user, bob):
    with pytest.raises(ApplicationError) as demote:
        services.membership_set_role(project=project, user=admin_user, role=Role.ANNOTATOR)
    assert (demote.value.field, demote.value.message) == (
        "role", "You cannot demote the project's last admin; make another member an admin first.")
    with pytest.raises(ApplicationError) as remove:
        services.membership_remove(project=project, user=admin_user)
    assert (remove.value.field, remove.value.message) == (
        "user", "You cannot remove the project's last admin; make another member an admin first.")

    services.membership_add(project=project, identifier="bob-admin", role=Role.ADMIN)
    services.membership_set_role(project=project, user=admin_user, role=Role.ML_ENGINEER)  # bob is admin now
    with pytest.raises(ApplicationError):
        services.membership_remove(project=project, user=bob)
    services.membership_set_role(project=project, user=admin_user, role=Role.ADMIN)
    services.membership_remove(project=project, user=bob)
    assert roles_of(project)["alice-admin"] == "admin" and "bob-admin" not in roles_of(project)


def test_set_role_creates_only_when_asked_and_remove_needs_a_member(project, newcomer):
    with pytest.raises(ApplicationError) as missing:
        services.membership_set_role(project=project, user=newcomer, role=Role.ANNOTATOR)
    assert missing.value.message == "nina-annotator is not a member of this project."
    created = services.membership_set_role(project=project, user=newcomer, role=Role.ANNOTATOR, create=True)
    assert created.role == Role.ANNOTATOR
    services.membership_remove(project=project, user=newcomer)
    with pytest.raises(ApplicationError):
        services.membership_remove(project=project, user=newcomer)


# --- the API -----------------------------------------------------------------------------------


def test_members_api_lists_sets_and_removes(project, admin_user, newcomer):
    api = api_client_for(admin_user)
    url = f"/api/projects/{project.pk}/members/"
    listed = api.get(url)
    assert listed.status_code == 200 and listed.json()["count"] == 3
    assert listed.json()["results"][0] == {"user_id": admin_user.pk, "username": "alice-admin", "role": "admin"}
    assert [m["username"] for m in listed.json()["results"]] == ["alice-admin", "mel-ml", "anna-annotator"]

    created = api.put(url + "nina-annotator/", {"role": "annotator"}, format="json")
    assert created.status_code == 201
    assert created.json() == {"user_id": newcomer.pk, "username": "nina-annotator", "role": "annotator"}
    assert api.put(url + "nina-annotator/", {"role": "annotator"}, format="json").status_code == 200

    refused = api.put(url + "nina-annotator/", {"role": "admin"}, format="json")
    assert refused.status_code == 400 and refused.json()["field"] == "role"
    last = api.put(url + "alice-admin/", {"role": "annotator"}, format="json")
    assert last.status_code == 400 and last.json() == {
        "detail": "You cannot demote the project's last admin; make another member an admin first.", "field": "role"}
    invalid = api.put(url + "nina-annotator/", {"role": "owner"}, format="json")
    assert invalid.status_code == 400 and "role" in invalid.json()
    unknown = api.put(url + "ghost/", {"role": "annotator"}, format="json")
    assert unknown.status_code == 404 and unknown.json() == {"detail": "No user named 'ghost'.", "field": "username"}

    assert api.delete(url + "nina-annotator/").status_code == 204
    gone = api.delete(url + "nina-annotator/")
    assert gone.status_code == 404 and gone.json()["detail"] == "nina-annotator is not a member of this project."
    assert api.delete(url + "alice-admin/").status_code == 400
    assert roles_of(project) == {"alice-admin": "admin", "anna-annotator": "annotator", "mel-ml": "ml_engineer"}


def test_members_api_is_for_the_projects_admins_only(project, annotator, ml_engineer, other_project, admin_user):
    url = f"/api/projects/{project.pk}/members/"
    for member in (annotator, ml_engineer):
        api = api_client_for(member)
        assert api.get(url).status_code == 403
        assert api.put(url + "anna-annotator/", {"role": "annotator"}, format="json").status_code == 403
        assert api.delete(url + "anna-annotator/").status_code == 403
    outsider = api_client_for(admin_user)
    other = f"/api/projects/{other_project.pk}/members/"
    assert outsider.get(other).status_code == 404
    assert outsider.put(other + "alice-admin/", {"role": "admin"}, format="json").status_code == 404
    assert outsider.delete(other + f"{other_project.memberships.get().user.username}/").status_code == 404
    from rest_framework.test import APIClient

    assert APIClient().get(url).status_code == 401
    assert ProjectMembership.objects.filter(project=other_project).count() == 1


def test_members_list_pages(project, admin_user):
    for n in range(5):
        MembershipFactory(project=project, user=UserFactory(username=f"extra-{n}", role=Role.ANNOTATOR))
    api = api_client_for(admin_user)
    first = api.get(f"/api/projects/{project.pk}/members/?page_size=3").json()
    assert first["count"] == 8 and len(first["results"]) == 3 and first["next"]


# --- the Members page --------------------------------------------------------------------------


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)


def test_members_page_full_and_fragment_with_a_fixed_query_count(client, project, admin_user,
                                                                django_assert_max_num_queries):
    login(client, admin_user)
    url = reverse("projects:membership_list", args=[project.pk])
    with django_assert_max_num_queries(14) as few:
        page = client.get(url)
    html = page.content.decode()
    assert page.status_code == 200 and "<html" in html and 'id="members"' in html
    assert html.count("data-member=") == 3 and f'action="{url}"' in html and "js/members.js" in html
    for n in range(6):
        MembershipFactory(project=project, user=UserFactory(username=f"many-{n}", role=Role.ANNOTATOR))
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get(url)
    fragment = client.get(url, **HX).content.decode()
    assert "<html" not in fragment and fragment.strip().startswith('<section id="members"')
    assert fragment.count("data-member=") == 9
    # an annotator's global role allows no other role: the others are offered disabled, saying why
    assert 'value="admin" disabled>Project admin (not allowed by their global role)' in fragment


def test_plain_posts_redirect_and_htmx_posts_answer_with_the_fragment(client, project, admin_user, newcomer):
    login(client, admin_user)
    url = reverse("projects:membership_list", args=[project.pk])
    added = client.post(url, {"user": "nina@example.org", "role": "annotator"})
    assert added.status_code == 303 and added["Location"] == url
    assert "Added nina-annotator as Annotator." in client.get(url).content.decode()  # the message, once

    role_url = reverse("projects:membership_role", args=[project.pk, newcomer.pk])
    changed = client.post(role_url, {"role": "admin"}, **HX)
    assert changed.status_code == 400 and "<html" not in changed.content.decode()
    assert f'id="member-error-{newcomer.pk}"' in changed.content.decode()
    assert "nina-annotator cannot have the Project admin role" in changed.content.decode()
    assert roles_of(project)["nina-annotator"] == "annotator"

    bad_add = client.post(url, {"user": "ghost", "role": "annotator"})
    html = bad_add.content.decode()
    assert bad_add.status_code == 400 and "<html" in html
    assert 'id="member-add-error"' in html and "No user with the username or email &#x27;ghost&#x27;." in html
    assert 'value="ghost"' in html  # what was typed stays

    remove_url = reverse("projects:membership_remove", args=[project.pk, newcomer.pk])
    removed = client.post(remove_url, **HX)
    assert removed.status_code == 200 and "Removed nina-annotator from the project." in removed.content.decode()
    assert "nina-annotator" not in roles_of(project)
    last = client.post(reverse("projects:membership_remove", args=[project.pk, admin_user.pk]))
    assert last.status_code == 400 and "last admin" in last.content.decode()


def test_an_admin_who_demotes_themself_leaves_the_page(client, project, admin_user, bob):
    services.membership_add(project=project, identifier="bob-admin", role=Role.ADMIN)
    login(client, admin_user)
    response = client.post(reverse("projects:membership_role", args=[project.pk, admin_user.pk]),
                           {"role": "ml_engineer"})
    assert response.status_code == 303
    assert response["Location"] == reverse("annotate:project_detail", args=[project.pk])
    assert client.get(reverse("projects:membership_list", args=[project.pk])).status_code == 403
    response = client.post(reverse("projects:membership_remove", args=[project.pk, admin_user.pk]))
    assert response.status_code == 403  # no longer an admin here


def test_members_page_refuses_members_without_manage_and_hides_from_others(client, project, annotator,
                                                                          ml_engineer, other_project, admin_user):
    url = reverse("projects:membership_list", args=[project.pk])
    for user in (annotator, ml_engineer):
        login(client, user)
        assert client.get(url).status_code == 403
        assert client.post(url, {"user": "anna-annotator", "role": "annotator"}).status_code == 403
        assert client.post(reverse("projects:membership_remove", args=[project.pk, annotator.pk])).status_code == 403
    login(client, admin_user)
    assert client.get(reverse("projects:membership_list", args=[other_project.pk])).status_code == 404
    stranger = other_project.memberships.get().user
    assert client.post(reverse("projects:membership_remove", args=[other_project.pk, stranger.pk])).status_code == 404
    assert client.post(reverse("projects:membership_remove", args=[project.pk, stranger.pk])).status_code == 404
    client.logout()
    assert client.get(url).status_code == 302  # to the login page
    assert ProjectMembership.objects.filter(project=other_project).count() == 1 and len(roles_of(project)) == 3
