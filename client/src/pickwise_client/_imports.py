"""Task imports (``/api/projects/<id>/imports/``): tasks with candidate images you already have."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, cast

from pickwise_client import _wait
from pickwise_client._base import Resource, only_given, project_path
from pickwise_client.errors import ConfigurationError, JobFailedError
from pickwise_client.types import TaskImport

FINISHED = ("succeeded", "failed", "cancelled")
PathLike = str | os.PathLike[str]


class TaskImports(Resource):
    """Create tasks from a table of prompts and their images (project admins).

    The table is a ``.csv``, ``.jsonl`` or ``.parquet`` file (Pick-a-Pic's ``caption``, ``jpg_0``, ``jpg_1``,
    ... columns work as they are) or a Hugging Face dataset folder (saved with ``save_to_disk``; sent
    zipped). Its image cells hold bytes, file names (of ``images``: a folder or a list of files, or of
    the files in ``images_zip``), ``s3://`` keys in the server's bucket or ``http(s)`` URLs.
    """

    def create(self, project: int, table: PathLike | None = None, *, path: str | None = None,
               images: PathLike | Sequence[PathLike] | None = None, images_zip: PathLike | None = None,
               images_path: str | None = None, name: str = "", format: str | None = None, key_column: str = "",
               deduplicate: bool = False, dry_run: bool = False, background: bool | None = None,
               wait: bool = True, progress: bool = True, timeout: float | None = None) -> TaskImport:
        """Upload and run an import; with ``wait`` (the default) block until it ends, with a progress bar.

        ``path`` and ``images_path`` name a table and a folder under the server's import root instead of
        uploading them. ``dry_run`` checks every row and image and writes nothing. The result's
        ``status`` says how it ended and ``report["errors"]`` lists every bad row (``line``, ``column``,
        ``message``); a failed import stored nothing. :class:`~pickwise_client.JobFailedError` is not
        raised for a failed import: its report is the answer.
        """
        if (table is None) == (path is None):
            raise ConfigurationError("Give the table as a local file (table=...) or a path on the server (path=...).")
        with contextlib.ExitStack() as stack:
            files: list[tuple[str, tuple[str, IO[bytes]]]] = []

            def attach(field: str, local: Path) -> None:
                if not local.is_file():
                    raise ConfigurationError(f"No file {str(local)!r}.")
                files.append((field, (local.name, stack.enter_context(local.open("rb")))))

            if table is not None:
                local_table = Path(table)
                if local_table.is_dir():
                    local_table = _zip_folder(local_table, stack)
                attach("file", local_table)
            for image in _image_files(images):
                attach("images", image)
            if images_zip is not None:
                attach("images_zip", Path(images_zip))
            data = only_given(path=path, images_path=images_path, name=name or None, format=format,
                              key_column=key_column or None, deduplicate="true" if deduplicate else None,
                              dry_run="true" if dry_run else None,
                              background=None if background is None else ("true" if background else "false"))
            created = cast(TaskImport, self._http.json("POST", project_path(project, "imports/"), files=files,
                                                       data=data, timeout=max(self._http.client.timeout.read or 30,
                                                                              600)))
        if wait and created["status"] not in FINISHED:
            return self.wait(project, created["id"], progress=progress, timeout=timeout)
        return created

    def list(self, project: int) -> Iterator[TaskImport]:
        return cast(Iterator[TaskImport], self._http.paginate(project_path(project, "imports/")))

    def get(self, project: int, task_import: int) -> TaskImport:
        return cast(TaskImport, self._http.get(project_path(project, f"imports/{int(task_import)}/")))

    def cancel(self, project: int, task_import: int) -> TaskImport:
        """Cancel an import that has not finished; nothing of it is kept."""
        return cast(TaskImport, self._http.post(project_path(project, f"imports/{int(task_import)}/cancel/"),
                                                idempotent=True))

    def wait(self, project: int, task_import: int, *, timeout: float | None = None, poll_interval: float = 1.0,
             progress: bool = True, raise_on_cancel: bool = True) -> TaskImport:
        """Block until the import ends, with a progress bar; a cancelled one raises
        :class:`~pickwise_client.JobFailedError` (a failed one is returned: read its ``report``)."""
        done = _wait.poll(
            lambda: self.get(project, task_import), finished=lambda i: i["status"] in FINISHED,
            position=lambda i: (round(100 * i["progress"], 1), 100, i["phase"]),
            description=f"import {task_import}", progress=progress, timeout=timeout, poll_interval=poll_interval,
            sleep=self._context.sleep)
        if raise_on_cancel and done["status"] == "cancelled":
            raise JobFailedError("import", cast(dict[str, Any], done))
        return done


def _image_files(images: PathLike | Sequence[PathLike] | None) -> list[Path]:
    if images is None:
        return []
    if isinstance(images, str | os.PathLike):
        folder = Path(images)
        if not folder.is_dir():
            raise ConfigurationError(f"images={str(folder)!r} is not a folder; pass a folder or a list of files.")
        return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [Path(image) for image in images]


def _zip_folder(folder: Path, stack: contextlib.ExitStack) -> Path:
    """A dataset folder (``save_to_disk``) zipped into a temporary file, to upload as one table."""
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pickwise-upload-")))
    return Path(shutil.make_archive(str(scratch / folder.name), "zip", root_dir=folder))
