"""Polling until something on the server finishes, with a tqdm progress bar."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from pickwise_client.errors import WaitTimeoutError

T = TypeVar("T")


def progress_bar(*, total: float, description: str, unit: str, enabled: bool, **options: Any) -> Any:
    """A tqdm bar on stderr (a widget in notebooks), or ``None`` when progress is off."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, leave=True, dynamic_ncols=True, **options)


def poll(
    fetch: Callable[[], T],
    *,
    finished: Callable[[T], bool],
    position: Callable[[T], tuple[float, float, str]],
    description: str,
    unit: str = "%",
    progress: bool = True,
    timeout: float | None = None,
    poll_interval: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fetch`` every ``poll_interval`` seconds until ``finished``; ``position(obj)`` gives the
    bar's ``(done, total, postfix)``. Raises :class:`WaitTimeoutError` after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = None
    try:
        while True:
            current = fetch()
            done, total, postfix = position(current)
            if bar is None and finished(current):
                return current  # nothing to wait for: no bar
            if bar is None:
                bar = progress_bar(total=total, description=description, unit=unit, enabled=progress)
            if bar is not None:
                if total and bar.total != total:
                    bar.total = total
                bar.n = done
                bar.set_postfix_str(postfix, refresh=False)
                bar.refresh()
            if finished(current):
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(f"{description}: still not finished after {timeout:g} s "
                                       "(it keeps going on the server)")
            sleep(poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - time.monotonic())))
    finally:
        if bar is not None:
            bar.close()
