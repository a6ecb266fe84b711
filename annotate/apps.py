from __future__ import annotations

from django.apps import AppConfig


class AnnotateConfig(AppConfig):
    name = "annotate"
    verbose_name = "Annotation"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from annotate.role_groups import sync_after_migrate

        # Runs once per migrate, after every app's permissions exist (``sender`` = this app).
        post_migrate.connect(sync_after_migrate, sender=self, dispatch_uid="annotate.sync_role_groups")
