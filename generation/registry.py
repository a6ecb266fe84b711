"""What generation tells the layers above it, through functions they register in ``AppConfig.ready()``.

Generation sits below annotation and training, so it never imports them. When jobs succeed, the
service that marks them succeeded (the worker calls it as its last store) calls every function
registered here, inside the same transaction: ``annotate`` registers the one that attaches a task's
generated candidates to the task, so the images are there as soon as the job is, whoever ran it
(a Celery worker, or a simulated annotator running the job in its own process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # apps.py files import this module before the models may load: types only
    from generation.models import GenerationJob

JobsSucceeded = Callable[[Sequence["GenerationJob"]], None]

_ON_JOBS_SUCCEEDED: dict[str, JobsSucceeded] = {}


def register_jobs_succeeded(name: str, handler: JobsSucceeded) -> None:
    """Call ``handler(jobs)`` whenever jobs succeed (in their transaction); ``name`` makes it idempotent."""
    _ON_JOBS_SUCCEEDED[name] = handler


def registered_jobs_succeeded() -> dict[str, JobsSucceeded]:
    return dict(_ON_JOBS_SUCCEEDED)


def jobs_succeeded(jobs: Sequence[GenerationJob]) -> None:
    """Tell every registered handler, in name order, that ``jobs`` have just succeeded."""
    if not jobs:
        return
    for _, handler in sorted(_ON_JOBS_SUCCEEDED.items()):
        handler(jobs)
