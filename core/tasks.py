"""The task decorator every Pickwise Celery task uses, and the beat-driven reaper slot.

Tasks take ids, never model instances; they re-fetch, lock, return early when the work is
already done and write under deterministic keys, so a redelivered task is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery import shared_task

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_REAPERS: dict[str, Callable[[], int]] = {}


def pickwise_task(**options: Any) -> Callable[[F], Any]:
    """``shared_task`` with the house defaults: late acks, no requeue on worker loss."""
    defaults: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": False, "ignore_result": False}
    defaults.update(options)
    return shared_task(**defaults)


def register_reaper(name: str) -> Callable[[Callable[[], int]], Callable[[], int]]:
    """Register a function that returns expired leases to their queue and returns how many.

    Later apps add theirs (expired annotation leases, stuck generation jobs, ...); beat runs
    them all through :func:`run_reapers`.
    """

    def decorator(func: Callable[[], int]) -> Callable[[], int]:
        _REAPERS[name] = func
        return func

    return decorator


def registered_reapers() -> dict[str, Callable[[], int]]:
    return dict(_REAPERS)


@pickwise_task(name="core.tasks.run_reapers")
def run_reapers() -> dict[str, int]:
    results: dict[str, int] = {}
    for name, reaper in sorted(_REAPERS.items()):
        try:
            results[name] = reaper()
        except Exception:  # one broken reaper must not stop the others
            logger.exception("reaper %s failed", name)
            results[name] = -1
    return results


@pickwise_task(name="core.tasks.ping")
def ping(payload: str = "pong") -> dict[str, Any]:
    """Round-trip check used by the health tests and ``manage.py check_worker``."""
    import os

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone()
    return {"payload": payload, "pid": os.getpid(), "database": one == 1}
