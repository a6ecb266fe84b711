"""The Celery app the suite's worker processes run: ``config.celery``'s, plus one thing only tests need.

Between tests the test database is flushed and its content types are created again under new ids, so a
long-lived worker's ``ContentType`` cache (read whenever the audit trail records an entry) would name rows
that no longer exist and the entry would break the task's transaction. Each task here starts with that
cache cleared. In production content types never change under a running worker.
"""

from __future__ import annotations

from typing import Any

from celery.signals import task_prerun

from config.celery import app


@task_prerun.connect
def _fresh_content_types(**_: Any) -> None:
    from django.contrib.contenttypes.models import ContentType

    ContentType.objects.clear_cache()


__all__ = ["app"]
