"""The Django admin is for active superusers only, so it never widens what the product allows (issue 21.1)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.admin.templatetags.admin_urls import admin_urlname
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from core.audit import audit_record
from generation.models import GenerationJob, ModelVersion
from projects.roles import Role
from tests.factories import PASSWORD, MembershipFactory, ProjectFactory, UserFactory

# Every model registered with the admin, and what a superuser's add page answers (axes' logs
# cannot be added by hand). A model registered later fails test_every_registered_model_is_listed
# until it is added here, and so gets its own check.
SUPERUSER_ADD_STATUS = {
    "group": 200, "user": 200, "tokenproxy": 200,
    "accessattempt": 403, "accesslog": 403, "accessfailurelog": 403,
    "project": 200, "modelversion": 200, "generationjob": 200,
    "logentry": 403,  # the audit trail (django-auditlog) is read-only
}


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)


@pytest.fixture
def staff_project_admin(db):
    """A project admin with ``is_staff`` (as the demo admin was seeded), admin of one project only."""
    user = UserFactory(username="staff-admin", role=Role.ADMIN)
    user.is_staff = True
    user.save()
    MembershipFactory(project=ProjectFactory(name="Mine"), user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def foreign_project(db):
    """A project the staff project admin is not a member of, with an admin of its own."""
    owner = UserFactory(username="other-admin", role=Role.ADMIN)
    project = ProjectFactory(name="Not yours", created_by=owner)
    MembershipFactory(project=project, user=owner, role=Role.ADMIN)
    return project


@pytest.fixture
def one_of_each(superuser, staff_project_admin, foreign_project):
    """At least one row of every registered model, so that every change page has an object."""
    Token.objects.create(user=staff_project_admin)
    version = ModelVersion.objects.create(name="tiny", source="/nowhere", dtype="float32", created_by=superuser)
    GenerationJob.objects.create(project=foreign_project, created_by=superuser, model_version=version,
                                 prompt="a red circle", params={}, params_hash="0" * 64, num_images=1, seeds=[1])
    audit_record(event="model_version.registered", instance=version, actor=superuser, project_id=None)
    now = timezone.now()
    AccessAttempt.objects.create(username="someone", ip_address="127.0.0.1", user_agent="test", attempt_time=now,
                                 get_data="", post_data="", http_accept="*/*", path_info="/login/",
                                 failures_since_start=1)
    AccessLog.objects.create(username="someone", ip_address="127.0.0.1", user_agent="test", attempt_time=now,
                             http_accept="*/*", path_info="/login/")
    AccessFailureLog.objects.create(username="someone", ip_address="127.0.0.1", user_agent="test",
                                    attempt_time=now, http_accept="*/*", path_info="/login/")


def admin_urls() -> list[tuple[str, str, str]]:
    """(model name, page, URL) for every registered model's changelist, add and change pages."""
    urls = []
    for model in admin.site._registry:
        opts = model._meta
        obj = model._default_manager.order_by("pk").first()
        assert obj is not None, f"no {opts.label} row for its change page"
        object_id = obj.user_id if opts.model_name == "tokenproxy" else obj.pk  # the token admin maps user ids
        urls += [
            (opts.model_name, "changelist", reverse(admin_urlname(opts, "changelist"))),
            (opts.model_name, "add", reverse(admin_urlname(opts, "add"))),
            (opts.model_name, "change", reverse(admin_urlname(opts, "change"), args=[object_id])),
        ]
    return urls


def test_every_registered_model_is_listed():
    assert {model._meta.model_name for model in admin.site._registry} == set(SUPERUSER_ADD_STATUS)


def test_a_staff_project_admin_is_sent_to_the_admin_login_from_every_page(client, staff_project_admin, one_of_each):
    client.force_login(staff_project_admin)
    for index_url in (reverse("admin:index"), reverse("admin:app_list", args=["auth"])):
        response = client.get(index_url)
        assert response.status_code == 302, index_url
        assert response["Location"] == f"{reverse('admin:login')}?next={quote(index_url)}"
    for model_name, page, url in admin_urls():
        response = client.get(url)
        assert response.status_code == 302, (model_name, page)
        assert response["Location"] == f"{reverse('admin:login')}?next={quote(url)}", (model_name, page)
    login_page = client.get(reverse("admin:login"))
    assert login_page.status_code == 200
    assert "not authorized to access this page" in login_page.content.decode()


def test_a_superuser_opens_every_page(client, superuser, one_of_each):
    client.force_login(superuser)
    assert client.get(reverse("admin:index")).status_code == 200
    for model_name, page, url in admin_urls():
        expected = SUPERUSER_ADD_STATUS[model_name] if page == "add" else 200
        assert client.get(url).status_code == expected, (model_name, page, url)


def test_inactive_superuser_is_refused(client, superuser):
    client.force_login(superuser)
    superuser.is_active = False
    superuser.save()
    assert client.get(reverse("admin:index")).status_code == 302


def _change_form_data(client, url: str) -> dict[str, object]:
    """What the browser would post back from the change page as shown (main form and every inline)."""
    context = client.get(url).context
    data: dict[str, object] = {}
    for form in [context["adminform"].form] + [
        inline_form for inline in context["inline_admin_formsets"] for inline_form in
        [inline.formset.management_form, *inline.formset.forms]
    ]:
        for field in form:
            value = field.value()
            if value is not None:
                data[field.html_name] = value
    return data


def test_a_project_admin_cannot_add_themself_to_another_project_through_the_admin(
    client, superuser, staff_project_admin, foreign_project
):
    """The escalation of issue 21: /admin/.../project/<id>/change/ with a new admin membership row."""
    url = reverse(admin_urlname(foreign_project._meta, "change"), args=[foreign_project.pk])
    client.force_login(superuser)  # the form as the admin renders it, to post back like a browser
    data = _change_form_data(client, url)
    prefix = next(name for name in data if name.endswith("-TOTAL_FORMS")).removesuffix("-TOTAL_FORMS")
    row = int(data[f"{prefix}-TOTAL_FORMS"])
    data.update({f"{prefix}-TOTAL_FORMS": row + 1, f"{prefix}-{row}-user": staff_project_admin.pk,
                 f"{prefix}-{row}-role": Role.ADMIN})

    client.force_login(staff_project_admin)
    response = client.post(url, data)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:login')}?next={quote(url)}"
    assert not foreign_project.memberships.filter(user=staff_project_admin).exists()
    assert client.get(reverse("annotate:review_tasks", args=[foreign_project.pk])).status_code == 404
    assert client.get(f"/api/projects/{foreign_project.pk}/").status_code == 404

    # The same post by a superuser saves the membership: the data is a valid change, refused only
    # because of who sent it.
    client.force_login(superuser)
    assert client.post(url, data).status_code == 302
    assert foreign_project.memberships.get(user=staff_project_admin).role == Role.ADMIN


def test_the_admin_login_form_refuses_a_staff_project_admin(client, staff_project_admin):
    response = client.post(reverse("admin:login"), {"username": staff_project_admin.username,
                                                    "password": PASSWORD})
    assert response.status_code == 200
    assert "username and password of an active superuser" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_the_admin_link_is_shown_to_superusers_only(client, superuser, staff_project_admin):
    client.force_login(staff_project_admin)
    assert 'href="/admin/"' not in client.get(reverse("home")).content.decode()
    client.force_login(superuser)
    assert 'href="/admin/"' in client.get(reverse("home")).content.decode()
