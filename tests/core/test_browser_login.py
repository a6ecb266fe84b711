"""The demo users log in through the real page in headless Chromium and see their role's navigation."""

from __future__ import annotations

import pytest

from tests.conftest import browser_login
from tests.factories import PASSWORD

pytestmark = pytest.mark.browser


def test_each_role_logs_in_and_sees_its_navigation(page, admin_user, annotator, ml_engineer, project):
    expected = {
        admin_user: {"New project": True, "Datasets & training": True},
        annotator: {"New project": False, "Datasets & training": False},
        ml_engineer: {"New project": False, "Datasets & training": True},
    }
    for user, links in expected.items():
        browser_login(page, user, PASSWORD)
        nav = page.locator("nav[aria-label=Main]")
        for label, shown in links.items():
            assert (nav.get_by_role("link", name=label).count() == 1) is shown, (user.username, label)
        assert page.get_by_role("link", name="Shapes").count() == 1
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/login/")


def test_wrong_password_is_explained(page, annotator):
    page.goto("/login/")
    page.fill("input[name=username]", annotator.username)
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert "correct username and password" in page.locator("[role=alert]").inner_text()
