"""Headless Chromium, no database access in between: an admin fills a project from a Pick-a-Pic-style Parquet
file and a folder of images (checked first, then imported by a real worker behind a progress bar), an
annotator ranks every imported task, and the streamed export downloads every annotation in one request."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.annotate.browser_helpers import wait_until
from tests.conftest import browser_login
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _png(n: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (40 * n % 256, 90 + 20 * n, 200 - 30 * n)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_fill_a_project_from_a_pickapic_parquet_and_a_folder_then_annotate(
    page, browser, live_server, project, admin_user, annotator, celery_worker_process, settings, tmp_path
):
    settings.IMPORT_INLINE_MAX_ROWS = 0  # every import goes to the worker, behind a progress bar
    folder = tmp_path / "pickapic-images"
    folder.mkdir()
    for n in range(6):
        (folder / f"{n}.png").write_bytes(_png(n))
    captions = ["a red fox in snow", "a lighthouse at dusk", "a red fox in snow"]  # a repeated prompt stays
    table = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({
        "caption": captions, "jpg_0": [f"{2 * i}.png" for i in range(3)], "jpg_1": [f"{2 * i + 1}.png" for i in range(3)],
        "label_0": [1.0, 0.0, 0.5], "label_1": [0.0, 1.0, 0.5], "model_0": ["sdxl"] * 3, "model_1": ["sd15"] * 3,
        "ranking_id": [501, 502, 503],
    }), table)

    browser_login(page, admin_user, PASSWORD)
    page.goto(f"/projects/{project.pk}/settings/")
    page.fill("input[name=images_per_task]", "2")
    page.get_by_role("button", name="Save").click()
    page.goto(f"/projects/{project.pk}/")
    page.get_by_role("link", name="Import tasks with images").click()

    def choose_files() -> None:
        page.set_input_files("input[name=file]", str(table))
        page.set_input_files("[data-testid=image-folder]", str(folder))

    choose_files()
    page.get_by_role("button", name="Check only").click()
    page.wait_for_selector("#import-progress[data-status=succeeded]", timeout=60_000)
    assert "All 3 rows and 6 images are fine" in page.inner_text("#import-progress")
    page.get_by_role("link", name="Import more").click()
    choose_files()
    page.get_by_role("button", name="Import").click()
    assert page.locator("#import-progress progress").count() == 1
    page.wait_for_selector("#import-progress[data-status=succeeded]", timeout=60_000)
    assert "Imported 3 tasks with 6 new images" in page.inner_text("#import-progress")

    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    browser_login(tab, annotator, PASSWORD)
    tab.goto(f"/projects/{project.pk}/annotate/")
    for done, caption in enumerate(captions, start=1):
        assert tab.locator("[data-prompt]").inner_text() == caption
        assert tab.locator("figure.ann-image img").count() == 2
        wait_until(tab, "() => [...document.querySelectorAll('figure.ann-image img')]"
                              ".every(img => img.complete && img.naturalWidth === 32)")  # the imported pixels
        tab.locator("h1").click()
        tab.keyboard.press("2")
        tab.keyboard.press("1")
        tab.keyboard.press("Enter")
        if done < len(captions):
            tab.wait_for_selector(f"[data-testid=progress]:has-text('Done {done}')")
    tab.wait_for_selector("[data-testid=no-task]")
    context.close()

    response = page.request.get(f"/api/projects/{project.pk}/annotations/export/")
    assert response.status == 200
    rows = [json.loads(line) for line in response.text().splitlines()]
    assert [row["task_key"] for row in rows] == ["501", "502", "503"]
    assert [row["prompt"] for row in rows] == captions
    assert all(row["ranking"] == [[row["images"][1]["id"]], [row["images"][0]["id"]]] for row in rows)
    assert rows[0]["task_metadata"] == {"label_0": 1.0, "label_1": 0.0}
    assert {image["origin"] for row in rows for image in row["images"]} == {"external"}
