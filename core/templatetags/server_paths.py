"""``{{ value|paths_for:request.user }}``: a value with its server paths hidden unless the user is a superuser."""

from __future__ import annotations

from typing import Any

from django import template

from core import redact

register = template.Library()


@register.filter
def paths_for(value: Any, user: Any) -> Any:
    """``value`` as ``user`` may see it (:func:`core.redact.for_user`); a bare path is hidden whole."""
    if isinstance(value, str) and not redact.shows_paths(user) and redact.is_local_path(value):
        return redact.HIDDEN
    return redact.for_user(value, user)
