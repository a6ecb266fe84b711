"""The three roles on a protected page and a protected API; members see only their projects."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import PASSWORD, api_client_for


def login(client, user) -> None:
    assert client.login(username=user.username, password=PASSWORD)


def test_anonymous_is_sent_to_login(client, db):
    response = client.get(reverse("annotate:project_create"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_login_page_logs_in_and_out(client, annotator):
    response = client.post(reverse("login"), {"username": annotator.username, "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 200
    client.post(reverse("logout"))
    assert client.get(reverse("home")).status_code == 302


def test_wrong_password_shows_error(client, annotator):
    response = client.post(reverse("login"), {"username": annotator.username, "password": "nope"})
    assert response.status_code == 200
    assert "correct username and password" in response.content.decode()


@pytest.mark.parametrize(
    ("user_fixture", "create_status", "ml_status"),
    [("admin_user", 200, 200), ("annotator", 403, 403), ("ml_engineer", 403, 200)],
)
def test_protected_pages_by_role(client, request, project, user_fixture, create_status, ml_status):
    login(client, request.getfixturevalue(user_fixture))
    assert client.get(reverse("annotate:project_create")).status_code == create_status
    assert client.get(reverse("rlhf:index")).status_code == ml_status


def test_navigation_shows_each_role_what_it_can_do(client, admin_user, annotator, ml_engineer, project):
    expectations = {
        admin_user: {"New project": True, "Datasets &amp; training": True},
        annotator: {"New project": False, "Datasets &amp; training": False},
        ml_engineer: {"New project": False, "Datasets &amp; training": True},
    }
    for user, links in expectations.items():
        login(client, user)
        nav = client.get(reverse("home")).content.decode().split("</nav>")[0]
        for label, shown in links.items():
            assert (label in nav) is shown, (user.username, label)


def test_admin_creates_project_through_the_page(client, admin_user):
    login(client, admin_user)
    response = client.post(reverse("annotate:project_create"), {"name": "  Faces  ", "description": "x"})
    assert response.status_code == 303
    detail = client.get(response["Location"])
    assert detail.status_code == 200
    assert "Faces" in detail.content.decode()
    assert "Project admin" in detail.content.decode()


@pytest.mark.parametrize(
    ("user_fixture", "status"), [("admin_user", 201), ("annotator", 403), ("ml_engineer", 403)]
)
def test_only_admins_create_projects_through_the_api(request, project, user_fixture, status):
    client = api_client_for(request.getfixturevalue(user_fixture))
    response = client.post("/api/projects/", {"name": "Via API"}, format="json")
    assert response.status_code == status, response.content


def test_api_needs_authentication(api_client, project):
    assert api_client.get("/api/projects/").status_code == 401
    assert api_client.get("/api/me/").status_code == 401


def test_annotator_sees_only_their_projects(annotator, project, other_project, client):
    api = api_client_for(annotator)
    listed = api.get("/api/projects/").json()["results"]
    assert [p["id"] for p in listed] == [project.pk]
    assert listed[0]["role"] == "annotator"
    assert api.get(f"/api/projects/{other_project.pk}/").status_code == 404
    login(client, annotator)
    assert client.get(reverse("annotate:project_detail", args=[other_project.pk])).status_code == 404
    assert other_project.name not in client.get(reverse("annotate:project_list")).content.decode()


def test_me_reports_roles(ml_engineer):
    body = api_client_for(ml_engineer).get("/api/me/").json()
    assert body["roles"] == ["ml_engineer"]
    assert body["permissions"] == {"manage": False, "annotate": False, "export": True, "train": True}


def test_token_endpoint_issues_a_working_token(api_client, annotator):
    response = api_client.post("/api/token/", {"username": annotator.username, "password": PASSWORD})
    assert response.status_code == 200
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    assert api_client.get("/api/me/").json()["username"] == annotator.username


def test_openapi_schema_describes_the_api(client, admin_user):
    login(client, admin_user)
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert "/api/projects/" in response.json()["paths"]


def test_createsuperuser_still_works(db):
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("createsuperuser", username="root", email="root@example.org", interactive=False)
    assert get_user_model().objects.get(username="root").is_superuser
