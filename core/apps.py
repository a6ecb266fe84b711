from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate

from core.after_migrate import run_after_migrate


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Pickwise core"

    def ready(self) -> None:
        # The one post_migrate receiver: it runs what apps registered with core.after_migrate.
        post_migrate.connect(run_after_migrate, sender=self, dispatch_uid="core.run_after_migrate")
