"""Typed readers for settings that come from the environment.

Every key read through this module is recorded in ``REGISTRY`` with its default and a
one-line description, so the README table and the Docker env files can be checked against
the code (see tests/core/test_settings.py). A value that cannot be parsed stops start-up
with ``ImproperlyConfigured`` naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

from core.parsing import parse_bool


@dataclass(frozen=True)
class EnvKey:
    name: str
    default: str
    doc: str


REGISTRY: dict[str, EnvKey] = {}

def _raw(name: str, default: str, doc: str) -> str:
    REGISTRY[name] = EnvKey(name=name, default=default, doc=doc)
    return os.environ.get(name, default)


def env_str(name: str, default: str, doc: str) -> str:
    return _raw(name, default, doc)


def env_bool(name: str, default: bool, doc: str) -> bool:
    value = _raw(name, "true" if default else "false", doc).strip().lower()
    if not value:  # set but empty: off
        return False
    try:
        return parse_bool(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected true or false, got {value!r}") from None


def env_int(name: str, default: int, doc: str, *, minimum: int | None = None) -> int:
    value = _raw(name, str(default), doc)
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}: must be at least {minimum}, got {number}")
    return number


def env_list(name: str, default: str, doc: str) -> list[str]:
    return [item.strip() for item in _raw(name, default, doc).split(",") if item.strip()]


def env_choice(name: str, default: str, doc: str, choices: tuple[str, ...]) -> str:
    value = _raw(name, default, doc).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def env_url(name: str, default: str, doc: str, *, schemes: tuple[str, ...]) -> str:
    value = _raw(name, default, doc).strip()
    parsed = urlparse(value)
    if parsed.scheme not in schemes:
        raise ImproperlyConfigured(
            f"{name}: unsupported URL {value!r}; the scheme must be one of {', '.join(schemes)}"
        )
    if parsed.scheme not in ("sqlite", "filesystem", "memory") and not parsed.hostname:
        raise ImproperlyConfigured(f"{name}: URL {value!r} has no host")
    return value
