"""Read a task table (CSV, JSONL, Parquet or a Hugging Face dataset directory) into rows, without Django.

Each row is one task: a prompt, its candidate images (references, resolved later) and what else it
carries. Columns are matched by name, case-insensitively:

- ``prompt`` or ``caption`` (Pick-a-Pic): the prompt; ``negative_prompt`` optional.
- The task's own key: the ``key_column`` option, else ``key``, ``external_key``, ``task_key`` or
  ``ranking_id`` (Pick-a-Pic), the first present. Keys are unique in a project.
- Images, in order: an ``images`` column (a list, or names separated by ``;`` or ``|`` in CSV), or
  numbered columns ``image_<n>``, ``jpg_<n>`` (Pick-a-Pic) or ``img_<n>``; a numbered image whose
  column is missing falls back to ``image_<n>_url`` (Pick-a-Pic). A cell is image bytes (Parquet
  binary, a Hugging Face ``Image`` value), an ``s3://`` key, an ``http(s)://`` URL, or a file name
  or path (an uploaded file, an entry of the uploaded zip, or a file under the import root).
- Per image: ``model_<n>``, ``image_<n>_uid`` and an unused ``image_<n>_url`` become that image's
  provenance metadata.
- The image an editing task starts from: a ``source_image`` column (or a ``source_image`` key in a JSONL
  ``metadata`` object), any of the image references above or a ``data:image/...;base64,`` URI, or the id of
  an image already in the project. A row with a source image may list no candidates (the annotator
  generates them as edits of it); the task's ``source_image`` metadata then names the stored image.
- Every other column with a JSON value (text, numbers, booleans, lists of them) goes into the task's
  metadata (a JSONL ``metadata`` object is merged in); bytes columns are left out.

Errors carry a line and a column: the physical line for CSV (the header is line 1) and JSONL, the row
number (from 1) for Parquet and datasets. Nothing here reads an image; :mod:`.images` does.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FORMATS = ("csv", "jsonl", "parquet", "hf")
KEY_COLUMNS = ("key", "external_key", "task_key", "ranking_id")
MAX_KEY_CHARS = 200
MAX_PROMPT_CHARS = 2000
MAX_METADATA_BYTES = 20_000
_NUMBERED = re.compile(r"^(image|jpg|img)_(\d+)$")
_PER_IMAGE = (re.compile(r"^model_(\d+)$"), re.compile(r"^image_(\d+)_uid$"), re.compile(r"^image_(\d+)_url$"))

RefKind = Literal["bytes", "name", "url", "s3"]


@dataclass(frozen=True)
class ImageRef:
    """Where one candidate image is: ``value`` holds bytes for ``bytes``, else the name, URL or s3 key."""

    column: str
    kind: RefKind
    value: bytes | str
    name: str = ""  # the original name (a URL, a path; an HF Image's path) for provenance

    @property
    def label(self) -> str:
        if self.kind == "bytes":
            return self.name or f"bytes in {self.column}"
        return str(self.value)


@dataclass
class TableRow:
    line: int
    prompt: str
    negative_prompt: str = ""
    key: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    images: list[ImageRef] = field(default_factory=list)
    image_metadata: list[dict[str, Any]] = field(default_factory=list)
    source: ImageRef | None = None  # the image an editing task starts from (``source_image``)
    source_id: str = ""  # ... or the id of an image already in the project


@dataclass(frozen=True)
class RowError:
    line: int
    column: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "message": self.message}


class TableError(Exception):
    """The table as a whole cannot be read (format, header, size): nothing of it is imported."""

    def __init__(self, message: str, *, column: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.column = column


def detect_format(name: str) -> str | None:
    lower = name.lower().rstrip("/")
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith(".zip") or "." not in Path(lower).name:
        return "hf"  # a zipped or plain dataset directory
    return None


# --- cells ------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def image_ref(column: str, value: Any) -> ImageRef | None:
    """The reference a cell holds; ``None`` for an empty cell. ``ValueError`` for a value that is none."""
    if _is_missing(value):
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return ImageRef(column, "bytes", bytes(value))
    if isinstance(value, dict):  # a Hugging Face Image value, or a struct with bytes/path
        data, path = value.get("bytes"), value.get("path")
        if data:
            return ImageRef(column, "bytes", bytes(data), name=str(path or ""))
        if path:
            return image_ref(column, str(path))
        raise ValueError("the image value has neither bytes nor a path")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        lower = text.lower()
        if lower.startswith("data:"):
            return _data_uri(column, text)
        if lower.startswith("s3://"):
            return ImageRef(column, "s3", text)
        if lower.startswith(("http://", "https://")):
            return ImageRef(column, "url", text)
        if "://" in text:
            raise ValueError(f"{text[:80]!r}: only s3:// and http(s):// URLs, file names or paths are images")
        return ImageRef(column, "name", text)
    raise ValueError(f"expected image bytes, a file name, an s3:// key or an http(s) URL, not {type(value).__name__}")


def _data_uri(column: str, text: str) -> ImageRef:
    """A ``data:image/<type>;base64,<data>`` URI as bytes (the image itself is checked later)."""
    header, comma, payload = text.partition(",")
    if not comma or not header.lower().startswith("data:image/") or not header.lower().endswith(";base64"):
        raise ValueError(f"{text[:40]!r}...: a data URI must be data:image/<type>;base64,<data>")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the data URI is not valid base64") from None
    return ImageRef(column, "bytes", data, name="data URI")


def _image_id(value: Any) -> str:
    """``value`` as an image id (a UUID's text), or "" when it is not one."""
    if not isinstance(value, str):
        return ""
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        return ""


def _json_value(value: Any) -> Any:
    """``value`` as plain JSON, or ``...`` when it is not JSON (bytes, structs of bytes)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, list | tuple):
        items = [_json_value(item) for item in value]
        return ... if any(item is ... for item in items) else items
    if isinstance(value, dict):
        items = {str(k): _json_value(v) for k, v in value.items()}
        return ... if any(v is ... for v in items.values()) else items
    return ...


# --- columns ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Which columns mean what, decided once from the header."""

    prompt: str
    negative: str | None
    key: str | None
    images: str | None  # one list column
    numbered: tuple[tuple[int, str | None, str | None], ...]  # (index, image column, url column)
    per_image: dict[str, tuple[int, str]]  # column -> (image index, metadata name)
    consumed: frozenset[str]
    source: str | None = None  # the source image column (editing tasks)


def layout_for(columns: list[str], *, key_column: str = "") -> Layout:
    lower = {c.lower(): c for c in columns}
    if len(lower) != len(columns):
        raise TableError("two columns have the same name (ignoring case)")
    prompt = lower.get("prompt") or lower.get("caption")
    if prompt is None:
        raise TableError(f"no 'prompt' or 'caption' column (found: {', '.join(columns) or 'none'})", column="prompt")
    negative = lower.get("negative_prompt")
    if key_column:
        key = lower.get(key_column.lower())
        if key is None:
            raise TableError(f"no key column {key_column!r} (found: {', '.join(columns)})", column=key_column)
    else:
        key = next((lower[name] for name in KEY_COLUMNS if name in lower), None)
    images = lower.get("images") or lower.get("image")
    source = lower.get("source_image")
    numbered_columns: dict[int, str] = {}
    for name, original in lower.items():
        match = _NUMBERED.match(name)
        if match:
            index = int(match.group(2))
            if index in numbered_columns:
                raise TableError(f"columns {numbered_columns[index]!r} and {original!r} both name image {index}",
                                 column=original)
            numbered_columns[index] = original
    urls = {int(m.group(1)): original for name, original in lower.items() if (m := _PER_IMAGE[2].match(name))}
    indices = sorted(set(numbered_columns) | (set(urls) if not images else set()))
    numbered = tuple((i, numbered_columns.get(i), urls.get(i) if i not in numbered_columns else None)
                     for i in indices)
    if images and numbered_columns:
        raise TableError(f"both an {images!r} column and numbered image columns; use one of them", column=images)
    if not images and not numbered and not source and "metadata" not in lower:
        raise TableError("no image columns: give 'images' (a list) or numbered 'image_0', 'image_1', ... "
                         "(Pick-a-Pic: 'jpg_0', 'jpg_1' or 'image_0_url', ...), or for an editing task a "
                         "'source_image'", column="images")
    used_urls = {url for _, _, url in numbered if url}
    per_image: dict[str, tuple[int, str]] = {}
    for name, original in lower.items():
        for pattern, meta in zip(_PER_IMAGE, ("model", "uid", "url"), strict=True):
            match = pattern.match(name)
            if match and original not in used_urls:
                per_image[original] = (int(match.group(1)), meta)
    consumed = {prompt, *(c for c in (negative, key, images, source) if c)}
    consumed |= {c for _, c, _ in numbered if c} | used_urls | set(per_image)
    return Layout(prompt=prompt, negative=negative, key=key, images=images, numbered=numbered,
                  per_image=per_image, consumed=frozenset(consumed), source=source)


def row_from_record(record: dict[str, Any], layout: Layout, *, line: int, errors: list[RowError],
                    list_separators: bool = False) -> TableRow | None:
    """One task from one record (a dict of column -> value); problems go to ``errors``."""
    before = len(errors)

    def fail(column: str, message: str) -> None:
        errors.append(RowError(line, column, message))

    prompt = record.get(layout.prompt)
    if not isinstance(prompt, str) or not prompt.strip():
        fail(layout.prompt, "the prompt is empty" if _is_missing(prompt) or isinstance(prompt, str)
             else "the prompt must be text")
        prompt = ""
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        fail(layout.prompt, f"the prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
    negative = record.get(layout.negative) if layout.negative else ""
    negative = "" if _is_missing(negative) else negative
    if not isinstance(negative, str):
        fail(layout.negative or "negative_prompt", "the negative prompt must be text")
        negative = ""
    key = ""
    if layout.key:
        raw = record.get(layout.key)
        if not _is_missing(raw):
            if isinstance(raw, float) and raw.is_integer():
                raw = int(raw)
            if isinstance(raw, bool) or not isinstance(raw, str | int):
                fail(layout.key, "a key must be text or a whole number")
            else:
                key = str(raw).strip()
                if len(key) > MAX_KEY_CHARS:
                    fail(layout.key, f"a key is at most {MAX_KEY_CHARS} characters")
    refs: list[ImageRef] = []
    image_meta: list[dict[str, Any]] = []
    if layout.images:
        cell = record.get(layout.images)
        if isinstance(cell, str) and list_separators:
            cell = [part for part in re.split(r"[;|]", cell) if part.strip()]
        elif isinstance(cell, str | bytes | dict):
            cell = [cell]
        if _is_missing(cell) if not isinstance(cell, list) else not cell:
            fail(layout.images, "missing image: the row lists no images")
            cell = []
        if not isinstance(cell, list):
            cell = list(cell) if hasattr(cell, "__iter__") else [cell]
        for position, value in enumerate(cell):
            column = f"{layout.images}[{position}]"
            try:
                ref = image_ref(column, value)
            except ValueError as exc:
                fail(column, str(exc))
                continue
            if ref is None:
                fail(column, "missing image: the cell is empty")
                continue
            refs.append(ref)
            image_meta.append({"column": column})
    else:
        for index, column, url_column in layout.numbered:
            value = record.get(column) if column else None
            source = column
            if _is_missing(value) and url_column:
                value, source = record.get(url_column), url_column
            source = source or url_column or f"image_{index}"
            try:
                ref = image_ref(source, value)
            except ValueError as exc:
                fail(source, str(exc))
                continue
            if ref is None:
                fail(source, "missing image: the cell is empty")
                continue
            refs.append(ref)
            image_meta.append({"column": source})
        for column, (index, meta) in layout.per_image.items():
            value = _json_value(record.get(column))
            position = next((p for p, (i, _, _) in enumerate(layout.numbered) if i == index), None)
            if position is not None and position < len(image_meta) and value not in (None, ...):
                image_meta[position][meta] = value
    metadata: dict[str, Any] = {}
    for column, value in record.items():
        if column in layout.consumed:
            continue
        if column == "metadata" and isinstance(value, dict):
            continue
        plain = _json_value(value)
        if plain is not ... and plain is not None:
            metadata[column] = plain
    extra = record.get("metadata")
    source_column, source_value = layout.source, record.get(layout.source) if layout.source else None
    if isinstance(extra, dict) and "source_image" in extra:
        extra = dict(extra)
        value = extra.pop("source_image")
        if source_column is None or _is_missing(source_value):
            source_column, source_value = "metadata.source_image", value
    source, source_id = None, ""
    if source_column is not None and not _is_missing(source_value):
        source_id = _image_id(source_value)
        if not source_id:
            try:
                source = image_ref(source_column, source_value)
            except ValueError as exc:
                fail(source_column, str(exc))
    if isinstance(extra, dict) and "metadata" not in layout.consumed:
        plain = _json_value(extra)
        if plain is ...:
            fail("metadata", "metadata must be a JSON object of text, numbers and lists")
        else:
            metadata.update(plain)
    if len(json.dumps(metadata, default=str)) > MAX_METADATA_BYTES:
        fail("metadata", f"the metadata columns hold more than {MAX_METADATA_BYTES:,} bytes of JSON")
    if len(errors) != before and not refs and source is None:
        return None
    return TableRow(line=line, prompt=prompt, negative_prompt=negative, key=key, metadata=metadata,
                    images=refs, image_metadata=image_meta, source=source, source_id=source_id)


# --- readers ----------------------------------------------------------------------------------


@dataclass
class TableReader:
    """Rows of a table file or dataset directory, read lazily (Parquet and datasets in batches)."""

    path: Path
    fmt: str
    key_column: str = ""
    max_rows: int = 100_000
    errors: list[RowError] = field(default_factory=list)
    layout: Layout | None = None

    def count(self) -> int:
        """How many data rows there are (cheap: no image is read)."""
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            return sum(pq.ParquetFile(str(f)).metadata.num_rows for f in self._parquet_files())
        if self.fmt == "hf":
            dataset = self._dataset()
            if dataset is None:
                import pyarrow.parquet as pq

                return sum(pq.ParquetFile(str(f)).metadata.num_rows for f in self._parquet_files())
            return len(dataset)
        with self.path.open("rb") as handle:
            return max(sum(1 for line in handle if line.strip()) - (1 if self.fmt == "csv" else 0), 0)

    def rows(self) -> Iterator[TableRow]:
        reader = {"csv": self._csv, "jsonl": self._jsonl, "parquet": self._parquet, "hf": self._hf}.get(self.fmt)
        if reader is None:
            raise TableError(f"unknown format {self.fmt!r}; expected one of {', '.join(FORMATS)}")
        for seen, row in enumerate(reader(), start=1):
            if seen > self.max_rows:
                raise TableError(f"too many rows: at most {self.max_rows:,} tasks per import")
            if row is not None:
                yield row

    # CSV: a header row; cells are text (images as names, paths, keys or URLs).
    def _csv(self) -> Iterator[TableRow | None]:
        with self.path.open("r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            try:
                header = [c.strip() for c in next(reader)]
            except StopIteration:
                raise TableError("the file is empty; expected a header row with a 'prompt' column") from None
            except (csv.Error, UnicodeDecodeError) as exc:
                raise TableError(f"line 1: unreadable header row: {exc}") from None
            self.layout = layout_for(header, key_column=self.key_column)
            while True:
                line = reader.line_num + 1
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except UnicodeDecodeError as exc:
                    raise TableError(f"line {line}: not valid UTF-8 ({exc.reason}); save the file as UTF-8") from None
                except csv.Error as exc:
                    raise TableError(f"line {line}: malformed CSV: {exc}") from None
                if not cells or all(not c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    self.errors.append(RowError(line, "", f"expected {len(header)} columns, found {len(cells)}"))
                    yield None
                    continue
                yield row_from_record(dict(zip(header, cells, strict=True)), self.layout, line=line,
                                      errors=self.errors, list_separators=True)

    def _jsonl(self) -> Iterator[TableRow | None]:
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    self.errors.append(RowError(number, "", f"not valid UTF-8 (byte {exc.start + 1})"))
                    yield None
                    continue
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    self.errors.append(RowError(number, "", f"invalid JSON: {exc.msg} (column {exc.colno})"))
                    yield None
                    continue
                if not isinstance(record, dict):
                    self.errors.append(RowError(number, "", "each line must be a JSON object"))
                    yield None
                    continue
                try:
                    layout = layout_for(list(record), key_column=self.key_column)
                except TableError as exc:
                    self.errors.append(RowError(number, exc.column, exc.message))
                    yield None
                    continue
                if self.layout is None:
                    self.layout = layout
                yield row_from_record(record, layout, line=number, errors=self.errors)

    def _parquet_files(self) -> list[Path]:
        if self.path.is_dir():
            files = sorted(self.path.rglob("*.parquet"))
            if not files:
                raise TableError("the folder holds no .parquet file")
            return files
        return [self.path]

    def _parquet(self) -> Iterator[TableRow | None]:
        import pyarrow.parquet as pq

        number = 0
        for path in self._parquet_files():
            try:
                handle = pq.ParquetFile(str(path))
            except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
                raise TableError(f"{path.name} is not a readable Parquet file: {exc}") from None
            layout = layout_for(handle.schema_arrow.names, key_column=self.key_column)
            self.layout = self.layout or layout
            for batch in handle.iter_batches(batch_size=64):
                for record in batch.to_pylist():
                    number += 1
                    yield row_from_record(record, layout, line=number, errors=self.errors)

    def _dataset(self) -> Any:
        if not hasattr(self, "_loaded"):
            if self.path.is_dir() and not (self.path / "dataset_info.json").exists() and not (
                self.path / "dataset_dict.json"
            ).exists() and any(self.path.rglob("*.parquet")):
                self._loaded = None  # saved Parquet files: read as Parquet
                return None
            import datasets  # lazy: a second to import, and only this format needs it

            try:
                loaded = datasets.load_from_disk(str(self.path))
            except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ... for a bad folder
                raise TableError(f"not a Hugging Face dataset saved with save_to_disk: {exc}") from None
            if isinstance(loaded, datasets.DatasetDict):
                split = "train" if "train" in loaded else next(iter(loaded), None)
                if split is None:
                    raise TableError("the dataset has no split")
                loaded = loaded[split]
            for name, feature in loaded.features.items():
                if isinstance(feature, datasets.Image):
                    loaded = loaded.cast_column(name, datasets.Image(decode=False))
            self._loaded = loaded
        return self._loaded

    def _hf(self) -> Iterator[TableRow | None]:
        dataset = self._dataset()
        if dataset is None:
            yield from self._parquet()
            return
        layout = layout_for(list(dataset.column_names), key_column=self.key_column)
        self.layout = layout
        number = 0
        for batch in dataset.iter(batch_size=64):
            names = list(batch)
            for values in zip(*(batch[name] for name in names), strict=True):
                number += 1
                yield row_from_record(dict(zip(names, values, strict=True)), layout, line=number,
                                      errors=self.errors)
