"""The review page's filters in headless Chromium: choosing a status, an annotator, a disagreement and the sort
updates the list in place (htmx), keeps the URL shareable, and each row shows its candidates' thumbnails."""

from __future__ import annotations

import pytest

from tests.annotate.browser_helpers import wait_until
from tests.annotate.review_fixtures import build_review_project
from tests.conftest import browser_login
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def listed(page) -> list[int]:
    return [int(pk) for pk in page.locator("#review-rows section.review-task").evaluate_all(
        "els => els.map(e => e.dataset.task)")]


def test_filters_and_sort_update_the_list(page, project, admin_user, annotator):
    r = build_review_project(project, admin_user, annotator, store=True)
    browser_login(page, admin_user, PASSWORD)
    page.goto(f"/projects/{project.pk}/review/")
    assert len(listed(page)) == 6
    thumbs = page.locator(f'section[data-task="{r.agreed.pk}"] .review-images img')
    assert thumbs.count() == 4
    assert all(thumbs.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(4))

    count = page.locator("#review-rows .review-count")
    page.get_by_label("Status", exact=True).select_option("answered")
    page.get_by_role("button", name="Show").click()
    count.filter(has_text="3 tasks match the filters.").wait_for()
    assert listed(page) == [r.agreed.pk, r.opposed.pk, r.slight.pk]
    assert "status=answered" in page.url  # the filtered list has its own address

    page.get_by_label("Sort", exact=True).select_option("disagreement")
    page.get_by_role("button", name="Show").click()
    count.filter(has_text="most disagreement first").wait_for()
    assert listed(page) == [r.opposed.pk, r.slight.pk, r.agreed.pk]
    assert page.locator(f'section[data-task="{r.opposed.pk}"] .review-task-meta').inner_text() == \
        "2 answers · annotators disagree on 100% of image pairs"

    page.get_by_label("Status", exact=True).select_option("rejected")
    page.get_by_label("Annotator", exact=True).select_option("anna-annotator")
    page.get_by_label("Sort", exact=True).select_option("position")
    page.get_by_role("button", name="Show").click()
    count.filter(has_text="1 task matches the filters.").wait_for()
    assert listed(page) == [r.rejected.pk]
    assert page.locator("tr.chosen-annotator").get_attribute("data-status") == "rejected"

    page.get_by_label("Status", exact=True).select_option("")
    page.get_by_label("Annotator", exact=True).select_option("")
    page.get_by_label("Annotators disagree", exact=True).select_option("25")
    page.get_by_role("button", name="Show").click()
    wait_until(page, "() => location.search.includes('disagreement=25')")  # the list before had 1 task too
    page.locator(f'#review-rows section.review-task[data-task="{r.opposed.pk}"]').wait_for()
    count.filter(has_text="1 task matches the filters.").wait_for()
    assert listed(page) == [r.opposed.pk]

    page.reload()  # the address holds the filters
    assert listed(page) == [r.opposed.pk] and page.get_by_label("Annotators disagree", exact=True).input_value() == "25"
    page.get_by_role("link", name="Clear").click()
    page.wait_for_url(f"**/projects/{project.pk}/review/")
    assert len(listed(page)) == 6
