from __future__ import annotations

from django.apps import AppConfig

from core.after_migrate import register_after_migrate
from projects.role_groups import role_groups_sync


class ProjectsConfig(AppConfig):
    name = "projects"
    verbose_name = "Projects"

    def ready(self) -> None:
        register_after_migrate("projects.role_groups", role_groups_sync)
        # Needs the models, which load only after apps.py: imported here. Registers the delivery task and
        # the sweeper (in web processes too, so services can queue by name).
        from projects.webhooks import tasks  # noqa: F401
