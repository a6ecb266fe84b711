"""Row-locking helpers: always lock in primary-key order so two writers never deadlock."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from django.db import models, transaction

M = TypeVar("M", bound=models.Model)


def lock_objects(queryset: models.QuerySet[M], *, skip_locked: bool = False) -> list[M]:
    """Lock the rows of ``queryset`` in primary-key order and return them.

    Must run inside a transaction (the lock lives until it commits).
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("lock_objects() must be called inside transaction.atomic()")
    return list(queryset.select_for_update(skip_locked=skip_locked).order_by("pk"))


def lock_ids(model: type[M], ids: Iterable[int]) -> list[M]:
    """Lock the rows of ``model`` with the given ids, in primary-key order."""
    return lock_objects(model._default_manager.filter(pk__in=sorted(set(ids))))
