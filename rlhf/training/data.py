"""Streaming readers for preference exports (Parquet) and the torch datasets built on them.

Two table layouts are read, both streamed with ``pyarrow.parquet.ParquetFile.iter_batches`` (one record
batch at a time, never the whole file):

* Pairwise, the Pick-a-Pic v2 schema: ``caption`` (str), ``jpg_0``/``jpg_1`` (PNG or JPEG bytes),
  ``label_0``/``label_1`` (1/0, 0/1, or 0.5/0.5 for a tie), ``model_0``/``model_1`` (str), ``weight``
  (float, default 1), ``split`` ("train"/"validation"/"test"), ``prompt_id``.
* Listwise: ``prompt`` (or ``caption``) (str), ``images`` (list of image bytes, best first), ``ranks``
  (list of int, 0 = best, tied images share a rank), optional ``models`` (list of str), ``weight``,
  ``split``, ``prompt_id``.

Both are read into the same :class:`RankedList` record: a pair is a list of two images whose ranks come
from the labels (a tie is ``[0, 0]``) and which keeps its soft ``label_0``.

Image-editing rows (img2img, inpaint, outpaint) also carry, per image, the source image it edits and the
mask it repainted (pairwise ``source_0``/``source_1``, ``mask_0``/``mask_1``, ``edit_0``/``edit_1``;
listwise ``sources``, ``masks``, ``edits``, parallel to ``images``): ``RankedList.sources``, ``masks`` and
``edits`` (the edit's provenance JSON), None / "" for a text-to-image image. A file without those columns
reads as all text to image.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from rlhf.training.reward_base import MissingSourceError

Split = Literal["train", "validation", "test"]
PAIRWISE_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "model_0", "model_1")
LISTWISE_COLUMNS = ("images", "ranks")
READ_BATCH_ROWS = 256  # rows per Arrow record batch while streaming


@dataclass(frozen=True)
class RankedList:
    caption: str
    images: list[bytes]  # encoded image bytes
    ranks: list[int]  # 0 = best; equal ranks are ties
    weight: float = 1.0
    prompt_id: str = ""
    models: list[str] = field(default_factory=list)
    label_0: float | None = None  # pairwise rows only: probability that image 0 was preferred
    sources: list[bytes | None] = field(default_factory=list)  # per image: the edited source's bytes ([]: none)
    masks: list[bytes | None] = field(default_factory=list)  # per image: the inpainting mask's bytes
    edits: list[str] = field(default_factory=list)  # per image: the edit's provenance JSON ("" for text to image)

    def source_of(self, index: int) -> bytes | None:
        return self.sources[index] if index < len(self.sources) else None

    def mask_of(self, index: int) -> bytes | None:
        return self.masks[index] if index < len(self.masks) else None

    def edit_of(self, index: int) -> dict[str, Any]:
        """Image ``index``'s edit provenance ({} for text to image)."""
        raw = self.edits[index] if index < len(self.edits) else ""
        return json.loads(raw) if raw else {}

    @property
    def is_tie(self) -> bool:
        return len(set(self.ranks)) < len(self.ranks)


def table_layout(path: Path) -> Literal["pairwise", "listwise"]:
    names = set(pq.ParquetFile(path).schema_arrow.names)
    if set(PAIRWISE_COLUMNS) <= names:
        return "pairwise"
    if set(LISTWISE_COLUMNS) <= names and names & {"prompt", "caption"}:
        return "listwise"
    raise ValueError(
        f"{path}: columns {sorted(names)} match neither the pairwise schema {PAIRWISE_COLUMNS} "
        f"nor the listwise schema {LISTWISE_COLUMNS} + prompt"
    )


def iter_rows(
    path: Path, split: Split | None = None, batch_rows: int = READ_BATCH_ROWS
) -> Iterator[RankedList]:
    """Stream the rows of ``split`` (all rows when None) as :class:`RankedList` records."""
    path = Path(path)
    layout = table_layout(path)
    parquet = pq.ParquetFile(path)
    names = set(parquet.schema_arrow.names)
    for batch in parquet.iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            if split is not None and "split" in names and row["split"] != split:
                continue
            weight = float(row["weight"]) if row.get("weight") is not None else 1.0
            prompt_id = str(row.get("prompt_id") or "")
            if layout == "pairwise":
                label_0 = float(row["label_0"])
                ranks = [0, 0] if label_0 == 0.5 else ([0, 1] if label_0 > 0.5 else [1, 0])
                yield RankedList(
                    caption=row["caption"],
                    images=[row["jpg_0"], row["jpg_1"]],
                    ranks=ranks,
                    weight=weight,
                    prompt_id=prompt_id or row["caption"],
                    models=[str(row["model_0"]), str(row["model_1"])],
                    label_0=label_0,
                    sources=[row.get("source_0"), row.get("source_1")],
                    masks=[row.get("mask_0"), row.get("mask_1")],
                    edits=[str(row.get("edit_0") or ""), str(row.get("edit_1") or "")],
                )
            else:
                caption = row["prompt"] if "prompt" in row else row["caption"]
                yield RankedList(
                    caption=caption,
                    images=list(row["images"]),
                    ranks=[int(r) for r in row["ranks"]],
                    weight=weight,
                    prompt_id=prompt_id or caption,
                    models=[str(m) for m in row.get("models") or []],
                    sources=list(row.get("sources") or []),
                    masks=list(row.get("masks") or []),
                    edits=[str(e or "") for e in row.get("edits") or []],
                )


def count_rows(path: Path, split: Split | None = None) -> int:
    """Rows in ``split``, reading only the ``split`` column."""
    parquet = pq.ParquetFile(path)
    if split is None or "split" not in parquet.schema_arrow.names:
        return int(parquet.metadata.num_rows)
    return sum(
        sum(1 for s in batch.column(0).to_pylist() if s == split)
        for batch in parquet.iter_batches(columns=["split"], batch_size=65536)
    )


def images_without_source(path: Path, split: Split | None = None) -> tuple[int, int]:
    """(images without a source image, images) in ``split``: what a reward model conditioned on the source
    cannot score. Reads only the source columns (pairwise ``source_0``/``source_1``, listwise ``sources``);
    a file without them has no sources at all."""
    parquet = pq.ParquetFile(path)
    names = set(parquet.schema_arrow.names)
    layout = table_layout(Path(path))
    wanted = ["source_0", "source_1"] if layout == "pairwise" else ["sources"]
    with_split = split is not None and "split" in names
    missing = total = 0
    if not set(wanted) <= names:  # no edit columns: every image lacks a source
        counted = ["label_0"] if layout == "pairwise" else ["ranks"]
        for batch in parquet.iter_batches(columns=counted + (["split"] if with_split else []), batch_size=4096):
            for row in batch.to_pylist():
                if not with_split or row["split"] == split:
                    n = 2 if layout == "pairwise" else len(row["ranks"] or [])
                    missing, total = missing + n, total + n
        return missing, total
    for batch in parquet.iter_batches(columns=wanted + (["split"] if with_split else []), batch_size=256):
        for row in batch.to_pylist():
            if with_split and row["split"] != split:
                continue
            sources = [row["source_0"], row["source_1"]] if layout == "pairwise" else list(row["sources"] or [])
            missing += sum(1 for s in sources if not s)
            total += len(sources)
    return missing, total


def prompt_counts(path: Path, split: Split | None = None) -> Counter[str]:
    """Rows per prompt id in ``split`` (falls back to the caption when there is no prompt_id column)."""
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    key = "prompt_id" if "prompt_id" in names else ("caption" if "caption" in names else "prompt")
    columns = [key, "split"] if split is not None and "split" in names else [key]
    counts: Counter[str] = Counter()
    for batch in parquet.iter_batches(columns=columns, batch_size=65536):
        keys = batch.column(0).to_pylist()
        splits = batch.column(1).to_pylist() if len(columns) == 2 else [split] * len(keys)
        counts.update(str(k) for k, s in zip(keys, splits, strict=True) if s == split or split is None)
    return counts


def decode_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


class PreferenceDataset(IterableDataset[RankedList]):
    """Streams one split of an export, shuffled through a bounded buffer.

    ``set_epoch`` reseeds the shuffle; ``skip`` drops the first rows of that epoch's order (used when
    resuming mid-epoch). Rows are sharded across DataLoader workers and across processes
    (``rank``/``world_size``) by position; with several processes the epoch's last incomplete group of
    rows is dropped, so every process reads as many rows.
    """

    def __init__(
        self,
        path: Path,
        split: Split,
        *,
        shuffle_buffer: int = 0,
        seed: int = 0,
        drop_ties: bool = False,
        per_prompt_weighting: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.path = Path(path)
        self.split: Split = split
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.drop_ties = drop_ties
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip = 0
        self._prompt_counts = prompt_counts(self.path, split) if per_prompt_weighting else None

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _rows(self) -> Iterator[RankedList]:
        for row in iter_rows(self.path, self.split):
            if self.drop_ties and row.is_tie:
                continue
            if self._prompt_counts is not None:
                n = self._prompt_counts[row.prompt_id] or 1
                row = RankedList(**{**row.__dict__, "weight": row.weight / n})
            yield row

    def _shuffled(self) -> Iterator[RankedList]:
        if self.shuffle_buffer <= 1:
            yield from self._rows()
            return
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        buffer: list[RankedList] = []
        for row in self._rows():
            buffer.append(row)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[RankedList]:
        worker = get_worker_info()
        n_workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        shards = self.world_size * n_workers
        shard = self.rank * n_workers + worker_id
        held: RankedList | None = None
        for i, row in enumerate(self._shuffled()):
            if i < self.skip:
                continue
            if i % shards == shard:
                held = row
            # one process: every row of its shard; several: a row once its group is whole (every process has one)
            if held is not None and (self.world_size == 1 or i % shards == shards - 1):
                yield held
                held = None
        # Across processes, an epoch's last incomplete group (fewer than world_size * workers rows) is
        # dropped: every process must take the same number of steps, or their gradient exchange would hang.


@dataclass
class RankedBatch:
    """A collated batch: the images of all lists flattened, with padded per-list ranks."""

    captions: list[str]
    pixel_values: torch.Tensor  # (M, 3, H, W), M = total images in the batch
    list_index: torch.Tensor  # (M,) which list each image belongs to
    slot_index: torch.Tensor  # (M,) position of each image inside its list
    ranks: torch.Tensor  # (B, N) long, -1 marks padding
    weight: torch.Tensor  # (B,)
    label_0: torch.Tensor | None  # (B,) soft labels when every list is a pair from the pairwise table
    source_values: torch.Tensor | None = None  # (M, 3, H, W): each image's source (collated with_sources)

    def to(self, device: torch.device) -> RankedBatch:
        return RankedBatch(
            captions=self.captions,
            pixel_values=self.pixel_values.to(device),
            list_index=self.list_index.to(device),
            slot_index=self.slot_index.to(device),
            ranks=self.ranks.to(device),
            weight=self.weight.to(device),
            label_0=None if self.label_0 is None else self.label_0.to(device),
            source_values=None if self.source_values is None else self.source_values.to(device),
        )


def collate_ranked(
    rows: Sequence[RankedList], transform: Callable[[Image.Image], torch.Tensor], *, with_sources: bool = False
) -> RankedBatch:
    """Collate lists; ``with_sources`` also decodes each image's source image (MissingSourceError, naming the
    row's prompt, for an image without one)."""
    n_max = max(len(r.images) for r in rows)
    ranks = torch.full((len(rows), n_max), -1, dtype=torch.long)
    pixels, sources, list_index, slot_index = [], [], [], []
    for i, row in enumerate(rows):
        ranks[i, : len(row.ranks)] = torch.tensor(row.ranks)
        for j, data in enumerate(row.images):
            pixels.append(transform(decode_image(data)))
            if with_sources:
                source = row.source_of(j)
                if not source:
                    raise MissingSourceError(
                        f"image {j} of the ranking of prompt {row.caption!r} has no source image; a reward model "
                        "conditioned on the source (condition_on_source) trains on image-editing rankings only")
                sources.append(transform(decode_image(source)))
            list_index.append(i)
            slot_index.append(j)
    labels = [r.label_0 for r in rows]
    return RankedBatch(
        captions=[r.caption for r in rows],
        pixel_values=torch.stack(pixels),
        list_index=torch.tensor(list_index),
        slot_index=torch.tensor(slot_index),
        ranks=ranks,
        weight=torch.tensor([r.weight for r in rows], dtype=torch.float32),
        label_0=None if any(lbl is None for lbl in labels) else torch.tensor(labels, dtype=torch.float32),
        source_values=torch.stack(sources) if with_sources else None,
    )
