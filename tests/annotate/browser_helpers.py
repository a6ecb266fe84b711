"""Helpers shared by the browser tests of the annotation pages."""

from __future__ import annotations

from annotate.builder import services as template_services
from annotate.workflow import services as workflow_services


def use_template(project, admin, *, schema=None, preset=None):
    """Publish a template (a schema or a named preset) and make it the project's."""
    if preset:
        template = template_services.template_create_from_preset(project=project, preset=preset, created_by=admin)
    else:
        template = template_services.template_create(project=project, name="Test template", created_by=admin,
                                                     schema=schema, strict=True)
    version = template_services.template_version_publish(template=template, created_by=admin)
    workflow_services.project_update_settings(project=project, template_version=version)
    project.refresh_from_db()


def image_ids(task):
    """The task's image ids as strings, in the order the annotator sees them (A, B, ...)."""
    return [str(pk) for pk in task.task_images.order_by("position").values_list("image_id", flat=True)]


def wait_until(page, script: str, *, timeout: float = 15.0, arg=None) -> None:
    """Poll ``script`` (a JavaScript function) from Python until it returns something truthy.

    ``page.wait_for_function`` polls inside the page, where the app's Content-Security-Policy (no eval)
    refuses it; ``page.evaluate`` runs through the DevTools protocol, which the policy does not govern.
    """
    import time

    from playwright.sync_api import Error

    deadline = time.monotonic() + timeout
    while True:
        try:
            if page.evaluate(script, arg):
                return
        except Error as exc:  # the page navigated meanwhile (a form post, a redirect): ask the new one
            if "context was destroyed" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {script}")
        page.wait_for_timeout(25)
