from __future__ import annotations

from django.apps import AppConfig

from generation.registry import register_jobs_succeeded


class AnnotateConfig(AppConfig):
    name = "annotate"
    verbose_name = "Annotation"

    def ready(self) -> None:
        # Both need the models, which load only after apps.py: imported here.
        from annotate import tasks  # noqa: F401 - registers the Celery task and the lease reaper
        from annotate.workflow.services import task_images_attach_generated

        register_jobs_succeeded("annotate.attach_task_images", task_images_attach_generated)
