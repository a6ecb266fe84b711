"""Image-editing tasks in headless Chromium: upload a source image, paint a mask with mouse events (brush,
undo, invert, eraser), see the located error for an empty mask, generate inpaintings through a real worker on
the tiny pipeline, rank them and submit. axe-core checks the edit form; screenshots at 1280x800 and 390x844
go to /tmp (PICKWISE_SCREENSHOTS overrides)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.core.files.storage import default_storage
from PIL import Image
from playwright.sync_api import expect

from annotate.workflow import services as workflow_services
from generation import services as generation_services
from generation.models import GenerationJob
from tests.annotate.browser_helpers import use_template, wait_until
from tests.annotate.factories_workflow import set_workflow
from tests.conftest import browser_login
from tests.core.test_accessibility_browser import assert_accessible
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = Path(os.environ.get("PICKWISE_SCREENSHOTS", "/tmp"))
FOUR_IMAGES_SHOWN = """() => {
  const images = Array.from(document.querySelectorAll('.ann-image img'));
  return images.length === 4 && images.every(img => img.complete && img.naturalWidth > 0);
}"""
COVERAGE = "() => Number(document.querySelector('[data-mask-painter]').dataset.coverage || 0)"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    os.environ.setdefault("GENERATION_TORCH_THREADS", "1")  # a worker this session starts renders on one thread
    from generation.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("edit-browser") / "pipeline", seed=0)


def _source_png(tmp_path: Path) -> Path:
    """A 64x64 picture: a blue square on a light background."""
    image = Image.new("RGB", (64, 64), (235, 235, 225))
    image.paste((40, 80, 220), (16, 16, 48, 48))
    path = tmp_path / "square.png"
    image.save(path)
    return path


def _paint(page, *, x0: float, y0: float, x1: float, y1: float) -> None:
    """Drag the mouse across the mask canvas, from and to fractions of its size."""
    box = page.locator("canvas[data-mask-canvas]").bounding_box()
    page.mouse.move(box["x"] + box["width"] * x0, box["y"] + box["height"] * y0)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * x1, box["y"] + box["height"] * y1, steps=12)
    page.mouse.up()


def _edit_project(project, admin_user, version, images: int = 4):
    use_template(project, admin_user, preset="rank_inpaintings")
    set_workflow(project, template_version=project.workflow.template_version, images_per_task=images, overlap=1)
    generation_services.project_model_versions_set(project=project, version_ids=[version.pk])
    return workflow_services.task_create(project=project, prompt_text="a red circle", created_by=None)


def test_paint_a_mask_generate_inpaintings_rank_and_submit(page, project, admin_user, annotator, tiny_dir, tmp_path,
                                                           celery_worker_process):
    version = generation_services.model_version_register(
        name="tiny-edit-browser", source=str(tiny_dir), dtype="float32", scheduler="ddim", steps=2, guidance=5.0,
        width=32, height=32)
    task = _edit_project(project, admin_user, version)
    browser_login(page, annotator, PASSWORD)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"/projects/{project.pk}/annotate/")
    page.locator("input[name='source.file']").set_input_files(str(_source_png(tmp_path)))
    page.wait_for_selector("canvas[data-mask-canvas]")
    assert page.evaluate("document.querySelector('canvas[data-mask-canvas]').width") == 64

    # Generate with nothing painted: the server names the component and the field; nothing is queued.
    page.get_by_test_id("generate-edit").click()
    page.wait_for_selector("#generation [role=alert]")
    assert page.locator("#generation [role=alert]").inner_text() == (
        "Mask painter 'mask' (mask): The mask is empty: paint the part to repaint.")
    assert GenerationJob.objects.count() == 0

    # Brush strokes with the mouse; undo takes the last one back; invert and invert again; the eraser removes.
    page.locator("[data-brush-size]").fill("12")
    _paint(page, x0=0.3, y0=0.5, x1=0.7, y1=0.5)
    first = page.evaluate(COVERAGE)
    assert 0.1 < first < 0.5
    _paint(page, x0=0.5, y0=0.2, x1=0.5, y1=0.8)
    assert page.evaluate(COVERAGE) > first
    page.get_by_role("button", name="Undo").click()
    assert page.evaluate(COVERAGE) == first
    page.get_by_role("button", name="Invert").click()
    assert abs(page.evaluate(COVERAGE) - (1 - first)) < 0.01
    page.get_by_role("button", name="Invert").click()
    page.get_by_role("button", name="Eraser").click()
    _paint(page, x0=0.25, y0=0.5, x1=0.4, y1=0.5)
    erased = page.evaluate(COVERAGE)
    assert 0 < erased < first
    page.get_by_role("button", name="Brush").click()
    _paint(page, x0=0.3, y0=0.45, x1=0.7, y1=0.55)
    assert page.get_by_text("Painted:").is_visible()

    assert_accessible(page, Axe(), "the inpainting form")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "edit-inpaint-1280x800.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "edit-inpaint-390x844.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    page.get_by_test_id("generate-edit").click()
    wait_until(page, FOUR_IMAGES_SHOWN, timeout=180)
    job = GenerationJob.objects.get(created_by=annotator)
    assert job.edit_kind == "inpaint" and job.status == "succeeded"
    with default_storage.open(job.edit["mask_key"], "rb") as handle:
        mask = Image.open(io.BytesIO(handle.read())).convert("L")
    assert mask.size == (64, 64)
    assert mask.getpixel((32, 32)) == 255 and mask.getpixel((2, 2)) == 0 and mask.getpixel((32, 4)) == 0
    origin = page.locator("[data-edit-origin]")
    assert origin.get_attribute("data-edit-origin") == "inpaint" and "Inpaintings of" in origin.inner_text()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "edit-ranked-1280x800.png"))

    page.wait_for_selector("form[data-rank-form][data-rank-ready]")
    for i in range(4):
        page.locator(".ann-image img").nth(i).click()
    page.get_by_role("button", name="Submit").click()
    wait_until(page, "() => !!document.querySelector('[data-testid=no-task]')")
    annotation = task.annotations.get()
    assert annotation.annotator == annotator and len(annotation.ranking) == 4
    ranked = {image for group in annotation.ranking for image in group}
    assert ranked == {str(pk) for pk in job.images.values_list("pk", flat=True)}


def test_keyboard_painting_outpaint_snapping_and_the_upload_limit_in_the_browser(page, project, admin_user, annotator,
                                                                                 tmp_path, settings):
    from tests.annotate.factories_workflow import model_version

    settings.GENERATION_EDIT_MAX_UPLOAD_BYTES = 200_000
    task = _edit_project(project, admin_user, model_version())
    browser_login(page, annotator, PASSWORD)
    page.goto(f"/projects/{project.pk}/annotate/")
    page.locator("input[name='source.file']").set_input_files(str(_source_png(tmp_path)))
    canvas = page.locator("canvas[data-mask-canvas]")
    # A 64 px source gets an 8 px brush (an eighth of its side) once it has loaded, until the annotator picks a
    # size (before it loads, the brush is the default 32 px).
    expect(page.locator("[data-brush-size-out]")).to_have_text("8 px")
    page.locator("[data-brush-size]").fill("32")
    canvas.focus()
    page.keyboard.press("]")
    assert page.locator("[data-brush-size-out]").inner_text() == "36 px"
    page.keyboard.down(" ")
    page.keyboard.press("ArrowRight")
    page.keyboard.up(" ")
    painted = page.evaluate(COVERAGE)
    assert painted > 0.2
    page.keyboard.press("Control+z")
    assert page.evaluate(COVERAGE) == 0
    assert page.evaluate("document.activeElement.matches('canvas[data-mask-canvas]')")

    # A pen: its pressure scales the brush (full pressure paints twice the set size).
    box = canvas.bounding_box()
    at = {"clientX": box["x"] + box["width"] / 2, "clientY": box["y"] + box["height"] / 2, "pointerId": 7,
          "pointerType": "pen", "isPrimary": True, "button": 0, "buttons": 1}
    canvas.dispatch_event("pointerdown", {**at, "pressure": 0.25})
    canvas.dispatch_event("pointerup", {**at, "pressure": 0})
    light = page.evaluate(COVERAGE)
    page.keyboard.press("Control+z")
    canvas.dispatch_event("pointerdown", {**at, "pressure": 1.0})
    canvas.dispatch_event("pointerup", {**at, "pressure": 0})
    assert 0 < light < page.evaluate(COVERAGE)
    page.get_by_role("button", name="Clear").click()
    assert page.evaluate(COVERAGE) == 0

    # An upload over the limit is refused in the page, before anything is sent.
    big = tmp_path / "big.png"
    Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3)).save(big)
    page.locator("input[name='source.file']").set_input_files(str(big))
    alert = page.locator("[data-source-error]")
    alert.wait_for()
    assert alert.inner_text().startswith("Source image: the image is 0.5 MB; the limit is 0.2 MB.")
    page.get_by_test_id("generate-edit").click()
    page.wait_for_timeout(300)
    assert GenerationJob.objects.count() == 0 and page.locator("#generation [role=alert]").count() == 0

    # Outpainting: sides snap to multiples of 8 within the model's limit; the preview shows the new size.
    use_template(project, admin_user, preset="rank_outpaintings")
    # The annotator's lease keeps the version it was handed out with: hand this one the outpainting template.
    task.assignments.update(template_version=project.workflow.template_version)
    page.goto(f"/projects/{project.pk}/annotate/")
    page.locator("input[name='source.file']").set_input_files(str(_source_png(tmp_path)))
    left = page.get_by_label("Left (px)")
    left.fill("13")
    left.dispatch_event("change")
    assert left.input_value() == "16"
    page.get_by_label("Top (px)").fill("999")
    page.get_by_label("Top (px)").dispatch_event("change")
    assert page.get_by_label("Top (px)").input_value() == "256"
    wait_until(page, "() => (document.querySelector('[data-outpaint-stage] p') || {}).textContent === "
                     "'New size: 144×384 px (the grey border is generated).'")
    assert_accessible(page, Axe(), "the outpainting form")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "edit-outpaint-1280x800.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "edit-outpaint-390x844.png"), full_page=True)
