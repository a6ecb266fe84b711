"""Headless Chromium: an annotator ranks four images by keys and by drag, writes a rationale,
submits with Enter, lands on the next task; the admin then sees the ranking in review."""

from __future__ import annotations

import pytest

from annotate.models import Annotation
from tests.annotate.factories_workflow import task_with_images
from tests.conftest import browser_login
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_rank_by_keys_and_drag_then_review(page, project, annotator, admin_user):
    first = task_with_images(project, prompt="a red square on <b>blue</b>", store=True)
    second = task_with_images(project, prompt="a green circle", store=True)
    ids = [str(pk) for pk in first.task_images.order_by("position").values_list("image_id", flat=True)]
    a, b, c, d = ids

    browser_login(page, annotator, PASSWORD)
    page.goto(f"/projects/{project.pk}/annotate/")
    assert page.locator("[data-prompt]").inner_text() == "a red square on <b>blue</b>"  # escaped, shown as text
    assert page.locator("[data-testid=progress]").inner_text().startswith("Done 0")

    def select_value(image):
        return page.locator(f'select[name="ranking.rank.{image}"]').input_value()

    # Keys: 3, 1, 4, 2 rank C > A > D > B
    page.locator("h1").click()
    for key in "3142":
        page.keyboard.press(key)
    assert [select_value(x) for x in (c, a, d, b)] == ["1", "2", "3", "4"]
    rows = page.locator(".ann-rank-list li[data-image]")
    assert [rows.nth(i).get_attribute("data-image") for i in range(4)] == [c, a, d, b]

    # Drag B onto A's row: B moves above A -> C > B > A > D
    page.drag_and_drop(f'.ann-rank-list li[data-image="{b}"] .rank-handle', f'.ann-rank-list li[data-image="{a}"]',
                       target_position={"x": 10, "y": 2})
    assert [select_value(x) for x in (c, b, a, d)] == ["1", "2", "3", "4"]

    page.fill("textarea[name=rationale]", "C is the only sharp one")
    page.locator("h1").click()
    page.keyboard.press("Enter")
    page.wait_for_selector(f"text={second.prompt.text}")
    assert page.locator("[data-testid=progress]").inner_text().startswith("Done 1")

    (annotation,) = Annotation.objects.all()
    assert annotation.ranking == [[c], [b], [a], [d]]
    assert annotation.rationale == "C is the only sharp one"
    assert annotation.duration_ms is not None and annotation.duration_ms > 0

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login/")
    browser_login(page, admin_user, PASSWORD)
    page.goto(f"/projects/{project.pk}/review/")
    row = page.locator(f'[data-task="{first.pk}"] tr[data-annotator="{annotator.username}"]')
    assert row.locator("[data-ranking]").inner_text().replace("\n", "").replace(" ", "") == "C>B>A>D"
    assert "C is the only sharp one" in row.inner_text()
