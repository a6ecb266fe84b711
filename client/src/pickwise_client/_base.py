from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pickwise_client._http import HTTP


@dataclass
class Context:
    """What every resource shares: the HTTP layer, where downloads are cached, and the clock."""

    http: HTTP
    cache_dir: Path
    sleep: Callable[[float], None]


class Resource:
    def __init__(self, context: Context) -> None:
        self._context = context
        self._http = context.http


def project_path(project: int, rest: str = "") -> str:
    return f"api/projects/{int(project)}/{rest}"


def only_given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that were given (not ``None``)."""
    return {key: value for key, value in values.items() if value is not None}
