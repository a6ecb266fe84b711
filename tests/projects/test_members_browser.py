"""The Members page in headless Chromium: an admin adds people by username and email, changes a role and
removes someone (htmx, the focus following each answer); refused changes say why beside the field; annotators
are refused (403) and other projects' admins see nothing (404)."""

from __future__ import annotations

import pytest
from axe_playwright_python.sync_playwright import Axe

from projects.models import ProjectMembership
from projects.roles import Role
from tests.annotate.browser_helpers import wait_until
from tests.conftest import browser_login
from tests.core.test_accessibility_browser import assert_accessible
from tests.factories import PASSWORD, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def roles_of(project) -> dict[str, str]:
    return dict(ProjectMembership.objects.filter(project=project).values_list("user__username", "role"))


def row(page, username):
    return page.locator(f'#members tr[data-member="{username}"]')


def test_an_admin_adds_changes_and_removes_members(page, project, admin_user):
    UserFactory(username="nina-annotator", email="nina@example.org", role=Role.ANNOTATOR)
    UserFactory(username="bob-admin", role=Role.ADMIN)
    browser_login(page, admin_user, PASSWORD)
    page.goto(f"/projects/{project.pk}/")
    page.get_by_role("link", name="Members", exact=True).click()
    page.wait_for_url(f"**/projects/{project.pk}/members/")
    assert page.locator("#members tbody tr").count() == 3

    # add by email, as an annotator: the list grows in place and the status line says so
    page.get_by_label("Username or email").fill("NINA@example.org")
    page.get_by_label("Role", exact=True).select_option("annotator")
    page.get_by_role("button", name="Add").click()
    status = page.locator("#members-status")
    status.filter(has_text="Added nina-annotator as Annotator.").wait_for()
    wait_until(page, "() => document.activeElement.id === 'members-status'")  # the focus follows the answer
    assert row(page, "nina-annotator").get_attribute("data-role") == "annotator"
    assert page.url.endswith(f"/projects/{project.pk}/members/")  # htmx: no reload

    # an annotator's global role allows no other role: the option is there, disabled, saying why
    option = row(page, "nina-annotator").locator('option[value="admin"]')
    assert option.is_disabled() and "not allowed by their global role" in option.inner_text()

    # a refused add keeps what was typed and puts the error beside it, with the focus
    page.get_by_label("Username or email").fill("ghost")
    page.get_by_role("button", name="Add").click()
    error = page.locator("#member-add-error")
    error.wait_for()
    assert error.inner_text() == "No user with the username or email 'ghost'."
    assert page.get_by_label("Username or email").input_value() == "ghost"
    wait_until(page, "() => document.activeElement.name === 'user'")
    assert page.get_by_label("Username or email").get_attribute("aria-describedby") == "member-add-error"
    assert_accessible(page, Axe(), "members with an error")

    # add bob as an admin, then make him an ML engineer
    page.get_by_label("Username or email").fill("bob-admin")
    page.get_by_label("Role", exact=True).select_option("admin")
    page.get_by_role("button", name="Add").click()
    status.filter(has_text="Added bob-admin as Project admin.").wait_for()
    row(page, "bob-admin").get_by_label("Role of bob-admin").select_option("ml_engineer")
    row(page, "bob-admin").get_by_role("button", name="Change role").click()
    status.filter(has_text="bob-admin is now ML engineer.").wait_for()
    assert roles_of(project)["bob-admin"] == "ml_engineer"

    # the last admin cannot be demoted: the error sits in her row
    row(page, "alice-admin").get_by_label("Role of alice-admin").select_option("annotator")
    row(page, "alice-admin").get_by_role("button", name="Change role").click()
    row_error = row(page, "alice-admin").locator(".inline-error")
    row_error.wait_for()
    assert row_error.inner_text() == "You cannot demote the project's last admin; make another member an admin first."
    assert roles_of(project)["alice-admin"] == "admin"

    # remove nina, confirming the browser's question
    page.once("dialog", lambda dialog: dialog.accept())
    row(page, "nina-annotator").get_by_role("button", name="Remove nina-annotator").click()
    status.filter(has_text="Removed nina-annotator from the project.").wait_for()
    assert row(page, "nina-annotator").count() == 0 and "nina-annotator" not in roles_of(project)
    page.once("dialog", lambda dialog: dialog.dismiss())  # cancelling removes nobody
    row(page, "bob-admin").get_by_role("button", name="Remove bob-admin").click()
    page.wait_for_timeout(300)
    assert "bob-admin" in roles_of(project)


def test_without_javascript_the_forms_post_and_redirect(browser, live_server, project, admin_user):
    UserFactory(username="nina-annotator", role=Role.ANNOTATOR)
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    page = context.new_page()
    try:
        browser_login(page, admin_user, PASSWORD)
        page.goto(f"/projects/{project.pk}/members/")
        page.get_by_label("Username or email").fill("nina-annotator")
        page.get_by_role("button", name="Add").click()
        page.wait_for_url(f"**/projects/{project.pk}/members/")
        assert "Added nina-annotator as Annotator." in page.locator(".messages").inner_text()
        assert roles_of(project)["nina-annotator"] == "annotator"
    finally:
        context.close()


def test_annotators_are_refused_and_other_projects_are_hidden(page, project, annotator, other_project):
    browser_login(page, annotator, PASSWORD)
    response = page.goto(f"/projects/{project.pk}/members/")
    assert response.status == 403 and page.locator("#members").count() == 0
    page.goto(f"/projects/{project.pk}/")
    assert page.get_by_role("link", name="Members", exact=True).count() == 0
    assert page.goto(f"/projects/{other_project.pk}/members/").status == 404
