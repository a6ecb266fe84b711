"""The annotation page in headless Chromium: the layout measured at laptop and phone sizes, click-to-rank with
badges and ties, the full-size view and two-up compare by keyboard, Enter on a link, the shortcut sheet,
the demo preset's single model preselected, required fields that explain themselves, and the best-of-N and
pairwise layouts."""

from __future__ import annotations

import pytest

from annotate.models import Annotation
from generation.models import ModelVersion
from tests.annotate.browser_helpers import image_ids, use_template, wait_until
from tests.annotate.factories_workflow import RANK_SCHEMA, model_version, task_with_images
from tests.conftest import browser_login
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def open_task(page, project, user):
    browser_login(page, user, PASSWORD)
    page.goto(f"/projects/{project.pk}/annotate/")
    page.wait_for_selector("form[data-rank-form][data-rank-ready]")


def box(page, selector):
    return page.locator(selector).bounding_box()


def badges(page):
    return page.locator(".ann-image [data-badge]").evaluate_all("els => els.map(e => e.textContent)")


def test_four_candidates_and_the_ranking_fit_a_laptop_screen_and_stack_on_a_phone(page, project, annotator):
    task_with_images(project, store=True)
    page.set_viewport_size(LAPTOP)
    open_task(page, project, annotator)
    images = [page.locator(".ann-image img").nth(i).bounding_box() for i in range(4)]
    for image in images:  # every candidate whole on screen, large enough to compare
        assert image["y"] >= 0 and image["y"] + image["height"] <= LAPTOP["height"]
        assert image["x"] >= 0 and image["x"] + image["width"] <= LAPTOP["width"]
        assert image["width"] >= 220
    assert len({round(i["x"]) for i in images}) == 2 and len({round(i["y"]) for i in images}) == 2  # 2x2
    ranking, submit = box(page, "fieldset.ann-ranking"), box(page, "[data-submit]")
    assert ranking["y"] + ranking["height"] <= LAPTOP["height"] and submit["y"] + submit["height"] <= LAPTOP["height"]
    assert ranking["x"] >= max(i["x"] + i["width"] for i in images)  # the ranking sits beside the candidates
    assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"]

    page.set_viewport_size(PHONE)
    page.reload()
    page.wait_for_selector("form[data-rank-form][data-rank-ready]")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scrolling
    images = [page.locator(".ann-image img").nth(i).bounding_box() for i in range(4)]
    for image in images:
        assert image["x"] >= 0 and image["x"] + image["width"] <= PHONE["width"] and image["width"] >= 150
    ranking, submit = box(page, "fieldset.ann-ranking"), box(page, "[data-submit]")
    assert ranking["y"] >= max(i["y"] + i["height"] for i in images)  # one column: the ranking below the images
    assert ranking["width"] >= 330
    assert submit["width"] >= 330 and submit["height"] >= 44  # a thumb-sized Submit


def test_click_to_rank_with_badges_and_ties_then_view_and_compare_by_keyboard(page, project, admin_user, annotator):
    use_template(project, admin_user, schema=RANK_SCHEMA)  # ties allowed
    task = task_with_images(project, store=True)
    a, b, c, d = image_ids(task)
    open_task(page, project, annotator)

    def pick(letter, **kwargs):
        page.locator(f".ann-image[data-letter={letter}] .cand-pick").click(**kwargs)

    pick("C")
    pick("A")
    pick("D", modifiers=["Shift"])  # tie D with A
    assert badges(page) == ["2=", "", "1", "2="]
    assert page.locator(f'select[name="ranking.rank.{d}"]').input_value() == "2"
    assert page.evaluate("document.activeElement === document.body")  # a click leaves the keys working
    pick("A")  # a second click takes A back
    assert badges(page) == ["", "", "1", "2"]
    assert page.locator("[data-submit-why]").inner_text() == "Still needed: rank A and B."
    assert page.locator("[data-submit]").get_attribute("aria-disabled") == "true"

    viewer = page.locator("dialog[data-viewer]")
    page.keyboard.press("v")  # full size, one at a time
    assert viewer.get_attribute("data-showing") == "A"
    page.keyboard.press("ArrowRight")
    assert viewer.get_attribute("data-showing") == "B"
    assert page.locator("#viewer-title").inner_text() == "Candidate B (2 of 4)"
    page.keyboard.press("c")  # two-up compare: B beside C
    assert viewer.get_attribute("data-showing") == "BC"
    page.keyboard.press("Shift+ArrowRight")  # the left one moves on (past C): D
    assert viewer.get_attribute("data-showing") == "DC"
    page.keyboard.press("ArrowLeft")  # the right one moves back (past D): B
    assert viewer.get_attribute("data-showing") == "DB"
    viewer_images = viewer.locator("[data-pane-img]")
    assert [viewer_images.nth(i).get_attribute("src").rsplit("/", 1)[-1] for i in range(2)] == [f"{d}.png", f"{b}.png"]
    assert viewer_images.nth(0).bounding_box()["height"] >= 500  # full size, not a thumbnail
    page.keyboard.press("1")  # digits rank from inside the viewer: A next
    assert badges(page)[0] == "3"
    page.keyboard.press("Escape")
    assert not viewer.evaluate("d => d.open")

    zoom_b = page.get_by_role("button", name="View candidate B full size")
    zoom_b.focus()
    page.keyboard.press("Enter")
    assert viewer.evaluate("d => d.open") and viewer.get_attribute("data-showing") == "B"
    page.keyboard.press("Escape")
    assert page.evaluate("document.activeElement.dataset.zoom") == b  # the focus goes back where it was

    page.locator("h1").click()
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=no-task]")
    assert Annotation.objects.get().ranking == [[c], [d], [a], [b]]


def test_keys_leave_links_buttons_and_text_alone_and_question_mark_opens_the_sheet(page, project, annotator):
    task_with_images(project, store=True)
    open_task(page, project, annotator)
    page.locator("textarea[name=rationale]").focus()
    page.keyboard.type("12")
    assert page.locator("textarea[name=rationale]").input_value() == "12"
    assert badges(page) == ["", "", "", ""]  # typing is not ranking
    page.locator(".ann-image[data-letter=A] .cand-pick").focus()
    page.keyboard.press("3")
    assert badges(page) == ["", "", "", ""]  # nor is a digit on a focused button

    page.locator("h1").click()
    page.keyboard.press("?")
    sheet = page.locator("dialog[data-shortcuts]")
    assert sheet.evaluate("d => d.open") and "put image C next in the ranking" in sheet.inner_text()
    page.keyboard.press("Escape")
    assert not sheet.evaluate("d => d.open")

    page.get_by_role("link", name="My recent answers").focus()
    page.keyboard.press("Enter")  # a focused link navigates; nothing is submitted
    page.wait_for_url(f"**/projects/{project.pk}/my-annotations/")
    assert Annotation.objects.count() == 0


def test_demo_preset_preselects_its_only_model_and_a_required_choice_explains_itself(
        page, project, admin_user, annotator):
    version = model_version()
    use_template(project, admin_user, preset="rlhf_image_generation")
    first, second = task_with_images(project, store=True), task_with_images(project, store=True)
    open_task(page, project, annotator)
    model = page.locator("input[name=model]")
    assert model.count() == 1 and model.is_checked()  # the only enabled model version, chosen already
    assert page.locator("[data-submit-why]").inner_text() == "Still needed: rank A, B, C and D."
    page.locator("h1").click()
    for key in "4321":
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    page.wait_for_selector(f'section.task[data-task="{second.pk}"]')
    wait_until(page, "() => document.querySelector('[data-notice]').textContent === 'Saved. Here is the next task.'")
    assert Annotation.objects.get(task=first).answers["model"] == [version.name]

    # With two models to choose from nothing is chosen for the annotator: Submit says so, and trying anyway
    # puts the error next to the list and the focus on it.
    ModelVersion.objects.create(name="test-shapes-2", source="tests/fixtures/none", dtype="float32")
    page.reload()
    page.wait_for_selector("form[data-rank-form][data-rank-ready]")
    assert page.locator("input[name=model]").count() == 2
    assert not any(page.locator("input[name=model]").nth(i).is_checked() for i in range(2))
    page.locator("h1").click()
    for key in "1234":
        page.keyboard.press(key)
    assert page.locator("[data-submit-why]").inner_text() == "Still needed: choose Model versions."
    page.keyboard.press("Enter")
    error = page.locator("#ann-model .inline-error")
    assert error.inner_text() == "Model versions: choose at least one."
    assert page.evaluate("document.activeElement.name") == "model"
    assert page.locator("#ann-model").get_attribute("aria-describedby") == error.get_attribute("id")
    assert not Annotation.objects.filter(task=second).exists()
    page.locator("input[name=model]").nth(1).check()
    assert page.locator("#ann-model .inline-error").count() == 0  # fixed: the error goes at once
    page.get_by_role("button", name="Submit").click()
    page.wait_for_selector("[data-testid=no-task]")
    assert Annotation.objects.get(task=second).answers["model"] == ["test-shapes-2"]


PAIRWISE_WITH_SELECT = {"schema_version": 1, "components": [
    {"type": "images", "name": "images", "config": {"source": "task", "count": 2}},
    {"type": "ranking", "name": "ranking", "config": {"images": "images", "mode": "pairwise", "allow_ties": True,
                                                      "label": "Which is better?"}},
    {"type": "select", "name": "style", "config": {"label": "Style", "options": ["flat", "shaded"]}},
]}


def test_pairwise_side_by_side_with_a_required_select(page, project, admin_user, annotator):
    use_template(project, admin_user, schema=PAIRWISE_WITH_SELECT)
    task = task_with_images(project, count=2, store=True)
    a, b = image_ids(task)
    page.set_viewport_size(LAPTOP)
    open_task(page, project, annotator)
    left, right = (page.locator(".ann-image img").nth(i).bounding_box() for i in range(2))
    assert left["y"] == right["y"] and right["x"] > left["x"] + left["width"]  # A and B side by side
    assert left["width"] >= 300 and left["y"] + left["height"] <= LAPTOP["height"]
    choices = page.locator("fieldset.ann-ranking label.choice")
    assert choices.all_inner_texts() == ["A is better", "Tie", "B is better"]
    page.locator(".ann-image[data-letter=B] .cand-pick").click()
    assert page.locator(f"input[name='ranking.winner'][value='{b}']").is_checked() and badges(page) == ["", "Better"]
    page.locator("h1").click()
    page.keyboard.press("=")
    assert badges(page) == ["Tie", "Tie"]

    page.keyboard.press("Enter")  # the Style select is required and starts on its placeholder
    assert page.locator("[data-component=style] .inline-error").inner_text() == "Choose Style."
    assert page.evaluate("document.activeElement.id") == "ann-style"
    assert page.locator("#ann-style").get_attribute("aria-invalid") == "true"
    page.select_option("#ann-style", "shaded")
    page.locator("h1").click()
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=no-task]")
    annotation = Annotation.objects.get()
    assert annotation.ranking == [[a, b]] and annotation.answers["style"] == "shaded"


def test_best_of_n_picks_by_click_and_a_short_rationale_is_caught(page, project, admin_user, annotator):
    use_template(project, admin_user, preset="best_of_n_with_rationale")
    task = task_with_images(project, store=True)
    c = image_ids(task)[2]
    open_task(page, project, annotator)
    page.locator(".ann-image[data-letter=C] .cand-pick").click()
    assert badges(page) == ["", "", "Best", ""]
    submit = page.get_by_role("button", name="Submit")
    assert submit.get_attribute("aria-disabled") == "true"
    submit.click(force=True)  # aria-disabled keeps it focusable and clickable: a click says what is missing
    error = page.locator("[data-component=rationale] .inline-error")
    assert error.inner_text() == "“Why is it the best?” is required."
    assert page.evaluate("document.activeElement.name") == "rationale"
    page.keyboard.type("sharp")
    assert error.inner_text() == "“Why is it the best?”: at least 10 characters (now 5)."
    page.keyboard.type(" edges, right colour")
    assert page.locator("[data-component=rationale] .inline-error").count() == 0
    page.get_by_role("button", name="Submit").click()
    page.wait_for_selector("[data-testid=no-task]")
    assert Annotation.objects.get().ranking == [[c]]
