"""What a run trains on: checks of an export or a Parquet file, and an export's captions."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from core.exceptions import ApplicationError
from rlhf.models import PreferenceExport, RunStatus
from rlhf.runs.paths import export_data_path

MIN_TRAIN_PAIRS = 8  # fewer train pairs than this cannot train anything worth registering
MAX_DDPO_PROMPTS = 1000


def check_export(export: PreferenceExport, *, formats: tuple[str, ...]) -> Path:
    if export.status != RunStatus.SUCCEEDED:
        raise ApplicationError(f"Export {export.pk} has not succeeded (it is {export.status}).", field="export")
    if export.format not in formats:
        raise ApplicationError(
            f"Export {export.pk} is in format {export.format!r}; training reads {' or '.join(formats)}.",
            field="export",
        )
    if not export.include_images:
        raise ApplicationError(f"Export {export.pk} was made without image bytes; training needs them.",
                               field="export")
    if export.storage_url:
        raise ApplicationError(
            f"Export {export.pk} is in the object store ({export.storage_url}); training reads exports from this "
            "server: export again with destination server.", field="export")
    path = export_data_path(export)
    if not path.is_file():
        raise ApplicationError(f"The files of export {export.pk} are missing ({path}).", field="export")
    if export.pairs == 0 and export.format != PreferenceExport.Format.LISTWISE:
        raise ApplicationError(f"Export {export.pk} has no pairs.", field="export")
    train = int((export.split_counts or {}).get("train", 0))
    if train < MIN_TRAIN_PAIRS:
        unit = "rankings" if export.format == PreferenceExport.Format.LISTWISE else "pairs"
        raise ApplicationError(
            f"Export {export.pk} has {train} train {unit}; training needs at least {MIN_TRAIN_PAIRS}.",
            field="export",
        )
    return path


def check_data_path(data_path: str) -> tuple[Path, str]:
    """A preference Parquet file named by trusted code (the management commands), checked like an export;
    returns it and its layout (``pairwise`` or ``listwise``)."""
    from rlhf.training.data import count_rows, table_layout  # torch: kept out of web processes

    path = Path(data_path).expanduser()
    if not path.is_file():
        raise ApplicationError(f"{data_path} is not a file.", field="data_path")
    try:
        layout = table_layout(path)
        train = count_rows(path, "train")
    except (OSError, ValueError) as exc:
        raise ApplicationError(f"{data_path} is not a preference Parquet file: {exc}", field="data_path") from None
    if train < MIN_TRAIN_PAIRS:
        raise ApplicationError(f"{data_path} has {train} train rows; training needs at least {MIN_TRAIN_PAIRS}.",
                               field="data_path")
    return path, layout


def check_sources(path: Path, *, field: str = "condition_on_source") -> None:
    """ApplicationError naming ``field`` unless every image of the preference file at ``path`` (every split:
    the run evaluates on validation and test too) is an image edit with its source image (what a reward model
    conditioned on the source trains on)."""
    from rlhf.training.data import images_without_source  # torch: kept out of web processes

    missing, images = images_without_source(path)
    if missing:
        raise ApplicationError(
            f"condition_on_source needs the source image of every image it trains and evaluates on: {missing} "
            f"of the {images} images have none (text-to-image or imported images). Train it on rankings of "
            "image edits (img2img, inpaint, outpaint), or leave condition_on_source off.", field=field)


def export_captions(export: PreferenceExport, limit: int = MAX_DDPO_PROMPTS) -> list[str]:
    """The export's distinct captions, in file order."""
    seen: dict[str, None] = {}
    for batch in pq.ParquetFile(export_data_path(export)).iter_batches(columns=["caption"], batch_size=4096):
        for caption in batch.column(0).to_pylist():
            if caption and caption not in seen:
                seen[caption] = None
                if len(seen) >= limit:
                    return list(seen)
    return list(seen)
