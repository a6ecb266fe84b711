"""The one parser of true/false words (settings, query parameters, form and API values, hyper-parameters).

Django-free: ``config/env.py`` reads the environment with it before Django is set up.
"""

from __future__ import annotations

from typing import Any

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def parse_bool(value: Any) -> bool:
    """``True``/``False`` for a bool or one of the words above (any case, spaces ignored).

    Raises ``ValueError`` for anything else; callers turn it into their own error naming the field.
    Empty values are the caller's to default: they are not a word here.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {value!r}")
