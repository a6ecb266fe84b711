"""The task decorator every Pickwise Celery task uses, queueing by task name, and the beat-driven reaper slot.

Tasks take ids, never model instances; they re-fetch, lock, return early when the work is
already done and write under deterministic keys, so a redelivered task is a no-op.

Services queue work with :func:`enqueue_on_commit` and a task *name*: a service never imports the
module that defines its task (that module imports the service, to run it), so there is no cycle.
Every app's ``AppConfig.ready()`` imports its own ``tasks`` module, so the names are registered in
web processes as well as in workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from celery import current_app, shared_task
from django.db import connection

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_REAPERS: dict[str, Callable[[], int]] = {}


def pickwise_task(**options: Any) -> Callable[[F], Any]:
    """``shared_task`` with the house defaults: late acks, no requeue on worker loss."""
    defaults: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": False, "ignore_result": False}
    defaults.update(options)
    return shared_task(**defaults)


def registered_task(name: str) -> Any:
    """The Celery task registered under ``name``; ``LookupError`` naming it when there is none."""
    try:
        return current_app.tasks[name]
    except KeyError:
        raise LookupError(f"no Celery task named {name!r} is registered (is its app's tasks module imported?)") from None


def enqueue_on_commit(name: str, *args: Any) -> None:
    """Queue task ``name`` with ``args`` once the current transaction commits (at once outside one).

    Routing is by name (``config/celery.py``); the task object's ``delay_on_commit`` does the sending,
    so a test may still replace it on the task.
    """
    registered_task(name).delay_on_commit(*args)


def register_reaper(name: str) -> Callable[[Callable[[], int]], Callable[[], int]]:
    """Register a function that returns expired leases to their queue and returns how many.

    Apps add theirs (expired annotation leases, stuck generation jobs, ...); beat runs them all
    through :func:`run_reapers`.
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
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone()
    return {"payload": payload, "pid": os.getpid(), "database": one == 1}
