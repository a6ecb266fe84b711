"""A fine-tune run's evaluation grids: fixed prompts x seeds rendered from the starting model, every
periodic checkpoint and the final LoRA, stored under deterministic keys of the attempt that rendered them
(a stalled earlier attempt never overwrites them) and recorded only while the run is still that
attempt's (:func:`save_grid` names the lease)."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from core import jobs
from generation.inference import image_to_png_bytes, resolve_device
from rlhf.models import FineTuneRun
from rlhf.runs.lifecycle import failure_reason, free_memory
from rlhf.runs.paths import eval_image_key
from rlhf.training.checkpoint import list_checkpoints, read_metadata

logger = logging.getLogger(__name__)


def checkpoint_grid_label(step: int) -> str:
    """The label (and storage-key segment) of the grid rendered from the checkpoint at ``step``."""
    return f"step-{step}"


def grid_order(grid: dict[str, Any]) -> tuple[int, int]:
    """Sort key of a run's evaluation grids: base, then the checkpoints by step, then final."""
    return {"base": 0, "final": 2}.get(grid["label"], 1), int(grid["step"])


def render_grid(run: FineTuneRun, base_dir: Path, lora_dir: Path | None, label: str, step: int, *,
                attempt: int) -> dict[str, Any]:
    """Render the fixed evaluation prompts x seeds and store them under deterministic keys.

    Every image is sampled from its own CPU generator seeded with its evaluation seed
    (``lora.eval_images``), so grids are comparable across checkpoints and never draw from the global
    random state.
    """
    from rlhf.training.lora import (  # torch: only the worker running the run renders
        eval_images,
        load_pipeline,
    )

    pipe = load_pipeline(base_dir, lora_dir)
    pipe.to(resolve_device(settings.PICKWISE_DEVICE))
    prompts = [p for p in run.eval_prompts for _ in run.eval_seeds]
    seeds = [s for _ in run.eval_prompts for s in run.eval_seeds]
    version = run.base_version
    images = eval_images(pipe, prompts, seeds, num_inference_steps=min(version.default_steps, 50),
                         guidance_scale=version.default_guidance, resolution=int(run.config.get("resolution", 512)))
    del pipe
    entries = []
    for index, (prompt, seed, image) in enumerate(zip(prompts, seeds, images, strict=True)):
        key = eval_image_key(run, label, index, attempt=attempt)
        _store(key, image_to_png_bytes(image))
        entries.append({"prompt": prompt, "seed": seed, "key": key, "index": index})
    return {"label": label, "step": step, "images": entries}


def _store(key: str, data: bytes) -> None:
    if default_storage.exists(key):
        default_storage.delete(key)
    saved = default_storage.save(key, ContentFile(data))
    if saved != key:  # pragma: no cover - a storage that renames instead of overwriting
        default_storage.delete(saved)
        raise OSError(f"storage saved {key!r} as {saved!r}")


def save_grid(lease: jobs.Lease, grid: dict[str, Any]) -> bool:
    """Add or replace (by label) one grid while the run is still ``lease``'s; the list stays in
    :func:`grid_order`. False, and nothing saved, once the run was taken back."""
    with transaction.atomic():
        run = jobs.job_lock_owned(lease)
        if run is None:
            return False
        grids = sorted([g for g in run.eval_grids if g["label"] != grid["label"]] + [grid], key=grid_order)
        lease.owned().update(eval_grids=grids)
    return True


def render_checkpoint_grid(run: FineTuneRun, lease: jobs.Lease, base_dir: Path, lora_dir: Path,
                           step: int) -> None:
    """Render and save the grid of the checkpoint at ``step``; a failure is recorded on the grid, not raised.

    A checkpoint grid is a preview: running out of memory (or any other error) while rendering it must
    not end a training run that is otherwise fine. The grid is saved with ``images: []`` and ``error``
    (shown on the run page, and counted as rendered so a resume does not retry it), the traceback goes
    to the log, and training carries on. Errors in training itself still fail the run.
    """
    label = checkpoint_grid_label(step)
    try:
        grid = render_grid(run, base_dir, lora_dir, label, step, attempt=lease.attempt)
    except Exception as exc:
        logger.exception("fine-tune run %s: rendering the grid of checkpoint %s failed", run.pk, step)
        grid = {"label": label, "step": step, "images": [], "error": failure_reason(exc)}
    save_grid(lease, grid)
    gc.collect()  # the pipeline (and, after a failure, the traceback's frames holding it) before the cache
    free_memory()


def wants_checkpoint_grid(step: int, *, checkpoint_every: int, total: int) -> bool:
    """Periodic checkpoints before the last step get a grid (the last step's weights get "final")."""
    return bool(checkpoint_every) and step % checkpoint_every == 0 and 0 < step < total


def render_missing_checkpoint_grids(run: FineTuneRun, lease: jobs.Lease, base_dir: Path, output_dir: Path,
                                    *,
                                    checkpoint_every: int, total: int,
                                    on_render: Callable[[], object] | None = None) -> None:
    """On resume: grids of checkpoints written before the worker died but not yet rendered."""
    rendered = {g["label"] for g in FineTuneRun.objects.get(pk=run.pk).eval_grids}
    for directory in list_checkpoints(output_dir):
        step = int(read_metadata(directory)["step"])
        if (wants_checkpoint_grid(step, checkpoint_every=checkpoint_every, total=total)
                and checkpoint_grid_label(step) not in rendered):
            if on_render is not None:
                on_render()
            render_checkpoint_grid(run, lease, base_dir, directory, step)
