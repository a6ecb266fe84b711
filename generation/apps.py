from __future__ import annotations

from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Generation"

    def ready(self) -> None:
        # Registers the Celery task and the lease reaper (in web processes too, so services can queue
        # by name); imported here because it needs the models, which load after apps.py.
        from generation import tasks  # noqa: F401
