"""Take the README's screenshots from a running `make run` (demo data, shapes model, a worker).

    .venv/bin/python docs/screenshots/capture.py [http://127.0.0.1:8000]

As the demo annotator it opens the annotation page (generating the task's images first when it has none),
ranks two candidates by clicking them, and shoots the page at 1280x800 and at 390x844 (a phone); it then
submits a full ranking, and as the demo admin shoots the review page filtered to answered tasks and the
project's Members page. The PNGs are reduced to a 256-colour
palette so they stay small. Chromium is Debian's (/usr/bin/chromium), as in the tests.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, sync_playwright

HERE = Path(__file__).resolve().parent
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def save(page: Page, name: str, *, full_page: bool = False) -> None:
    png = page.screenshot(full_page=full_page)
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    image.save(HERE / name, optimize=True)
    print(f"{name}: {(HERE / name).stat().st_size // 1024} KiB")


def login(page: Page, username: str, password: str) -> None:
    page.goto("/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/")


def demo_project(page: Page) -> str:
    """The demo project's URL, from the project list."""
    page.goto("/projects/")
    return page.get_by_role("link", name="Shapes world demo").first.get_attribute("href")


def annotate_page(page: Page) -> None:
    page.goto(demo_project(page) + "annotate/")
    if page.locator("[data-testid=generate]").count():
        page.click("[data-testid=generate]")
    page.wait_for_selector("form[data-rank-form][data-rank-ready]", timeout=180_000)
    page.wait_for_load_state("networkidle")


def main(base_url: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        page = browser.new_context(base_url=base_url, viewport=LAPTOP).new_page()
        login(page, "demo-annotator", "pickwise-annotator")
        annotate_page(page)
        for letter in "CA":
            page.locator(f".ann-image[data-letter={letter}] .cand-pick").click()
        save(page, "annotate-1280x800.png")
        page.set_viewport_size(PHONE)
        page.wait_for_timeout(300)
        save(page, "annotate-390x844.png", full_page=True)
        page.set_viewport_size(LAPTOP)
        page.keyboard.press("c")
        save(page, "annotate-compare-1280x800.png")
        page.keyboard.press("Escape")
        for key in "db":
            page.locator(f".ann-image[data-letter={key.upper()}] .cand-pick").click()
        page.fill("[name=rationale]", "C has the sharpest edges and the right colour")
        page.get_by_role("button", name="Submit").click()
        page.wait_for_load_state("networkidle")
        page.get_by_role("button", name="Log out").click()
        login(page, "demo-admin", "pickwise-admin")
        project = demo_project(page)
        page.goto(project + "review/?status=answered")
        save(page, "review-1280x800.png")
        page.goto(project + "members/")
        save(page, "members-1280x800.png")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000")
