"""Where runs work and what they read: working directories, stable output directories, storage keys.

Runs work in ``PICKWISE_MODEL_CACHE_DIR/runs/<kind>-<id>/attempt-<n>``; finished weights are copied to a
stable directory of the attempt (``reward-models/``, ``loras/``) through a sibling temporary one, so that
directory is whole or absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings

from core import jobs
from core.exceptions import ApplicationError
from rlhf.datasets.services import export_directory
from rlhf.models import FineTuneRun, PreferenceExport, RewardModelRun


def looks_like_path(value: str) -> bool:
    """Whether a user's text names a file system path rather than a hub id (``org/name``)."""
    return value.startswith(("/", "~", ".")) or "\\" in value or value.count("/") != 1


def allowed_model_dir(value: str, *, field: str) -> Path:
    """The directory ``value`` names, when it lies under one of ``PICKWISE_MODEL_DIRS`` (symbolic links
    and ``..`` resolved first) and exists; otherwise an error naming ``field`` that says the same whether
    or not the directory exists, so nobody learns the server's layout through it."""
    roots = [Path(root).expanduser().resolve() for root in settings.PICKWISE_MODEL_DIRS]
    path = Path(value).expanduser()
    resolved = (path if path.is_absolute() else Path(settings.BASE_DIR) / path).resolve()
    if any(resolved == root or resolved.is_relative_to(root) for root in roots) and resolved.is_dir():
        return resolved
    allowed = ", ".join(str(root) for root in roots) or "none are configured"
    raise ApplicationError(
        f"{value!r} is not a model directory this server offers: a local model must be a directory under "
        f"PICKWISE_MODEL_DIRS ({allowed}); otherwise give a shipped preset or a hub id in the local cache.",
        field=field,
    )


def cache_dir() -> Path:
    return Path(settings.PICKWISE_MODEL_CACHE_DIR)


def reward_run_dir(run: RewardModelRun) -> Path:
    return cache_dir() / "runs" / f"reward-{run.pk}"


def reward_version_dir(run: RewardModelRun, attempt: int) -> Path:
    """Where attempt ``attempt`` puts the finished model (per attempt: a stalled earlier attempt never writes it)."""
    return cache_dir() / "reward-models" / f"reward-{run.pk}-{jobs.attempt_name(attempt)}"


def finetune_run_dir(run: FineTuneRun) -> Path:
    return cache_dir() / "runs" / f"finetune-{run.pk}"


def finetune_lora_dir(run: FineTuneRun, attempt: int) -> Path:
    """Where attempt ``attempt`` puts the finished LoRA (per attempt: a stalled earlier attempt never writes it)."""
    return cache_dir() / "loras" / f"finetune-{run.pk}-{jobs.attempt_name(attempt)}"


def eval_image_key(run: FineTuneRun, label: str, index: int, *, attempt: int) -> str:
    """Deterministic storage key of one evaluation image of one attempt (a re-run of that attempt overwrites,
    never duplicates; another attempt writes its own). The grid records the key its image is under."""
    return f"finetune-runs/{run.pk}/{jobs.attempt_name(attempt)}/{label}/{index}.png"


def export_data_path(export: PreferenceExport) -> Path:
    name = "rankings.parquet" if export.format == PreferenceExport.Format.LISTWISE else "pairs.parquet"
    return export_directory(export) / name


def run_data_path(run: RewardModelRun | FineTuneRun) -> Path:
    """The Parquet a run trains on: its export's data file, or the path it was started with."""
    if run.export is None:
        return Path(run.data_path)
    # Both export formats are in the trainer's layout (rankings.parquet: images best first, 0-based ranks).
    return export_data_path(run.export)


def copy_directory(source: Path, target: Path, *, skip: tuple[str, ...] = ("training_state",)) -> Path:
    """Copy ``source`` to ``target`` through a sibling temp directory, so ``target`` is whole or absent."""
    partial = target.with_name(f"{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns(*skip))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target
