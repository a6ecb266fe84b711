"""axe-core in headless Chromium on the pages people work in: login, project, annotate (plain, with its
inline errors and with the full-size view open), review, members, template builder and the reward and fine-tune
run pages. None may have a serious or critical violation (every input labelled, enough contrast, names on
buttons and images, ...). Every page starts with a skip link to its main content."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.utils import timezone

from annotate.workflow import queue
from annotate.workflow import services as workflow_services
from annotate.workflow.services import Submission
from rlhf.models import FineTuneRun, RewardModelRun
from tests.annotate.browser_helpers import image_ids, use_template
from tests.annotate.factories_workflow import model_version, task_with_images
from tests.conftest import browser_login
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

BLOCKING = ("serious", "critical")


@pytest.fixture(scope="module")
def axe():
    return Axe()


def assert_accessible(page, axe, what):
    page.wait_for_load_state("networkidle")
    results = axe.run(page)
    blocking = [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
                for v in results.response["violations"] if v["impact"] in BLOCKING]
    assert blocking == [], f"{what}: {blocking}"
    # Stricter than axe, which accepts a placeholder as a name: every control has a label of its own.
    unlabelled = page.evaluate("""() => Array.from(document.querySelectorAll('input, select, textarea'))
        .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                     && !e.getAttribute('aria-labelledby') && !e.closest('[hidden]'))
        .map(e => e.outerHTML.slice(0, 120))""")
    assert unlabelled == [], f"{what}: {unlabelled}"


def assert_skip_link_works(page):
    """The first thing Tab reaches is a skip link that shows itself when focused and jumps to the content."""
    first = page.evaluate("""() => Array.from(document.querySelectorAll(
        'a[href], button, input:not([type=hidden]), select, textarea, [tabindex]:not([tabindex="-1"])'))
        .find(e => !e.disabled && !e.closest('[hidden], dialog:not([open])')).textContent""")
    assert first == "Skip to main content"
    link = page.get_by_role("link", name="Skip to main content")
    link.focus()
    assert link.bounding_box()["y"] >= 0
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"


def test_pages_have_no_serious_accessibility_violations(page, axe, project, admin_user, annotator, ml_engineer):
    version = model_version()
    use_template(project, admin_user, preset="rlhf_image_generation")
    answered, _ = task_with_images(project, store=True), task_with_images(project, store=True)
    queue.task_next(project=project, user=admin_user)
    workflow_services.annotation_submit(project=project, user=admin_user, task_id=answered.pk, submission=Submission(
        idempotency_key="a11y", ranking=[[image] for image in image_ids(answered)], rationale="crisp edges"))
    reward = RewardModelRun.objects.create(
        project=project, created_by=ml_engineer, name="a11y reward", backbone="tiny", status="succeeded", data_path="pairs",
        step=2, total_steps=2, history=[{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.61}])
    finetune = FineTuneRun.objects.create(
        project=project, created_by=ml_engineer, name="a11y fine-tune", base_version=version, method="dpo", data_path="pairs",
        status="running", phase="training", lease_token=uuid.uuid4(),
        lease_expires_at=timezone.now() + timedelta(hours=1), step=1, total_steps=4, history=[{"step": 1, "loss": 0.69}])

    page.goto("/login/")
    assert_skip_link_works(page)
    assert_accessible(page, axe, "login")

    browser_login(page, annotator, PASSWORD)
    page.goto(f"/projects/{project.pk}/annotate/")
    page.wait_for_selector("form[data-rank-form][data-rank-ready]")
    assert_skip_link_works(page)
    assert_accessible(page, axe, "annotate")
    page.locator("input[name=model]").uncheck()
    page.get_by_role("button", name="Submit").click(force=True)
    assert page.locator(".inline-error").count() == 2
    assert_accessible(page, axe, "annotate with inline errors")
    page.keyboard.press("Escape")
    page.locator("h1").click()
    page.keyboard.press("c")
    assert_accessible(page, axe, "annotate with the compare view open")
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login/")

    browser_login(page, admin_user, PASSWORD)
    template = project.annotation_templates.get()
    for what, url in (("project", f"/projects/{project.pk}/"), ("review", f"/projects/{project.pk}/review/"),
                      ("members", f"/projects/{project.pk}/members/"),
                      ("builder", f"/projects/{project.pk}/templates/{template.pk}/?selected=ranking"),
                      ("reward run", f"/ml/reward-runs/{reward.pk}/"),
                      ("fine-tune run", f"/ml/finetune-runs/{finetune.pk}/")):
        page.goto(url)
        assert_accessible(page, axe, what)
