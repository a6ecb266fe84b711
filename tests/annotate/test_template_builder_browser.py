"""An admin builds the seed's chain in headless Chromium (each new component wired to its only source),
reorders it by keyboard without losing focus, publishes, and the API agrees."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotate.builder import services as template_services
from tests.annotate.browser_helpers import wait_until
from tests.conftest import browser_login
from tests.factories import PASSWORD, api_client_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHAIN = [("prompt_input", "prompt"), ("generate_button", "generate"), ("select", "select"),
         ("images", "images"), ("ranking", "ranking"), ("text", "rationale")]


def _names(page):
    return page.locator("ol.tpl-components li[data-name]").evaluate_all("els => els.map(e => e.dataset.name)")


def _preview_types(page):
    return page.locator(".tpl-preview [data-component]").evaluate_all("els => els.map(e => e.dataset.type)")


def _focus_moves_to(page, element_id):
    """The focus lands on ``element_id`` once htmx has settled the new workspace. (htmx makes the swapped-in
    forms its own when the swap settles: a key pressed before then would post the form without it.)"""
    wait_until(page, "id => document.activeElement && document.activeElement.id === id"
                     " && !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')", arg=element_id)


def test_build_seed_chain_reorder_publish(page, admin_user, project):
    template = template_services.template_create(project=project, name="Seed chain", created_by=admin_user)
    browser_login(page, admin_user, PASSWORD)
    page.goto(f"/projects/{project.pk}/templates/{template.pk}/")
    assert page.locator(".tpl-preview").inner_text().strip().endswith("no components yet.")
    assert page.locator("#publish-why").inner_text() == "Add components before publishing."

    # Each new Generate, Images and Ranking is wired to the only component that can feed it.
    for ctype, name in CHAIN:
        page.locator(f"button[data-add={ctype}]").click()
        page.wait_for_selector(f"ol.tpl-components li[data-name={name}]")
    assert _names(page) == [name for _, name in CHAIN]
    assert page.locator(".tpl-component.has-issues").count() == 0
    assert page.get_by_role("button", name="Publish").is_enabled()
    page.locator("ol.tpl-components li[data-name=images] > a").click()
    page.wait_for_selector(".tpl-panel form[action$='/components/images/configure/']")
    assert page.locator(".tpl-panel select[name='cfg.source']").input_value() == "generate"

    page.locator("ol.tpl-components li[data-name=select] > a").click()
    page.wait_for_selector(".tpl-panel select[name='cfg.source']")
    page.select_option(".tpl-panel select[name='cfg.source']", "model_versions")
    page.locator(".tpl-panel input[name='cfg.multiple']").check()
    with page.expect_response(lambda response: "/configure/" in response.url):
        page.locator(".tpl-panel button[type=submit]").click()
    page.wait_for_load_state("networkidle")

    # Reorder with the keyboard: the focus stays on the moved item's arrow after every swap, and hands over
    # to the other arrow when the item reaches the top. (The drag script submits the same reorder form.)
    def order_is(names):
        wait_until(page, "names => JSON.stringify(Array.from(document.querySelectorAll("
                               "'ol.tpl-components li[data-name]'), e => e.dataset.name)) === JSON.stringify(names)",
                               arg=names)

    page.locator("#move-up-select").focus()
    page.keyboard.press("Enter")
    order_is(["prompt", "select", "generate", "images", "ranking", "rationale"])
    _focus_moves_to(page, "move-up-select")
    page.keyboard.press("Enter")
    order_is(["select", "prompt", "generate", "images", "ranking", "rationale"])
    _focus_moves_to(page, "move-down-select")  # "up" is disabled at the top
    page.keyboard.press("Enter")
    expected = ["prompt", "select", "generate", "images", "ranking", "rationale"]
    order_is(expected)
    _focus_moves_to(page, "move-down-select")
    # htmx itself refocuses the element with the same id during the swap; the live region is written when the
    # swap settles, a moment later, so wait for it rather than read it at once.
    expect(page.locator("[data-builder-status]")).to_have_text("select moved down: now 2 of 6.")
    assert _preview_types(page) == ["prompt_input", "select", "generate_button", "images", "ranking", "text"]
    assert page.locator(".tpl-preview .ann-image").count() == 4

    page.get_by_role("button", name="Publish").click()
    page.wait_for_selector(".tpl-status[data-status=published]")

    api = api_client_for(admin_user)
    body = api.get(f"/api/templates/{template.pk}/").json()
    version = body["latest_version"]
    assert version["status"] == "published" and version["number"] == 1
    assert [c["name"] for c in version["schema"]["components"]] == expected
    by_name = {c["name"]: c for c in version["schema"]["components"]}
    assert by_name["generate"]["config"]["prompt"] == "prompt"
    assert by_name["images"]["config"]["source"] == "generate"
    assert by_name["ranking"]["config"]["images"] == "images"
    assert by_name["select"]["config"]["source"] == "model_versions"


def test_each_preset_publishes_in_the_browser(page, admin_user, project):
    browser_login(page, admin_user, PASSWORD)
    for label in ("RLHF for image generation", "Pairwise A/B with tie", "Best of N with rationale"):
        page.goto(f"/projects/{project.pk}/templates/")
        page.get_by_role("button", name=label).click()
        page.wait_for_selector("#workspace")
        page.get_by_role("button", name="Publish").click()
        page.wait_for_selector(".tpl-status[data-status=published]")
    assert project.annotation_templates.filter(versions__status="published").count() == 3
