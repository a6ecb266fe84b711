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
