"""Generate in headless Chromium with a real worker: the click queues a job, the page polls its progress, and
the task with its four new images replaces the task region in place (no page reload), ready to rank."""

from __future__ import annotations

import os

import pytest

from annotate.workflow import services as workflow_services
from generation import services as generation_services
from tests.annotate.browser_helpers import use_template, wait_until
from tests.annotate.factories_workflow import set_workflow
from tests.conftest import browser_login
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FOUR_IMAGES_SHOWN = """() => {
  const images = Array.from(document.querySelectorAll('.ann-image img'));
  return images.length === 4 && images.every(img => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    os.environ.setdefault("GENERATION_TORCH_THREADS", "1")  # a worker this session starts renders on one thread
    from generation.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("generate-browser") / "pipeline", seed=0)


def test_generate_shows_the_new_images_in_place(page, project, admin_user, annotator, tiny_dir,
                                                celery_worker_process):
    version = generation_services.model_version_register(
        name="tiny-browser", source=str(tiny_dir), dtype="float32", scheduler="ddim", steps=2, guidance=5.0,
        width=32, height=32)
    use_template(project, admin_user, preset="rlhf_image_generation")
    set_workflow(project, template_version=project.workflow.template_version, images_per_task=4, overlap=1)
    generation_services.project_model_versions_set(project=project, version_ids=[version.pk])
    first = workflow_services.task_create(project=project, prompt_text="a red circle", created_by=None)
    workflow_services.task_create(project=project, prompt_text="a blue square", created_by=None)

    browser_login(page, annotator, PASSWORD)
    page.goto(f"/projects/{project.pk}/annotate/")
    page.evaluate("window.__samePage = true")
    page.get_by_test_id("generate").click()
    wait_until(page, FOUR_IMAGES_SHOWN, timeout=120)
    assert page.evaluate("window.__samePage === true")  # swapped in place: the page was not reloaded
    assert page.locator("section.task").get_attribute("data-task") == str(first.pk)
    page.wait_for_selector("form[data-rank-form][data-rank-ready]")  # the ranking controls work on the new images
    for i in range(4):
        page.locator(".ann-image img").nth(i).click()
    page.get_by_role("button", name="Submit").click()
    wait_until(page, "first => document.querySelector('section.task').dataset.task !== String(first)", arg=first.pk)
    assert first.annotations.get().annotator == annotator
