"""Preference exports (``/api/exports/``): start, wait, download, open as pandas or ``datasets``.

An export is an immutable snapshot, so a downloaded one is kept in the cache directory
(``$PICKWISE_CACHE_DIR``, default ``~/.cache/pickwise``) under its id and content hash and opened from
there the next time.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from pickwise_client import _wait
from pickwise_client._base import Resource, only_given
from pickwise_client.errors import ConfigurationError, JobFailedError, PickwiseError
from pickwise_client.types import FINISHED_STATUSES, Export

# The main table of each format, inside the export's folder.
MAIN_TABLE: dict[str, str] = {
    "pickapic": "pairs.parquet",
    "listwise": "rankings.parquet",
    "jsonl": "pairs.jsonl",
    "hf": "dataset",
    "trl": "dataset",
}
CHUNK = 1024 * 1024


class Exports(Resource):
    """Preference datasets made from a project's rankings (ML engineers and project admins)."""

    def list(self, *, project: int | None = None) -> Iterator[Export]:
        return cast(Iterator[Export], self._http.paginate("api/exports/", {"project": project}))

    def get(self, export: int) -> Export:
        return cast(Export, self._http.get(f"api/exports/{int(export)}/"))

    def create(
        self,
        project: int,
        format: str = "pickapic",
        *,
        name: str | None = None,
        tie_policy: str | None = None,
        weight_per_prompt: bool | None = None,
        include_images: bool | None = None,
        template_versions: Sequence[int] | None = None,
        model_versions: Sequence[int] | None = None,
        annotators: Sequence[int] | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
        exclude_rejected: bool | None = None,
        min_agreement: float | None = None,
        gold: str | None = None,
        split_train: float | None = None,
        split_validation: float | None = None,
        split_test: float | None = None,
        split_seed: int | None = None,
    ) -> Export:
        """Queue an export. ``format``: pickapic, listwise, jsonl, hf or trl; ``tie_policy``: drop, soft
        or mark; ``gold``: exclude, include or only; filters left out take the server's defaults."""
        body = only_given(
            project=project, format=format, name=name, tie_policy=tie_policy, weight_per_prompt=weight_per_prompt,
            include_images=include_images, template_versions=_ints(template_versions),
            model_versions=_ints(model_versions), annotators=_ints(annotators), date_from=date_from,
            date_to=date_to, exclude_rejected=exclude_rejected, min_agreement=min_agreement, gold=gold,
            split_train=split_train, split_validation=split_validation, split_test=split_test,
            split_seed=split_seed)
        return cast(Export, self._http.post("api/exports/", body))

    def cancel(self, export: int) -> Export:
        return cast(Export, self._http.post(f"api/exports/{int(export)}/cancel/", idempotent=True))

    def wait(self, export: int, *, timeout: float | None = None, poll_interval: float = 1.0, progress: bool = True,
             raise_on_failure: bool = True) -> Export:
        """Block until the export finishes, with a progress bar; raises
        :class:`~pickwise_client.JobFailedError` when it failed or was cancelled."""
        done = _wait.poll(
            lambda: self.get(export), finished=lambda e: e["status"] in FINISHED_STATUSES,
            position=lambda e: (round(100 * e["progress"], 1), 100, _counts(e)),
            description=f"export {export}", progress=progress, timeout=timeout, poll_interval=poll_interval,
            sleep=self._context.sleep)
        if raise_on_failure and done["status"] != "succeeded":
            raise JobFailedError("export", cast(dict[str, Any], done))
        return done

    def download(self, export: int, path: str | os.PathLike[str] | None = None, *, progress: bool = True) -> Path:
        """Stream the export's zip archive to ``path`` (default ``pickwise-export-<id>.zip`` here), with a
        progress bar; the file appears only once it is complete."""
        target = Path(path) if path is not None else Path(f"pickwise-export-{int(export)}.zip")
        if target.is_dir():
            target = target / f"pickwise-export-{int(export)}.zip"
        partial = target.with_name(f".{target.name}.part")
        try:
            with self._http.stream(f"api/exports/{int(export)}/download/") as response, partial.open("wb") as out:
                size = int(response.headers.get("Content-Length", 0)) or None
                bar = _wait.progress_bar(total=size or 0, description=f"export {export}", unit="B",
                                         enabled=progress, unit_scale=True, unit_divisor=1024)
                written = 0
                try:
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
                        written += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                finally:
                    if bar is not None:
                        bar.close()
            if size is not None and written != size:
                raise PickwiseError(f"The download of export {export} stopped at {written} of {size} bytes.")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def files(self, export: int, *, progress: bool = True) -> Path:
        """The folder holding the export's files (``pairs.parquet``, ``README.md`` ...), downloaded and
        unpacked into the cache on first use."""
        info = self.get(export)
        if info["status"] in FINISHED_STATUSES - {"succeeded"}:
            raise JobFailedError("export", cast(dict[str, Any], info))
        if info["status"] != "succeeded":
            raise PickwiseError(f"Export {export} is {info['status']}; wait for it first (exports.wait).")
        folder = self._context.cache_dir / "exports" / f"{int(export)}-{info['content_hash'][:16]}"
        if folder.is_dir():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        archive = self.download(export, folder.parent / f"{folder.name}.zip", progress=progress)
        staging = folder.with_name(f".{folder.name}.unpacking")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _unzip(archive, staging)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            archive.unlink(missing_ok=True)
        return folder

    def table_path(self, export: int, *, progress: bool = True) -> Path:
        """The export's main table: ``pairs.parquet`` (pickapic), ``rankings.parquet`` (listwise),
        ``pairs.jsonl`` (jsonl) or the ``datasets`` folder (hf, trl)."""
        info = self.get(export)
        return self.files(export, progress=progress) / MAIN_TABLE[info["format"]]

    def to_pandas(self, export: int, *, split: str | None = None, table: str | None = None,
                  progress: bool = True) -> Any:
        """The export as a pandas DataFrame (the main table, or ``table="image_strengths"``); ``split``
        keeps one of train, validation, test."""
        import pandas as pd

        info = self.get(export)
        folder = self.files(export, progress=progress)
        if table is not None:
            path = folder / (table if "." in table else f"{table}.parquet")
            if not path.exists():
                raise ConfigurationError(f"Export {export} has no table {table!r}; it has "
                                         f"{', '.join(sorted(p.name for p in folder.iterdir()))}.")
        else:
            path = folder / MAIN_TABLE[info["format"]]
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.suffix == ".jsonl":
            frame = pd.read_json(path, lines=True)
        else:
            import datasets

            frame = datasets.load_from_disk(str(path)).to_pandas()
        if split is not None:
            frame = frame[frame["split"] == split].reset_index(drop=True)
        return frame

    def to_dataset(self, export: int, *, split: str | None = None, progress: bool = True) -> Any:
        """The export as a Hugging Face ``datasets.Dataset``; ``split`` keeps one of train, validation, test."""
        import datasets

        path = self.table_path(export, progress=progress)
        if path.suffix == ".parquet":
            dataset = datasets.Dataset.from_parquet(str(path))
        elif path.suffix == ".jsonl":
            dataset = datasets.Dataset.from_json(str(path))
        else:
            dataset = datasets.load_from_disk(str(path))
        if split is not None:
            dataset = dataset.filter(lambda row: row["split"] == split)
        return dataset


def _ints(values: Sequence[int] | None) -> list[int] | None:
    return [int(v) for v in values] if values is not None else None


def _counts(export: Export) -> str:
    counts = export.get("counts") or {}
    return ", ".join(f"{key} {value}" for key, value in counts.items() if key in ("rankings", "pairs"))


def _unzip(archive: Path, destination: Path) -> None:
    """Unpack the server's zip (one top folder) into ``destination``, refusing paths that leave it."""
    destination.mkdir(parents=True)
    root = destination.resolve()
    with zipfile.ZipFile(archive) as bundle:
        for member in bundle.infolist():
            parts = Path(member.filename).parts
            inner = Path(*parts[1:]) if len(parts) > 1 else Path(parts[0])
            target = (destination / inner).resolve()
            if not target.is_relative_to(root):
                raise PickwiseError(f"The export archive holds a path outside its folder: {member.filename!r}")
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(member) as source, target.open("wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
