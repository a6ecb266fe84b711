"""The main pages work in Chromium under the Content-Security-Policy, and none reports a violation (issue 21.9)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from annotate.builder import services as template_services
from annotate.workflow import queue
from annotate.workflow import services as workflow_services
from annotate.workflow.services import Submission, annotation_submit
from rlhf.models import RewardModelRun
from tests.annotate.factories_workflow import RANK_SCHEMA, task_with_images
from tests.conftest import browser_login
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Runs before any page script (added through DevTools, so the policy does not apply to it): every
# violation the page reports is kept for the test to read.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', event => {
  window.__cspViolations.push(`${event.effectiveDirective} blocked ${event.blockedURI || 'inline'} `
                              + `at ${event.sourceFile}:${event.lineNumber}`);
});
"""


@pytest.fixture
def reviewed_project(project, admin_user, annotator):
    """The shared project with a published template, two tasks with stored images and one ranking."""
    template = template_services.template_create(project=project, name="Rank", created_by=admin_user,
                                                 schema=RANK_SCHEMA, strict=True)
    version = template_services.template_version_publish(template=template, created_by=admin_user)
    workflow_services.project_update_settings(project=project, template_version=version)
    for n in range(2):
        task_with_images(project, prompt=f"a red circle number {n}", store=True)
    task = queue.task_next(project=project, user=annotator).task
    ids = [str(ti.image_id) for ti in task.task_images.order_by("position")]
    annotation_submit(project=project, user=annotator, task_id=task.pk, submission=Submission(
        idempotency_key="csp-1", ranking=[[i] for i in ids]))
    return project, template


@pytest.fixture
def reward_run(reviewed_project, admin_user):
    project, _ = reviewed_project
    return RewardModelRun.objects.create(
        project=project, created_by=admin_user, data_path="pairs.parquet", backbone="tiny", status="running",
        phase="training", lease_token=uuid.uuid4(), lease_expires_at=timezone.now() + timedelta(hours=1),
        progress=0.5, step=2,
        total_steps=4, history=[{"step": 1, "loss": 0.69, "accuracy": 0.5}, {"step": 2, "loss": 0.61, "accuracy": 0.6}],
    )


@pytest.fixture
def watched_page(page):
    """The page fixture, recording policy violations and console errors."""
    console_errors: list[str] = []
    page.add_init_script(RECORD_VIOLATIONS)
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    page.console_errors = console_errors
    return page


def visit(page, url: str) -> None:
    response = page.goto(url)
    assert response is not None and response.status == 200, url
    page.wait_for_load_state("networkidle")
    assert_no_violation(page, url)


def assert_no_violation(page, where: str) -> None:
    assert page.evaluate("window.__cspViolations") == [], where
    assert [text for text in page.console_errors if "Content Security Policy" in text] == [], where


def test_main_pages_report_no_policy_violation(watched_page, admin_user, reviewed_project, reward_run):
    page = watched_page
    project, _ = reviewed_project
    visit(page, "/login/")
    browser_login(page, admin_user, PASSWORD)
    assert_no_violation(page, "home after login")
    # The app's own stylesheet applies, and htmx loaded with its inline indicator style switched off.
    assert page.evaluate("getComputedStyle(document.querySelector('.topbar')).display") == "flex"
    assert page.evaluate("window.htmx.config.includeIndicatorStyles") is False

    for url in (
        "/projects/",
        f"/projects/{project.pk}/",
        f"/projects/{project.pk}/settings/",
        f"/projects/{project.pk}/review/",
        f"/projects/{project.pk}/review/stats/",
        f"/projects/{project.pk}/my-annotations/",
        "/ml/",
        f"/ml/reward-runs/{reward_run.pk}/",
        "/generation/",
        "/api/docs/",
    ):
        visit(page, url)

    # The review page shows the stored images (served by the app, under img-src 'self').
    visit(page, f"/projects/{project.pk}/review/")
    loaded = page.locator(".review-images img").evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert loaded and all(width == 16 for width in loaded)
    # Agreement bars are <meter> elements now, no style attribute.
    visit(page, f"/projects/{project.pk}/review/stats/")
    assert page.locator("[style]").count() == 0

    # The run page draws its charts (server-side SVG).
    visit(page, f"/ml/reward-runs/{reward_run.pk}/")
    assert page.locator("figure.chart-figure svg").count() >= 1
    # On a phone the charts shrink to the card rather than pushing the page sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    widths = page.locator("svg.chart").evaluate_all("svgs => svgs.map(s => s.getBoundingClientRect().width)")
    assert widths and all(0 < width < 390 for width in widths)
    page.set_viewport_size({"width": 1280, "height": 900})

    # Swagger UI renders from its static files and the split start-up script.
    visit(page, "/api/docs/")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "Pickwise API" in page.locator(".swagger-ui .info .title").inner_text()
    assert_no_violation(page, "/api/docs/ rendered")

    # The builder works through htmx: adding a component swaps the list and the preview in.
    builder = template_services.template_create(project=project, name="CSP builder", created_by=admin_user)
    visit(page, f"/projects/{project.pk}/templates/{builder.pk}/")
    page.locator("button[data-add=instructions]").click()
    page.wait_for_selector("ol.tpl-components li[data-name]")
    assert_no_violation(page, "builder after an htmx swap")

    # Control: the policy really blocks inline code here, and the recorder sees it.
    page.evaluate("document.head.insertAdjacentHTML('beforeend', '<style>body { color: red }</style>')")
    page.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';
                              document.body.appendChild(s); }""")
    page.wait_for_function("window.__cspViolations.length >= 2")
    assert {v.split(" ")[0] for v in page.evaluate("window.__cspViolations")} == {"style-src-elem", "script-src-elem"}
    assert page.evaluate("window.__ran") is None
