"""The gpu worker's glue between Django rows and the Django-free ``generation/inference.py``.

- ``spec_for(version)`` turns a ``ModelVersion`` (and its LoRA lineage) into a ``ModelSpec``.
- ``pipeline_cache()`` is this process's lazily created, bounded LRU of loaded pipelines.
- ``run_job(job_id)`` is the whole of one claim: load the model, claim the job plus the queued jobs it
  can be coalesced with, render only the missing images in batches, store each under its
  deterministic key, record it, and finish the claimed jobs. Every write goes through services.
- ``Storer`` stores each rendered chunk (PNG encoding, storage writes, rows) on a background thread
  during the next pipeline call, one chunk at a time; a task closes it before it returns.
- ``run_job_to_end(job_id)`` runs a job here, or waits for the worker that has it (rounds, the arena).
- ``drain_queue(model_version_id)`` runs more queued jobs of a loaded model version in the same task,
  so a busy GPU never waits for the broker between claims.
- ``reproduce_image(image)`` renders a stored image again from its provenance.
- ``preload_in_background()`` loads the versions projects offer into this process's cache when a gpu
  worker starts, and warms each with a one-step render, so the first Generate does not wait for them.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connections, transaction

from core.exceptions import ApplicationError
from generation import editing, inference, selectors, services
from generation.models import NO_SEED_REASON, GeneratedImage, GenerationJob, ModelVersion

logger = logging.getLogger(__name__)

# Progress is written at most this often (seconds); each write also renews the lease.
PROGRESS_INTERVAL_S = 0.5

_cache: inference.PipelineCache | None = None
_cache_lock = threading.Lock()


def pipeline_cache() -> inference.PipelineCache:
    """This worker process's pipeline cache, created on first use (device from PICKWISE_DEVICE)."""
    global _cache
    with _cache_lock:
        if _cache is None:
            if settings.GENERATION_TORCH_THREADS:
                import torch  # lazy: web processes import this module and never load torch

                # Oversubscribed OpenMP threads spin against other processes: cap them where asked.
                torch.set_num_threads(settings.GENERATION_TORCH_THREADS)
            _cache = inference.PipelineCache(
                settings.PICKWISE_DEVICE, max_size=settings.GENERATION_PIPELINE_CACHE_SIZE
            )
        return _cache


def reset_pipeline_cache() -> None:
    """Drop every loaded pipeline (tests, and after the device setting changes)."""
    global _cache
    with _cache_lock:
        if _cache is not None:
            _cache.clear()
        _cache = None


def resolve_source(source: str) -> str:
    """A relative local path is taken relative to the repository; hub ids pass through."""
    path = Path(source).expanduser()
    if not path.is_absolute() and (settings.BASE_DIR / path).exists():
        return str(settings.BASE_DIR / path)
    return str(path) if path.exists() else source


def effective_dtype(version: ModelVersion, device_type: str) -> str:
    """float16 kernels are missing or slow on CPU: a CPU worker runs half-precision versions in float32."""
    root = version
    while root.parent_id is not None:
        root = root.parent  # type: ignore[assignment]
    if device_type == "cpu" and root.dtype != "float32":
        return "float32"
    return root.dtype


def spec_for(version: ModelVersion, *, device_type: str | None = None) -> inference.ModelSpec:
    """The inference spec for ``version``; a LoRA version's spec carries its parents' chain."""
    device_type = device_type or pipeline_cache().device.type
    dtype = effective_dtype(version, device_type)
    chain: list[ModelVersion] = []
    node: ModelVersion | None = version
    while node is not None:
        chain.append(node)
        node = node.parent
    root = chain[-1]
    spec = inference.ModelSpec(key=root.cache_key, source=resolve_source(root.source), dtype=dtype)  # type: ignore[arg-type]
    for lora in reversed(chain[:-1]):
        spec = inference.ModelSpec.lora(
            lora.cache_key, Path(resolve_source(lora.lora_path)), spec, lora_scale=lora.lora_scale
        )
    return spec


def runtime_info(device_type: str, dtype: str) -> dict[str, str]:
    """What exact reproduction needs to match: device, dtype and library versions."""
    import diffusers  # lazy: web processes import this module and never load torch
    import torch

    info = {"device": device_type, "dtype": dtype, "torch": torch.__version__, "diffusers": diffusers.__version__}
    if device_type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def check_loads(version: ModelVersion, *, local_files_only: bool = True) -> str:
    """Load ``version`` once (uncached) on the configured device; return the pipeline class name."""
    device = inference.resolve_device(settings.PICKWISE_DEVICE)
    loaded = inference.load_pipeline(
        spec_for(version, device_type=device.type), device, local_files_only=local_files_only
    )
    return type(loaded.pipe).__name__


def batch_shape(images: int, batch_limit: int) -> int:
    """The padded batch size of a pipeline call for ``images`` images: the next power of two, at most
    ``batch_limit``. Kernels round by tensor shape, so provenance records it and reproduction reuses it."""
    shape = 1
    while shape < images:
        shape *= 2
    return max(images, min(shape, batch_limit))


def edit_input(edit: dict[str, Any]) -> inference.EditInput | None:
    """The inference input of an edit's provenance (a job's or an image's ``edit``), its source and mask
    read from their content-keyed files; None for text to image. A missing file raises FileNotFoundError."""
    if not edit or not edit.get("kind"):
        return None

    def read(key: str) -> bytes:
        with default_storage.open(key, "rb") as handle:
            data: bytes = handle.read()
        return data

    mask_sha = edit.get("mask_sha256") or ""
    box = edit.get("outpaint")
    return inference.EditInput(
        kind=edit["kind"],
        source_png=read(editing.source_storage_key(edit["source_sha256"])),
        mask_png=read(editing.mask_storage_key(mask_sha)) if mask_sha else None,
        strength=float(edit["strength"]),
        outpaint=tuple(box) if box else None,  # type: ignore[arg-type]
    )


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class RunResult:
    job_id: int
    model_version_id: int | None = None
    claimed: list[int] = field(default_factory=list)
    images_written: int = 0
    # skipped | running | storing (the last chunk's store is in flight) | succeeded | failed | lease_lost
    # | storage_unavailable (the claim was released; its lead job's task retries)
    outcome: str = "skipped"
    error: str = ""


@dataclass
class _Store:
    store: Callable[[], object]
    result: RunResult
    token: uuid.UUID
    last: bool  # the claim's last chunk: its success is the claim's success
    future: Future[object] | None = None  # set once it runs on the thread


class Storer:
    """Stores rendered chunks on one background thread while the next pipeline call runs, so that the
    pipeline never waits for a chunk's PNG encoding, storage writes and rows (within a claim, and from
    one claim to the next within a task).

    At most one store is pending. ``submit`` queues it and ``start`` (as the next pipeline call begins)
    hands it to the thread: started any earlier, it would contend for the GIL with the claim's
    bookkeeping in between. ``wait`` settles it on the calling thread (running it there if it never
    started), and ``submit`` waits first. Settling marks the claim's result: succeeded after its last
    chunk; on a storage outage the claim is released (``storage_unavailable``), on a lost lease given
    up (``lease_lost``), and on any other error failed with the reason (``failed``). ``close`` (the end
    of a ``with``) settles the last store, so none outlives the task. A process that dies mid-store
    leaves what a crash always left: a chunk's rows committed or not at all, and orphan files that
    the next claim deletes.

    The thread has a database connection of its own, whose writes commit on their own. A caller inside
    a transaction (tests, ``atomic`` in a shell) would not see them, nor they its uncommitted jobs:
    there each store runs inline when submitted, and settles the same way.
    """

    def __init__(self) -> None:
        self._background = not transaction.get_connection().in_atomic_block
        self._pool: ThreadPoolExecutor | None = None
        self._pending: _Store | None = None
        self.failed = False  # some store of this storer failed: stop taking more claims

    def submit(self, store: Callable[[], object], *, result: RunResult, token: uuid.UUID, last: bool) -> None:
        self.wait()
        if last:
            result.outcome = "storing"
        self._pending = _Store(store, result, token, last)
        if not self._background:
            self.wait()

    def start(self) -> None:
        """Run the pending store on the thread, if it has not started yet."""
        if self._pending is not None and self._pending.future is None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
            self._pending.future = self._pool.submit(self._pending.store)

    def wait(self) -> None:
        """Wait for the pending store, if any, and settle it (see the class docstring)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.future is not None:
            exc = pending.future.exception()
        else:
            try:
                pending.store()
                exc = None
            except Exception as error:  # settled below, as a failure on the thread would be
                exc = error
        result = pending.result
        if exc is None:
            if pending.last and result.outcome == "storing":
                result.outcome = "succeeded"
            return
        self.failed = True
        if isinstance(exc, services.LeaseLost):
            logger.warning("job %s: lease lost while storing; another worker owns it now", result.job_id)
            result.outcome = "lease_lost"
        elif isinstance(exc, services.TransientStorageError):
            services.generation_jobs_release(token=pending.token, lead_job_id=result.job_id)
            result.outcome, result.error = "storage_unavailable", str(exc)
        else:
            logger.error("job %s: storing images failed", result.job_id, exc_info=exc)
            result.outcome, result.error = "failed", f"Could not store the images: {type(exc).__name__}: {exc}"
            services.generation_jobs_fail(token=pending.token, error=result.error)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.submit(connections.close_all).result()  # the thread's own connection
                self._pool.shutdown()
                self._pool = None

    def __enter__(self) -> Storer:
        return self

    def __exit__(self, *exc_info: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def _store_chunk(*, token: uuid.UUID, made: list[tuple[GenerationJob, int, int, inference.GeneratedImage]],
                 runtime: dict[str, Any], finish: bool) -> None:
    """Encode, write and record one rendered chunk (on the storer's thread)."""
    pngs = inference.images_to_png_bytes([generated.image for *_, generated in made])
    services.generated_images_store(token=token, runtime=runtime, finish=finish, images=[
        services.ImageToStore(
            job=job, index=index, seed=seed, png=png, width=generated.image.width, height=generated.image.height,
            generation_seconds=generated.elapsed_s, batch_size=generated.batch_size,
        )
        for (job, index, seed, generated), png in zip(made, pngs, strict=True)
    ])


def run_job(job_id: int, *, batch_limit: int | None = None, storer: Storer | None = None) -> RunResult:
    """Do whatever ``job_id`` (and the jobs coalesced with it) still lacks; a no-op when it is done.

    Each chunk is handed to ``storer`` while the next one renders. Given a storer, the claim's last
    store may still be in flight on return (outcome ``storing``; the storer settles it); without one,
    run_job stores through a storer of its own and returns the settled outcome. A storage outage
    releases the claim (outcome ``storage_unavailable``) so that the task can retry later; pipeline
    and other storage failures fail the claimed jobs.
    """
    if storer is None:
        with Storer() as own:
            result = run_job(job_id, batch_limit=batch_limit, storer=own)
        return result
    result = RunResult(job_id=job_id)
    batch_limit = batch_limit or settings.GENERATION_BATCH_LIMIT
    job = GenerationJob.objects.select_related("model_version").filter(pk=job_id).first()
    if job is None or job.status != "queued":
        return result
    result.model_version_id = job.model_version_id

    # Load before claiming, so a slow first load never eats into the lease.
    try:
        device_type = pipeline_cache().device.type
        spec = spec_for(job.model_version, device_type=device_type)
        loaded = pipeline_cache().get(spec)
    except (OSError, ValueError, RuntimeError) as exc:
        services.generation_job_fail_unclaimed(
            job_id=job_id, error=f"Could not load model version {job.model_version.name!r}: {exc}"
        )
        result.outcome = "failed"
        return result

    claim = services.generation_jobs_claim(job_id=job_id, worker=worker_name(), batch_limit=batch_limit)
    if claim is None:
        return result
    result.claimed = [j.pk for j in claim.jobs]
    result.outcome = "running"
    runtime = runtime_info(device_type, spec.dtype)
    # Coalesced jobs share the edit (it is part of their params hash): read its files once.
    try:
        edit = edit_input(claim.jobs[0].edit) if claim.jobs and claim.jobs[0].edit_kind else None
    except FileNotFoundError as exc:
        services.generation_jobs_fail(token=claim.token, error=f"The edit's source or mask file is missing: {exc}")
        result.outcome = "failed"
        return result
    except OSError as exc:  # storage unavailable: back to the queue, the task retries later
        services.generation_jobs_release(token=claim.token, lead_job_id=job_id)
        result.outcome, result.error = "storage_unavailable", str(exc)
        return result

    # Only the missing images, in batches of at most batch_limit images.
    todo = [(job, index, job.seeds[index]) for job in claim.jobs for index in claim.missing[job.pk]]
    total_steps = max(1, len(todo)) * claim.params.steps
    done_steps = 0
    last_write = time.monotonic()  # the claim itself just wrote the lease and progress 0

    def on_progress(step: int, total: int) -> None:
        nonlocal last_write
        now = time.monotonic()
        if now - last_write >= PROGRESS_INTERVAL_S:
            last_write = now
            fraction = (done_steps + step / max(1, total) * chunk_images * claim.params.steps) / total_steps
            still_ours = services.generation_jobs_heartbeat(token=claim.token, progress=min(1.0, fraction))
            if not still_ours:
                raise services.LeaseLost(f"lease {claim.token} was taken back")

    jobs_by_pk = {j.pk: j for j in claim.jobs}
    try:
        for start in range(0, len(todo), batch_limit):
            chunk = todo[start : start + batch_limit]
            chunk_images = len(chunk)
            by_job: dict[int, list[tuple[int, int]]] = {}
            for chunk_job, index, seed in chunk:
                by_job.setdefault(chunk_job.pk, []).append((index, seed))
            requests = [
                inference.GenerationRequest(
                    prompt=jobs_by_pk[pk].prompt, seeds=[seed for _, seed in items], params=claim.params, spec=spec,
                    edit=edit,
                )
                for pk, items in by_job.items()
            ]
            # One generate_batch call = one batched pipeline call for the whole chunk, padded to a fixed
            # shape (a power of two) so that the same shape reproduces the same pixels later. Re-rendering
            # the lost images of a partly stored job pads to the shape its stored images were made in: a
            # kernel may round differently for another batch size, and the image would change.
            shape = max(batch_shape(chunk_images, batch_limit), claim.stored_batch_shape)
            storer.start()  # the previous chunk's store runs during this pipeline call
            rows = inference.generate_batch(loaded, requests, callback=on_progress, max_batch=shape)
            made = [
                (jobs_by_pk[pk], index, seed, generated)
                for (pk, items), images in zip(by_job.items(), rows, strict=True)
                for (index, seed), generated in zip(items, images, strict=True)
            ]
            storer.wait()  # the previous chunk's store (this claim's or an earlier one's) settles first
            if result.outcome != "running":  # this claim's previous chunk could not be stored
                return result
            last_chunk = start + batch_limit >= len(todo)
            store = functools.partial(_store_chunk, token=claim.token, made=made,
                                      runtime={**runtime, "batch_shape": shape}, finish=last_chunk)
            storer.submit(store, result=result, token=claim.token, last=last_chunk)
            result.images_written += chunk_images
            done_steps += chunk_images * claim.params.steps
    except services.LeaseLost:
        storer.wait()
        logger.warning("job %s: lease lost mid-run; another worker owns it now", job_id)
        result.outcome = "lease_lost"
        return result
    except inference.GenerationError as exc:
        storer.wait()  # a chunk stored after the failure would leave orphan files behind
        services.generation_jobs_fail(token=claim.token, error=str(exc))
        result.outcome = "failed"
        return result
    if not todo:  # every image was there already (a crash after the last store): only the bookkeeping is left
        services.generation_jobs_finish(token=claim.token)
        result.outcome = "succeeded"
    return result


def run_job_to_end(job_id: int, *, poll_s: float = 0.5, tick: Callable[[], object] | None = None) -> GenerationJob:
    """Run ``job_id`` in this process while it is queued, or wait while another worker has it (a retried
    round or arena finds the job its dead worker had started, re-queued by the reaper or already claimed by
    a gpu worker); returns the finished job. ``tick()`` runs between waits (an outer job's stop check, which
    may raise to give up)."""
    while True:
        run_job(job_id)
        job = GenerationJob.objects.get(pk=job_id)
        if job.is_finished:
            return job
        if tick is not None:
            tick()
        time.sleep(poll_s)


def drain_queue(*, model_version_id: int, claims: int, storer: Storer) -> list[RunResult]:
    """Run up to ``claims`` more queued jobs of this model version, oldest first, while it is loaded.

    Each is an ordinary ``run_job`` (claim, coalesce, render, store) sharing the task's ``storer``, so
    a claim renders while the previous one is stored; the jobs' own task messages find them done and
    return at once. Stops at the first claim that does not succeed, or once any store has failed; the
    task settles the last store and re-queues claims that storage turned away.
    """
    results: list[RunResult] = []
    while len(results) < claims and not storer.failed:
        job_id = selectors.next_queued_job_id(model_version_id=model_version_id)
        if job_id is None:
            break
        result = run_job(job_id, storer=storer)
        results.append(result)
        if result.outcome not in ("storing", "succeeded"):
            break
    return results


def reproduce_image(image: GeneratedImage) -> bytes:
    """Render ``image`` again from its provenance (model version, prompt, params, seed, and for an edit its
    kind, source, mask, strength and outpaint box); PNG bytes.

    An imported image has no such provenance: ``ApplicationError`` says so.
    """
    if image.is_external or image.model_version is None or image.seed is None or image.params is None:
        raise ApplicationError(f"Image {image.pk}: {NO_SEED_REASON}.", field="image")
    device_type = pipeline_cache().device.type
    spec = spec_for(image.model_version, device_type=device_type)
    loaded = pipeline_cache().get(spec)
    request = inference.GenerationRequest(
        prompt=image.prompt, seeds=[image.seed], params=inference.GenerationParams.from_dict(image.params), spec=spec,
        edit=edit_input(image.edit),
    )
    shape = int(image.runtime.get("batch_shape", 1))
    [[generated]] = inference.generate_batch(loaded, [request], max_batch=shape)
    return inference.image_to_png_bytes(generated.image)



# --- preloading at start -----------------------------------------------------------------------------

# The warm-up render: one step of the version's own size and sampler, in the padded batch shape of the
# usual request (four images), so the first real call finds its kernels chosen and its memory allocated.
WARMUP_IMAGES = 4


def preload_versions() -> list[str]:
    """Load the versions a gpu worker should hold (``selectors.model_versions_to_preload``) into this
    process's pipeline cache and warm each up; returns their names. A version that cannot be loaded is
    logged and skipped: the jobs that ask for it fail with the reason, as without a preload."""
    loaded_names = []
    for version in selectors.model_versions_to_preload(limit=settings.GENERATION_PIPELINE_CACHE_SIZE):
        started = time.monotonic()
        try:
            spec = spec_for(version)
            loaded = pipeline_cache().get(spec)
            params = inference.GenerationParams(**{**version.default_params().to_dict(), "steps": 1})
            shape = batch_shape(min(WARMUP_IMAGES, settings.GENERATION_BATCH_LIMIT), settings.GENERATION_BATCH_LIMIT)
            inference.generate_batch(loaded, [inference.GenerationRequest(prompt="warm-up", seeds=[0], params=params,
                                                                          spec=spec)], max_batch=shape)
        except Exception:  # a worker must start whatever one model's files hold
            logger.exception("could not preload model version %r; its jobs load it (and report why) when asked",
                             version.name)
            continue
        loaded_names.append(version.name)
        logger.info("preloaded model version %r in %.1f s", version.name, time.monotonic() - started)
    return loaded_names


_preloading: dict[int, threading.Thread] = {}  # process id -> its preload thread (one per process)
_preload_lock = threading.Lock()


def _preload_and_close() -> None:
    try:
        preload_versions()
    except Exception:
        logger.exception("preloading model versions failed")
    finally:
        connections.close_all()  # this thread's own connections


def preload_in_background() -> threading.Thread:
    """:func:`preload_versions` on a thread of its own, once per process: the worker takes tasks meanwhile
    (a job for a version being loaded waits on the cache's lock, then finds it loaded). The thread has its
    own database connection (Django's are per thread), so a forked pool process never touches the one it
    inherited."""
    with _preload_lock:
        thread = _preloading.get(os.getpid())
        if thread is None:
            thread = threading.Thread(target=_preload_and_close, name="pickwise-preload", daemon=True)
            _preloading[os.getpid()] = thread
            thread.start()
    return thread
