"""Work that must run after every ``migrate`` (and every ``flush``): an explicit registry.

Apps register a function in their ``AppConfig.ready()`` (``projects`` keeps its role groups in
step with its permissions this way); core connects Django's ``post_migrate`` signal once, in its
own ``ready()``, and runs every registered function, in name order, when it fires. This is the
reaper registry's pattern: no app connects a signal of its own.

Registered functions run after the migrations of every app, possibly before Django has created
the permissions of later apps (``post_migrate`` is sent app by app), so a function that needs
some app's permissions creates them first (``django.contrib.auth.management.create_permissions``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_AFTER_MIGRATE: dict[str, Callable[[], None]] = {}


def register_after_migrate(name: str, func: Callable[[], None]) -> None:
    """Run ``func()`` after every ``migrate`` and ``flush``; a second registration under ``name`` replaces the first."""
    _AFTER_MIGRATE[name] = func


def registered_after_migrate() -> dict[str, Callable[[], None]]:
    return dict(_AFTER_MIGRATE)


def run_after_migrate(**kwargs: Any) -> None:
    """The ``post_migrate`` receiver (core connects it with ``sender`` = core's app config)."""
    for _, func in sorted(_AFTER_MIGRATE.items()):
        func()
