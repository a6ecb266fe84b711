"""An admin builds the seed's chain in headless Chromium, reorders, publishes, and the API agrees."""

from __future__ import annotations

import pytest

from annotate.builder import services as template_services
from tests.conftest import browser_login
from tests.factories import PASSWORD, api_client_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHAIN = [("prompt_input", "prompt"), ("generate_button", "generate"), ("select", "select"),
         ("images", "images"), ("ranking", "ranking"), ("text", "rationale")]


def _names(page):
    return page.locator("ol.tpl-components li[data-name]").evaluate_all("els => els.map(e => e.dataset.name)")


def _preview_types(page):
    return page.locator(".tpl-preview [data-component]").evaluate_all("els => els.map(e => e.dataset.type)")


def _configure(page, name, **fields):
    page.locator(f"ol.tpl-components li[data-name={name}] > a").click()
    page.wait_for_selector(f".tpl-panel form[action$='/components/{name}/configure/']")
    for field, value in fields.items():
        page.select_option(f".tpl-panel select[name='cfg.{field}']", value)
    with page.expect_response(lambda response: "/configure/" in response.url):
        page.locator(".tpl-panel button[type=submit]").click()
    page.wait_for_load_state("networkidle")


def test_build_seed_chain_reorder_publish(page, admin_user, project):
    template = template_services.template_create(project=project, name="Seed chain", created_by=admin_user)
    browser_login(page, admin_user, PASSWORD)
    page.goto(f"/projects/{project.pk}/templates/{template.pk}/")
    assert page.locator(".tpl-preview").inner_text().strip().endswith("no components yet.")

    for ctype, name in CHAIN:
        page.locator(f"button[data-add={ctype}]").click()
        page.wait_for_selector(f"ol.tpl-components li[data-name={name}]")
    assert _names(page) == [name for _, name in CHAIN]
    assert page.locator("button:has-text('Publish')").is_disabled()  # dangling references

    _configure(page, "generate", prompt="prompt")
    page.locator("ol.tpl-components li[data-name=select] > a").click()
    page.wait_for_selector(".tpl-panel select[name='cfg.source']")
    page.select_option(".tpl-panel select[name='cfg.source']", "model_versions")
    page.locator(".tpl-panel input[name='cfg.multiple']").check()
    with page.expect_response(lambda response: "/configure/" in response.url):
        page.locator(".tpl-panel button[type=submit]").click()
    page.wait_for_load_state("networkidle")
    _configure(page, "images", source="generate")
    _configure(page, "ranking", images="images")
    assert page.locator(".tpl-component.has-issues").count() == 0

    # Reorder two components with the keyboard alternative (the drag script submits the same form).
    page.get_by_role("button", name="Move select up").click()
    page.wait_for_function("() => document.querySelector('ol.tpl-components li[data-name]:nth-child(2)')"
                           ".dataset.name === 'select'")
    expected = ["prompt", "select", "generate", "images", "ranking", "rationale"]
    assert _names(page) == expected
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
