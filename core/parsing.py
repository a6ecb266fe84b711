"""The one place that turns what a client sent into booleans, integers, ids, numbers and JSON.

Every view, API view, query-parameter filter and service that reads a number a person typed goes
through here, so the rules are the same everywhere: ASCII digits only (``str.isdigit()`` accepts
"²", which ``int()`` does not), integers inside the column they are compared with (a bigint id is
below 2**63), finite floats, and JSON no deeper or larger than the limits below. A bad value raises
:class:`InvalidValue`, an ``ApplicationError`` naming the field: a 400 in the API (``core.api``), an
error message on a page.

``parse_bool`` stays Django-free in spirit: ``config/env.py`` reads the environment with it before
Django is set up (``core.exceptions`` imports nothing that needs settings).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from core.exceptions import ApplicationError

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})

# Integer columns. Ids are bigints (BigAutoField); counters use Django's IntegerField or smaller.
MAX_BIGINT = 2**63 - 1
MIN_BIGINT = -(2**63)
MAX_INT = 2**31 - 1
MAX_ID = MAX_BIGINT

# JSON from clients (template schemas, imports, JSONL metadata, answers): nesting and size limits.
JSON_MAX_DEPTH = 20
JSON_MAX_NODES = 100_000

_INTEGER = re.compile(r"[+-]?[0-9]+")


class InvalidValue(ApplicationError):
    """A value a client sent cannot be read; ``field`` names it."""


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


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_int(value: Any, *, field: str, minimum: int | None = MIN_BIGINT, maximum: int | None = MAX_BIGINT) -> int:
    """An integer from an ``int`` (not a bool), an integral finite float, or a string of ASCII digits
    with an optional sign; inside ``[minimum, maximum]`` (a bigint column's range by default)."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = int(value) if math.isfinite(value) and value.is_integer() else None
    elif isinstance(value, str):
        text = value.strip()
        number = int(text) if len(text) <= 40 and _INTEGER.fullmatch(text) else None
    if number is None:
        raise InvalidValue(f"{field} must be a whole number, got {_shown(value)}.", field=field)
    if minimum is not None and number < minimum:
        raise InvalidValue(f"{field} must be at least {minimum}, got {number}.", field=field)
    if maximum is not None and number > maximum:
        raise InvalidValue(f"{field} must be at most {maximum}, got {number}.", field=field)
    return number


def parse_id(value: Any, *, field: str) -> int:
    """A database id: a whole number from 1 to 2**63 - 1."""
    number: int | None
    try:
        number = parse_int(value, field=field, minimum=None, maximum=None)
    except InvalidValue:
        number = None
    if number is None or not 1 <= number <= MAX_ID:
        raise InvalidValue(f"{field} must be an id (a whole number from 1 to {MAX_ID}), got {_shown(value)}.",
                           field=field)
    return number


def path_id(value: Any) -> int | None:
    """An id from a URL path, or ``None`` when it is not one (the caller answers 404: no such object)."""
    try:
        return parse_id(value, field="id")
    except InvalidValue:
        return None


def parse_ids(value: Any, *, field: str, max_items: int = 1000) -> list[int]:
    """A list of ids (or a comma-separated string of them), without duplicates, in the order given."""
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise InvalidValue(f"{field} must be a list of ids.", field=field)
    if len(value) > max_items:
        raise InvalidValue(f"{field} takes at most {max_items} ids.", field=field)
    return list(dict.fromkeys(parse_id(item, field=field) for item in value))


def parse_float(value: Any, *, field: str, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite number (an int, a float or its text) inside ``[minimum, maximum]``."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value) if math.isfinite(value) else None
    elif isinstance(value, str) and len(value.strip()) <= 40 and value.strip().isascii():
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise InvalidValue(f"{field} must be a number, got {_shown(value)}.", field=field)
    if minimum is not None and number < minimum:
        raise InvalidValue(f"{field} must be at least {minimum:g}, got {number:g}.", field=field)
    if maximum is not None and number > maximum:
        raise InvalidValue(f"{field} must be at most {maximum:g}, got {number:g}.", field=field)
    return number


def query_int(params: Mapping[str, Any], name: str, *, minimum: int | None = MIN_BIGINT,
              maximum: int | None = MAX_BIGINT, blank_is_missing: bool = False) -> int | None:
    """Query parameter ``name`` as an integer; ``None`` when absent. An empty value is an error (the
    API's schema says integer) unless ``blank_is_missing`` (HTML filter forms send empty choices)."""
    if name not in params:
        return None
    value = params.get(name)
    if blank_is_missing and (value is None or str(value).strip() == ""):
        return None
    return parse_int(value, field=name, minimum=minimum, maximum=maximum)


def query_id(params: Mapping[str, Any], name: str, *, blank_is_missing: bool = False) -> int | None:
    """Query parameter ``name`` as an id; ``None`` when absent (see :func:`query_int` for blanks)."""
    if name not in params:
        return None
    value = params.get(name)
    if blank_is_missing and (value is None or str(value).strip() == ""):
        return None
    return parse_id(value, field=name)


def query_bool(params: Mapping[str, Any], name: str) -> bool | None:
    """Query parameter ``name`` as true/false; ``None`` when absent; anything else (empty too) is an error."""
    if name not in params:
        return None
    try:
        return parse_bool(params.get(name))
    except ValueError:
        raise InvalidValue(f"{name} must be true or false.", field=name) from None


def check_json(value: Any, *, field: str, max_depth: int = JSON_MAX_DEPTH, max_nodes: int = JSON_MAX_NODES) -> Any:
    """``value`` (parsed JSON) when it nests at most ``max_depth`` levels and holds at most ``max_nodes``
    values; also refuses floats that are not finite. Walks iteratively, so no depth crashes it."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise InvalidValue(f"{field} is too large (more than {max_nodes:,} values).", field=field)
        if isinstance(item, dict | list | tuple):
            if depth > max_depth:
                raise InvalidValue(f"{field} nests deeper than {max_depth} levels.", field=field)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidValue(f"{field} holds a number that is not finite.", field=field)
    return value


def parse_json(text: str | bytes, *, field: str, max_depth: int = JSON_MAX_DEPTH,
               max_nodes: int = JSON_MAX_NODES) -> Any:
    """Parse JSON text from a client; too deep, too large or malformed is an :class:`InvalidValue`."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidValue(f"{field} nests deeper than {max_depth} levels.", field=field) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidValue(f"{field} is not valid JSON: {exc}.", field=field) from None
    return check_json(value, field=field, max_depth=max_depth, max_nodes=max_nodes)


def check_length(value: str, *, field: str, maximum: int) -> str:
    """``value`` when it has at most ``maximum`` characters (the column's ``max_length``)."""
    if len(value) > maximum:
        raise InvalidValue(f"{field} is at most {maximum:,} characters (this one has {len(value):,}).",
                           field=field)
    return value
