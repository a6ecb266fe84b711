"""Celery tasks of the generation app (queue ``gpu``, routed by name in config/celery.py).

``run_generation(job_id)`` is thin: the work lives in ``generation.worker.run_job``. It takes an id,
re-fetches, claims under a lease (coalescing queued jobs with the same model version and parameters),
renders only the missing images and writes them under deterministic keys, so a redelivered or
re-queued task is a no-op once the job is done. After a success it drains up to
``GENERATION_DRAIN_CLAIMS`` more queued jobs of the same model version while the model is loaded.
Chunks are stored on a background thread while the next one renders; every store has settled
(stored, or its jobs released or failed) before the task returns.

A worker that consumes the ``gpu`` queue preloads the versions projects offer when it starts
(``GENERATION_PRELOAD``; ``worker.preload_in_background``): in each pool process of a prefork worker
(``worker_process_init``), in the worker itself for the solo and threads pools (``worker_ready``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from celery import Celery, current_app
from celery.signals import worker_process_init, worker_ready
from django.conf import settings

from core.tasks import pickwise_task, register_reaper
from generation import services, worker

# Storage outages: retry the task this many times, waiting 5, 10, 20, ... seconds (at most 5 minutes).
STORAGE_RETRIES = 5


@pickwise_task(name="generation.tasks.run_generation", bind=True, max_retries=STORAGE_RETRIES)
def run_generation(self: Any, job_id: int) -> dict[str, Any]:
    drained: list[worker.RunResult] = []
    with worker.Storer() as storer:  # leaving the block settles the last store
        result = worker.run_job(job_id, storer=storer)
        if (result.outcome in ("storing", "succeeded") and result.model_version_id is not None
                and settings.GENERATION_DRAIN_CLAIMS):
            drained = worker.drain_queue(
                model_version_id=result.model_version_id, claims=settings.GENERATION_DRAIN_CLAIMS, storer=storer
            )
    for later in drained:
        if later.outcome == "storage_unavailable":  # released; its own message may be spent already
            run_generation.delay(later.job_id)
    if result.outcome == "storage_unavailable":
        if self.request.retries >= STORAGE_RETRIES:
            services.generation_job_fail_unclaimed(job_id=job_id, error=f"Media storage is unavailable: {result.error}")
            return {"job_id": job_id, "outcome": "failed"}
        exc = services.TransientStorageError(result.error)
        raise self.retry(exc=exc, countdown=min(300, 5 * 2**self.request.retries))
    return {**asdict(result), "drained": [asdict(r) for r in drained]}


@register_reaper("generation.expired_leases")
def reap_generation_leases() -> int:
    """Beat (core.tasks.run_reapers) calls this: re-queue or fail jobs whose worker died."""
    return services.generation_jobs_reap_expired()


def _consumes_gpu(app: Celery) -> bool:
    """Whether this worker consumes the ``gpu`` queue (``-Q``; every queue when none was named)."""
    return "gpu" in app.amqp.queues.consume_from


@worker_process_init.connect(dispatch_uid="generation.preload_in_pool_process")
def _preload_in_pool_process(**kwargs: Any) -> None:
    """A prefork pool process (where the tasks run) loads the offered versions as it starts."""
    if settings.GENERATION_PRELOAD and _consumes_gpu(current_app):
        worker.preload_in_background()


@worker_ready.connect(dispatch_uid="generation.preload_in_worker")
def _preload_in_worker(sender: Any = None, **kwargs: Any) -> None:
    """The solo and threads pools run tasks in the worker's own process: it loads them once ready."""
    controller = getattr(sender, "controller", None)
    pool = getattr(controller, "pool_cls", None)
    pool_name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if settings.GENERATION_PRELOAD and ("solo" in pool_name or "thread" in pool_name) and _consumes_gpu(sender.app):
        worker.preload_in_background()
