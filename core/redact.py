"""Server file paths stay on the server: what pages and API responses show people who are not superusers.

Runs, exports and model versions carry paths (a backbone or pipeline directory, a LoRA's folder, a data
file, a reward model's checkpoint) in their fields, configs, lineage, descriptions and error messages.
Superusers operate the server and see them; everyone else sees :data:`HIDDEN` in their place.
:func:`hide_paths` walks any JSON-like value: a value under a path-valued key that names a local file or
directory is hidden whole, and any absolute path inside a string is hidden where it stands. Hub ids
(``org/model``), names and URLs are kept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.conf import settings

HIDDEN = "[server path]"
# Keys whose string values are file-system locations (or hub ids, which stay).
PATH_KEYS = frozenset({"backbone", "source", "data_path", "lora_path", "reward_arg", "base_model", "init_lora",
                       "path", "model_dir", "output_dir", "directory"})
# An absolute POSIX path inside text: "/" after the start, a space, a quote or a bracket, then path characters.
_ABSOLUTE_PATH = re.compile(r"(?:(?<=^)|(?<=[\s'\"(\[=:,]))(?:~|/)[^\s'\"<>()\[\],;]*[^\s'\"<>()\[\],;.:]")


def shows_paths(user: Any) -> bool:
    """Whether ``user`` may see server paths (superusers only)."""
    return bool(getattr(user, "is_superuser", False))


def is_local_path(value: str) -> bool:
    """True for an absolute or home path, and for a relative one that exists under the repository."""
    text = value.strip()
    if not text or text in ("tiny",):
        return False
    if text.startswith(("/", "~", "./", "../")):
        return True
    try:
        return "/" in text and (Path(settings.BASE_DIR) / text).exists()
    except (OSError, ValueError):
        return False


def hide_text(text: str) -> str:
    """``text`` with every absolute path in it replaced by :data:`HIDDEN`."""
    return _ABSOLUTE_PATH.sub(HIDDEN, text)


def hide_paths(value: Any, *, key: str | None = None) -> Any:
    """``value`` (a JSON-like structure or a string) with its server paths hidden (see the module docstring)."""
    if isinstance(value, dict):
        return {k: hide_paths(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hide_paths(item, key=key) for item in value]
    if isinstance(value, str):
        if key is not None and (key == "url" or key.endswith("_url")):  # a link ("/api/exports/7/download/")
            return value
        if key in PATH_KEYS and is_local_path(value):
            return HIDDEN
        return hide_text(value)
    return value


def for_user(value: Any, user: Any, *, key: str | None = None) -> Any:
    """``value`` as ``user`` may see it: unchanged for superusers, paths hidden for everyone else."""
    return value if shows_paths(user) else hide_paths(value, key=key)
