"""Reachability probes for the database and the Celery broker."""

from __future__ import annotations

from celery import current_app
from django.db import connections


def check_database() -> str | None:
    """None when the default database answers ``SELECT 1``, else the error text."""
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_broker(timeout: float = 2.0) -> str | None:
    """None when the Celery broker accepts a connection within ``timeout`` seconds.

    ``current_app`` is the project's app (``config/__init__.py`` creates it when Django starts).
    """
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout, interval_start=0, interval_step=0)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
