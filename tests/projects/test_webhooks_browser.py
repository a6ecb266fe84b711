"""The webhooks pages in Chromium: a project admin finds them from the project page, adds an endpoint, copies
its secret (shown once), sends a test event and sees it in the delivery log; axe finds nothing serious."""

from __future__ import annotations

import pytest
from axe_playwright_python.sync_playwright import Axe

from projects.models import WebhookEndpoint
from tests.conftest import browser_login
from tests.core.test_accessibility_browser import assert_accessible
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _no_webhook_worker(settings):
    settings.WEBHOOK_QUEUE = "webhooks-browser-tests-unconsumed"  # the log shows the test event as pending


def test_an_admin_adds_an_endpoint_and_tests_it(page, project, admin_user):
    axe = Axe()
    browser_login(page, admin_user, PASSWORD)
    page.goto(f"/projects/{project.pk}/")
    page.get_by_role("link", name="Webhooks").click()
    page.wait_for_url(f"**/projects/{project.pk}/webhooks/")
    assert_accessible(page, axe, "webhooks page")

    page.get_by_label("URL (receives a POST per event)").fill("https://receiver.invalid/hook")
    for name in ("annotation.created", "annotation.amended", "annotation.rejected", "task.completed"):
        page.get_by_role("checkbox", name=name).uncheck()
    page.get_by_role("button", name="Add endpoint").click()
    endpoint = WebhookEndpoint.objects.get()
    page.wait_for_url(f"**/projects/{project.pk}/webhooks/{endpoint.pk}/")
    assert page.locator("code.secret").inner_text() == endpoint.secret
    assert "annotation.created" not in endpoint.event_types and "run.finished" in endpoint.event_types
    assert_accessible(page, axe, "an endpoint's page, its secret shown")

    page.get_by_role("button", name="Send a test event").click()
    log = page.locator("#webhook-deliveries")
    log.get_by_text("ping").wait_for()
    assert "Pending" in log.inner_text()
    assert page.locator("code.secret").count() == 0  # shown once only
    page.get_by_role("button", name="Disable").click()
    page.get_by_role("alert").filter(has_text="Disabled").wait_for()
    assert_accessible(page, axe, "a disabled endpoint's page with its delivery log")
