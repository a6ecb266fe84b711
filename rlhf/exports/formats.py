"""Streaming writers for the export formats. Rows arrive in batches; nothing holds the whole table.

- ``pickapic``: Pick-a-Pic v2 schema Parquet (``caption``, ``jpg_0``, ``jpg_1``, ``label_0``,
  ``label_1``, ``model_0``, ``model_1``, user and ranking ids) plus our provenance columns;
  diffusers' Diffusion-DPO example reads it as is.
- ``listwise``: one row per ranking, images in ranked order with their rank and tie group.
- ``jsonl``: pairs with image paths or URLs, one JSON object a line.
- ``hf``: a Hugging Face ``datasets`` dataset saved to disk, images as the ``Image`` feature.
- ``trl``: trl's preference format (``prompt`` / ``chosen`` / ``rejected``), images as ``Image``.

Image-editing candidates (img2img, inpaint, outpaint) carry their edit in every format: the kind, the source
image and the mask (bytes where the export holds image bytes, storage paths always) and the edit's
provenance as JSON (source and mask sha256, strength, outpaint box). Text-to-image and imported images have
an empty kind and null sources and masks.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

ExportFormat = Literal["pickapic", "listwise", "jsonl", "hf", "trl"]
FORMATS: tuple[str, ...] = ("pickapic", "listwise", "jsonl", "hf", "trl")

PAIR_SCHEMA = pa.schema(
    [
        ("caption", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
        ("model_0", pa.string()),
        ("model_1", pa.string()),
        ("user_id", pa.int64()),
        ("ranking_id", pa.int64()),
        ("image_0_uid", pa.string()),
        ("image_1_uid", pa.string()),
        ("image_0_url", pa.string()),  # the permission-checked app URL of the image
        ("image_1_url", pa.string()),
        ("image_0_path", pa.string()),  # the storage key (relative to MEDIA_ROOT or the bucket)
        ("image_1_path", pa.string()),
        ("are_different", pa.bool_()),
        ("has_label", pa.bool_()),
        ("best_image_uid", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        # provenance and export bookkeeping
        ("prompt_id", pa.string()),
        ("task_id", pa.int64()),
        ("template_version_id", pa.int64()),
        ("model_version_id_0", pa.int64()),
        ("model_version_id_1", pa.int64()),
        ("seed_0", pa.int64()),
        ("seed_1", pa.int64()),
        ("params_0", pa.string()),
        ("params_1", pa.string()),
        ("sha256_0", pa.string()),
        ("sha256_1", pa.string()),
        # "generated", or "external" for an imported image (no seed or parameters to regenerate it)
        ("origin_0", pa.string()),
        ("origin_1", pa.string()),
        ("task_key", pa.string()),  # the importer's own key of the task ("" when none)
        ("task_metadata", pa.string()),  # JSON of the task's metadata columns
        ("tie", pa.bool_()),
        ("weight", pa.float64()),
        ("split", pa.string()),
        # how every annotator of the task judged this pair, and the task's agreement
        ("votes_0", pa.int32()),
        ("votes_1", pa.int32()),
        ("votes_tie", pa.int32()),
        ("majority_uid", pa.string()),
        ("task_agreement", pa.float64()),
        # image editing: "" / img2img / inpaint / outpaint, the provenance JSON, the source and mask
        ("edit_kind_0", pa.string()),
        ("edit_kind_1", pa.string()),
        ("edit_0", pa.string()),
        ("edit_1", pa.string()),
        ("source_0", pa.binary()),  # null without image bytes, or for a text-to-image image
        ("source_1", pa.binary()),
        ("mask_0", pa.binary()),  # null unless an inpainting (and with image bytes)
        ("mask_1", pa.binary()),
        ("source_path_0", pa.string()),  # storage keys ("" when none)
        ("source_path_1", pa.string()),
        ("mask_path_0", pa.string()),
        ("mask_path_1", pa.string()),
    ]
)

# The image-editing columns of a pair row holding bytes (left out of the JSONL format, like the images).
EDIT_BYTES_COLUMNS = ("source_0", "source_1", "mask_0", "mask_1")

IMAGE_STRENGTH_SCHEMA = pa.schema(
    [
        ("image_uid", pa.string()),
        ("bt_strength", pa.float64()),
        ("bt_log_strength", pa.float64()),
        ("comparisons", pa.int64()),
    ]
)

# One row per ranking; the list columns are parallel, best image first. ``images`` and ``ranks``
# are what rlhf.training.data reads for listwise (Plackett-Luce, choose-one) reward training.
LISTWISE_SCHEMA = pa.schema(
    [
        ("ranking_id", pa.int64()),
        ("task_id", pa.int64()),
        ("prompt_id", pa.string()),
        ("caption", pa.string()),
        ("user_id", pa.int64()),
        ("template_version_id", pa.int64()),
        ("images", pa.list_(pa.binary())),  # image bytes (null entries when exported without bytes)
        ("ranks", pa.list_(pa.int32())),  # 0 = best; tied images share a rank; unranked images rank last
        ("ranked", pa.list_(pa.bool_())),  # false for images the annotator left unranked
        ("image_uids", pa.list_(pa.string())),
        ("image_urls", pa.list_(pa.string())),
        ("image_paths", pa.list_(pa.string())),
        ("models", pa.list_(pa.string())),
        ("model_version_ids", pa.list_(pa.int64())),
        ("seeds", pa.list_(pa.int64())),
        ("sha256s", pa.list_(pa.string())),
        ("origins", pa.list_(pa.string())),
        ("task_key", pa.string()),
        ("task_metadata", pa.string()),
        ("has_ties", pa.bool_()),
        ("rationale", pa.string()),
        ("ratings", pa.string()),  # JSON {component: {image_uid: value}}
        ("flags", pa.string()),  # JSON {component: {image_uid: [flag, ...]}}
        ("weight", pa.float64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("split", pa.string()),
        # image editing, parallel to ``images`` (see PAIR_SCHEMA's edit columns)
        ("edit_kinds", pa.list_(pa.string())),
        ("edits", pa.list_(pa.string())),
        ("sources", pa.list_(pa.binary())),
        ("masks", pa.list_(pa.binary())),
        ("source_paths", pa.list_(pa.string())),
        ("mask_paths", pa.list_(pa.string())),
    ]
)


class ParquetRowWriter:
    """Append rows (dicts) to a Parquet file, one row group per ``row_group_size`` rows.

    ``path`` is a file on disk or an open binary output stream (an object store's streamed upload, which the
    caller closes)."""

    def __init__(self, path: Path | pa.NativeFile, schema: pa.Schema, *, row_group_size: int = 10_000) -> None:
        self.path = path
        self.schema = schema
        self.row_group_size = row_group_size
        self.rows = 0
        self._buffer: list[dict[str, Any]] = []
        self._writer = pq.ParquetWriter(str(path) if isinstance(path, Path) else path, schema, compression="zstd")

    def write(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.row_group_size:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            buffer = self._buffer
            columns = [pa.array([row.get(f.name) for row in buffer], type=f.type) for f in self.schema]
            self._writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
            self.rows += len(self._buffer)
            self._buffer = []

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def __enter__(self) -> ParquetRowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonlWriter:
    """One JSON object a line, into a file on disk or an open binary output stream (which the caller closes)."""

    def __init__(self, path: Path | pa.NativeFile) -> None:
        self.path = path
        self.rows = 0
        self._file: Any = path.open("wb") if isinstance(path, Path) else None
        self._write = (self._file or path).write

    def write(self, row: dict[str, Any]) -> None:
        self._write((json.dumps(row, ensure_ascii=False, default=str) + "\n").encode())
        self.rows += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def jsonl_row(pair_row: dict[str, Any]) -> dict[str, Any]:
    """A pair row without image bytes, for the lightweight JSONL format."""
    return {k: v for k, v in pair_row.items() if k not in ("jpg_0", "jpg_1", *EDIT_BYTES_COLUMNS)}


def _optional_image(path: str, image_loader: Callable[[str], bytes]) -> dict[str, Any] | None:
    """An ``Image`` feature value for an edit's source or mask, None where there is none."""
    return {"bytes": image_loader(path), "path": None} if path else None


def save_hf_pairs(
    rows: Callable[[], Iterator[dict[str, Any]]], directory: Path, *, image_loader: Callable[[str], bytes]
) -> int:
    """A ``datasets`` dataset with the pair columns, images as the ``Image`` feature, saved to disk."""
    import datasets  # lazy: the datasets library costs a second to import, and only the hf format needs it

    features = datasets.Features(
        {
            "caption": datasets.Value("string"),
            "image_0": datasets.Image(),
            "image_1": datasets.Image(),
            "label_0": datasets.Value("float64"),
            "label_1": datasets.Value("float64"),
            "model_0": datasets.Value("string"),
            "model_1": datasets.Value("string"),
            "image_0_uid": datasets.Value("string"),
            "image_1_uid": datasets.Value("string"),
            "origin_0": datasets.Value("string"),
            "origin_1": datasets.Value("string"),
            "task_key": datasets.Value("string"),
            "ranking_id": datasets.Value("int64"),
            "user_id": datasets.Value("int64"),
            "tie": datasets.Value("bool"),
            "weight": datasets.Value("float64"),
            "split": datasets.Value("string"),
            "edit_kind_0": datasets.Value("string"),
            "edit_kind_1": datasets.Value("string"),
            "edit_0": datasets.Value("string"),
            "edit_1": datasets.Value("string"),
            "source_0": datasets.Image(),
            "source_1": datasets.Image(),
            "mask_0": datasets.Image(),
            "mask_1": datasets.Image(),
        }
    )

    def generate() -> Iterator[dict[str, Any]]:
        for row in rows():
            yield {
                **{k: row[k] for k in features if k in row},
                "image_0": {"bytes": image_loader(row["image_0_path"]), "path": None},
                "image_1": {"bytes": image_loader(row["image_1_path"]), "path": None},
                **{f"{part}_{side}": _optional_image(row[f"{part}_path_{side}"], image_loader)
                   for part in ("source", "mask") for side in ("0", "1")},
            }

    return _save_generated(generate, features, directory)


def save_trl_preferences(
    rows: Callable[[], Iterator[dict[str, Any]]], directory: Path, *, image_loader: Callable[[str], bytes]
) -> int:
    """trl's preference format: ``prompt``, ``chosen``, ``rejected`` (images), strict pairs only; an edit's
    ``edit_kind``, ``source`` and ``mask`` are the chosen image's (the conditioning of both, as a UI shows them)."""
    import datasets  # lazy: the datasets library costs a second to import, and only the trl format needs it

    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "chosen": datasets.Image(),
            "rejected": datasets.Image(),
            "weight": datasets.Value("float64"),
            "split": datasets.Value("string"),
            "edit_kind": datasets.Value("string"),
            "source": datasets.Image(),
            "mask": datasets.Image(),
        }
    )

    def generate() -> Iterator[dict[str, Any]]:
        for row in rows():
            if row["tie"]:
                continue
            chosen, rejected = ("0", "1") if row["label_0"] > row["label_1"] else ("1", "0")
            yield {
                "prompt": row["caption"],
                "chosen": {"bytes": image_loader(row[f"image_{chosen}_path"]), "path": None},
                "rejected": {"bytes": image_loader(row[f"image_{rejected}_path"]), "path": None},
                "weight": row["weight"],
                "split": row["split"],
                "edit_kind": row[f"edit_kind_{chosen}"],
                "source": _optional_image(row[f"source_path_{chosen}"], image_loader),
                "mask": _optional_image(row[f"mask_path_{chosen}"], image_loader),
            }

    return _save_generated(generate, features, directory)


def _save_generated(generate: Callable[[], Iterator[dict[str, Any]]], features: Any, directory: Path) -> int:
    import datasets  # lazy: the datasets library costs a second to import, and only the hf format needs it

    if next(generate(), None) is None:
        dataset = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    else:
        # The generator streams rows into Arrow files on disk; its cache lives beside the export.
        cache = directory.parent / f".{directory.name}-cache"
        dataset = datasets.Dataset.from_generator(generate, features=features, cache_dir=str(cache))
        dataset.save_to_disk(str(directory))
        shutil.rmtree(cache, ignore_errors=True)
        return len(dataset)
    dataset.save_to_disk(str(directory))
    return len(dataset)
