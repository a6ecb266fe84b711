"""Template helpers for background jobs: ``{% job_progress job as p %}`` gives a job's phase, step and ETA."""

from __future__ import annotations

from typing import Any

from django import template

from core import jobs
from core.models import LeasedJob

register = template.Library()


@register.simple_tag
def job_progress(job: LeasedJob) -> dict[str, Any]:
    """What :func:`core.jobs.job_progress` says about ``job``: phase (code and words), step k/N, ETA, attempt."""
    return jobs.job_progress(job)
