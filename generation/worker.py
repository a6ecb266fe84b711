"""The gpu worker's glue between Django rows and the Django-free ``generation/inference.py``.

- ``spec_for(version)`` turns a ``ModelVersion`` (and its LoRA lineage) into a ``ModelSpec``.
- ``pipeline_cache()`` is this process's lazily created, bounded LRU of loaded pipelines.
- ``run_job(job_id)`` is the whole of one Celery task: load the model, claim the job plus the queued
  jobs it can be coalesced with, render only the missing images in batches, store each under its
  deterministic key, record it, and finish the claimed jobs. Every write goes through services.
- ``drain_queue(model_version_id)`` runs more queued jobs of a loaded model version in the same task,
  so a busy GPU never waits for the broker between claims.
- ``reproduce_image(image)`` renders a stored image again from its provenance.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from generation import inference
from generation.models import GeneratedImage, GenerationJob, ModelVersion

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
                import torch

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
    import diffusers
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


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class RunResult:
    job_id: int
    model_version_id: int | None = None
    claimed: list[int] = field(default_factory=list)
    images_written: int = 0
    outcome: str = "skipped"


def run_job(job_id: int, *, batch_limit: int | None = None) -> RunResult:
    """Do whatever ``job_id`` (and the jobs coalesced with it) still lacks; a no-op when it is done.

    Raises ``services.TransientStorageError`` (after releasing the claim) when storage keeps
    failing, so the task can retry later; pipeline failures fail the claimed jobs instead.
    """
    from generation import services

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
    runtime = runtime_info(device_type, spec.dtype)

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

    try:
        for start in range(0, len(todo), batch_limit):
            chunk = todo[start : start + batch_limit]
            chunk_images = len(chunk)
            by_job: dict[int, list[tuple[int, int]]] = {}
            for chunk_job, index, seed in chunk:
                by_job.setdefault(chunk_job.pk, []).append((index, seed))
            jobs_by_pk = {j.pk: j for j in claim.jobs}
            requests = [
                inference.GenerationRequest(
                    prompt=jobs_by_pk[pk].prompt, seeds=[seed for _, seed in items], params=claim.params, spec=spec
                )
                for pk, items in by_job.items()
            ]
            # One generate_batch call = one batched pipeline call for the whole chunk, padded to a fixed
            # shape (a power of two) so that the same shape reproduces the same pixels later.
            shape = batch_shape(chunk_images, batch_limit)
            rows = inference.generate_batch(loaded, requests, callback=on_progress, max_batch=shape)
            made = [
                (jobs_by_pk[pk], index, seed, generated)
                for (pk, items), images in zip(by_job.items(), rows, strict=True)
                for (index, seed), generated in zip(items, images, strict=True)
            ]
            pngs = inference.images_to_png_bytes([generated.image for *_, generated in made])
            last_chunk = start + batch_limit >= len(todo)
            services.generated_images_store(token=claim.token, runtime={**runtime, "batch_shape": shape},
                                            finish=last_chunk, images=[
                services.ImageToStore(
                    job=made_job, index=index, seed=seed, png=png, width=generated.image.width,
                    height=generated.image.height, generation_seconds=generated.elapsed_s,
                    batch_size=generated.batch_size,
                )
                for (made_job, index, seed, generated), png in zip(made, pngs, strict=True)
            ])
            result.images_written += chunk_images
            done_steps += chunk_images * claim.params.steps
    except services.LeaseLost:
        logger.warning("job %s: lease lost mid-run; another worker owns it now", job_id)
        result.outcome = "lease_lost"
        return result
    except inference.GenerationError as exc:
        services.generation_jobs_fail(token=claim.token, error=str(exc))
        result.outcome = "failed"
        return result
    except services.TransientStorageError:
        services.generation_jobs_release(token=claim.token, lead_job_id=job_id)
        raise
    if not todo:  # every image was there already (a crash after the last store): only the bookkeeping is left
        services.generation_jobs_finish(token=claim.token)
    result.outcome = "succeeded"
    return result


def drain_queue(*, model_version_id: int, claims: int) -> list[RunResult]:
    """Run up to ``claims`` more queued jobs of this model version, oldest first, while it is loaded.

    Each is an ordinary ``run_job`` (claim, coalesce, render, store); the jobs' own task messages find
    them done and return at once. Stops at the first claim that does not succeed. A storage outage
    puts that job back with a task of its own (its message may already be spent) and stops draining.
    """
    from generation import selectors, services
    from generation.tasks import run_generation

    results: list[RunResult] = []
    while len(results) < claims:
        job_id = selectors.next_queued_job_id(model_version_id=model_version_id)
        if job_id is None:
            break
        try:
            result = run_job(job_id)
        except services.TransientStorageError:
            run_generation.delay(job_id)
            break
        results.append(result)
        if result.outcome != "succeeded":
            break
    return results


def reproduce_image(image: GeneratedImage) -> bytes:
    """Render ``image`` again from its provenance (model version, prompt, params, seed); PNG bytes."""
    device_type = pipeline_cache().device.type
    spec = spec_for(image.model_version, device_type=device_type)
    loaded = pipeline_cache().get(spec)
    request = inference.GenerationRequest(
        prompt=image.prompt, seeds=[image.seed], params=inference.GenerationParams.from_dict(image.params), spec=spec
    )
    shape = int(image.runtime.get("batch_shape", 1))
    [[generated]] = inference.generate_batch(loaded, [request], max_batch=shape)
    return inference.image_to_png_bytes(generated.image)

