"""Task imports: create one (storing its uploads), run it, cancel it, reap it.

A run has two phases:

1. **Check and stage.** Every row of the table is read and every image reference resolved, read and
   checked (:mod:`.images`); every problem is kept with its line and column (missing image,
   unreadable image, wrong count for the template, duplicate key, empty prompt, ...). A real run
   stores each good image under its content-addressed key (``external/<sha256>``: identical bytes
   are one file) and lists it in the import's staging table; once any row is bad it stops storing
   and only checks. A dry run stores nothing.
2. **Commit.** With no problem, one transaction creates the prompt set, prompts, external image
   rows, tasks and their images. The import lands whole or not at all.

A failed or cancelled import deletes the files it wrote that no image row and no other unfinished
import uses (the staging table says which), and its uploads; only the attempt that ends the import
does, never one whose lease was taken back. The lifecycle is the house's one leased job
(:mod:`core.jobs`): claimed under a lease token, phases ``reading_data``, ``checking_images`` (rows
counted in ``step``/``total_steps``) and ``creating_tasks``, a heartbeat on a timer, finish and fail
under the token, and a reaper (``annotate.task_imports``) that re-queues an expired lease up to
``JOB_MAX_ATTEMPTS`` claims and then fails the import; a retry reuses the files already stored.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import Max, Q

from annotate.models import (
    AnnotationTask,
    Prompt,
    PromptSet,
    PromptSource,
    TaskImage,
    TaskImport,
    TaskImportImage,
)
from annotate.workflow.access import workflow_of
from annotate.workflow.imports import table as tables
from annotate.workflow.imports.images import CheckedImage, ImageProblem, Limits, Sources, inspect
from annotate.workflow.scoring import reward_scores
from annotate.workflow.selectors import components_of
from annotate.workflow.services import text_sha256
from core import jobs
from core.exceptions import ApplicationError
from core.models import JobPhase, JobStatus
from core.tasks import enqueue_on_commit, register_reaper
from generation.models import ExternalSource, GeneratedImage, ImageOrigin
from projects.models import Project

logger = logging.getLogger(__name__)

RUN_TASK_IMPORT = "annotate.tasks.run_task_import"
RANDOM_KEY_MAX = 2**31 - 1
CHUNK_ROWS = 32
URL_THREADS = 8
_STORE_LOCK = 0x7069636B  # advisory-lock id of the external image store ("pick")


@dataclass(frozen=True)
class ImportOptions:
    deduplicate: bool = False  # skip rows whose prompt is repeated in the file or already in the project
    key_column: str = ""  # the column holding each task's own key (default: key, external_key, ...)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImportOptions:
        return cls(deduplicate=bool(data.get("deduplicate")), key_column=str(data.get("key_column") or ""))


class ImportCancelled(Exception):
    """The import is no longer this attempt's (cancelled, or its lease was taken back): stop."""


class ImportRejected(Exception):
    """The rows have problems; nothing was imported (the import's report lists them)."""


# --- creating an import -------------------------------------------------------------------------


def _import_root() -> Path | None:
    root = getattr(settings, "IMPORT_ROOT", None)
    return Path(root).resolve() if root else None


def _path_under_root(path: str, *, field: str) -> Path:
    root = _import_root()
    if root is None:
        raise ApplicationError("This server has no import root (PICKWISE_IMPORT_ROOT); upload the files instead.",
                               field=field)
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise ApplicationError(f"{path!r} is outside the import root.", field=field)
    if not resolved.exists():
        raise ApplicationError(f"Nothing at {path!r} under the import root.", field=field)
    return resolved


@transaction.atomic
def task_import_create(
    *, project: Project, user: User | None, name: str = "", fmt: str | None = None, dry_run: bool = False,
    options: ImportOptions | None = None, table: File | None = None, table_path: str = "",
    images: Sequence[File] = (), images_zip: File | None = None, images_path: str = "",
    local: bool = False,
) -> TaskImport:
    """Store the inputs of an import and its row (queued); :func:`task_import_start` runs it.

    The table is an uploaded file (``table``: CSV, JSONL, Parquet, or a zip of a Hugging Face dataset
    directory) or a path (``table_path``) under the import root; images come inside the table (bytes)
    or from ``images`` (uploaded files, by name), ``images_zip`` and ``images_path`` (a folder under the
    import root). ``local`` (trusted code: the management command) takes the paths as they are.
    """
    options = options or ImportOptions()
    if (table is None) == (not table_path):
        raise ApplicationError("Give the table as an uploaded file or as a path under the import root.",
                               field="file")
    source_name = table.name if table is not None else table_path
    fmt = fmt or tables.detect_format(source_name or "")
    if fmt not in tables.FORMATS:
        raise ApplicationError(f"Unknown table format for {source_name!r}; use .csv, .jsonl, .parquet, or a "
                               "Hugging Face dataset folder (zipped when uploaded).", field="format")
    inputs: dict[str, Any] = {"table_name": PurePosixPath(str(source_name)).name}
    if table_path:
        path = Path(table_path).resolve() if local else _path_under_root(table_path, field="path")
        if local and not path.exists():
            raise ApplicationError(f"No file or folder {table_path!r}.", field="path")
        inputs["table_path"] = str(path)
    if images_path:
        folder = Path(images_path).resolve() if local else _path_under_root(images_path, field="images_path")
        if not folder.is_dir():
            raise ApplicationError(f"{images_path!r} is not a folder.", field="images_path")
        inputs["images_path"] = str(folder)
    if local:
        inputs["local"] = True
    task_import = TaskImport.objects.create(
        project=project, created_by=user, name=(name or inputs["table_name"] or "import").strip()[:200] or "import",
        source_format=fmt, dry_run=dry_run, options=options.as_json(), inputs=inputs,
        max_attempts=settings.JOB_MAX_ATTEMPTS,
    )
    prefix = task_import.staging_prefix
    if table is not None:
        inputs["table_key"] = _save(f"{prefix}table/{PurePosixPath(table.name or 'table').name}", table)
    if images_zip is not None:
        inputs["zip_key"] = _save(f"{prefix}images.zip", images_zip)
    uploads: dict[str, str] = {}
    for index, upload in enumerate(images):
        original = (upload.name or f"image-{index}").replace("\\", "/")
        uploads[original] = _save(f"{prefix}files/{index}-{PurePosixPath(original).name}", upload)
    if uploads:
        inputs["uploads"] = uploads
    task_import.inputs = inputs
    task_import.save(update_fields=["inputs", "updated_at"])
    return task_import


def _save(key: str, upload: File) -> str:
    upload.seek(0)
    return default_storage.save(key, upload)


def task_import_start(*, task_import: TaskImport, inline: bool | None = None,
                      progress: Callable[[TaskImport], None] | None = None) -> TaskImport:
    """Run the import now (small ones, the management command) or queue it for a worker.

    ``inline=None`` decides: up to ``IMPORT_INLINE_MAX_ROWS`` rows and no URL images run now, anything
    larger on a worker (``annotate.tasks.run_task_import``).
    """
    if inline is None:
        inline = _small_enough(task_import)
    if inline:
        return task_import_run(import_id=task_import.pk, progress=progress)
    enqueue_on_commit(RUN_TASK_IMPORT, task_import.pk)
    return task_import


def _small_enough(task_import: TaskImport) -> bool:
    """Few rows and no URL to fetch (those belong on a worker); a table that cannot be read runs now, so
    its error comes back at once."""
    try:
        with _opened_inputs(task_import) as (reader, _):
            if reader.count() > settings.IMPORT_INLINE_MAX_ROWS:
                return False
            return not any(ref.kind == "url" for row in reader.rows() for ref in _refs(row))
    except (tables.TableError, OSError, ValueError):
        return True


# --- running ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _opened_inputs(task_import: TaskImport) -> Iterator[tuple[tables.TableReader, Sources]]:
    """The table reader and image sources of an import, with local copies of stored uploads."""
    inputs = task_import.inputs
    options = ImportOptions.from_json(task_import.options)
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pickwise-import-")))
        folders: list[Path] = []
        if inputs.get("table_key"):
            table_path = _local_copy(inputs["table_key"], scratch / inputs.get("table_name", "table"))
        else:
            table_path = Path(inputs["table_path"])
            if not inputs.get("local") and _import_root() is not None:
                root = _import_root()
                assert root is not None
                if not table_path.resolve().is_relative_to(root):
                    raise tables.TableError("the table is outside the import root")
            folders.append(table_path if table_path.is_dir() else table_path.parent)
        if task_import.source_format == "hf" and table_path.is_file() and table_path.suffix.lower() == ".zip":
            table_path = _unzip(table_path, scratch / "dataset")
        if inputs.get("images_path"):
            folders.insert(0, Path(inputs["images_path"]))
        root = _import_root()
        if root is not None and not inputs.get("local") and root not in folders:
            folders.append(root)
        zip_path = _local_copy(inputs["zip_key"], scratch / "images.zip") if inputs.get("zip_key") else None
        try:
            sources = Sources(uploads=inputs.get("uploads") or {}, zip_path=zip_path, folders=folders,
                              limits=Limits.from_settings())
        except Exception as exc:  # zipfile.BadZipFile and friends
            raise tables.TableError(f"the images zip cannot be read: {exc}", column="images_zip") from None
        stack.callback(sources.close)
        reader = tables.TableReader(table_path, task_import.source_format, key_column=options.key_column,
                                    max_rows=settings.IMPORT_MAX_ROWS)
        yield reader, sources


def _local_copy(key: str, target: Path) -> Path:
    with contextlib.suppress(NotImplementedError):
        local = Path(default_storage.path(key))
        if local.exists():
            return local
    target.parent.mkdir(parents=True, exist_ok=True)
    with default_storage.open(key, "rb") as source, target.open("wb") as sink:
        for block in iter(lambda: source.read(1 << 20), b""):
            sink.write(block)
    return target


def _unzip(archive: Path, target: Path) -> Path:
    import zipfile

    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                path = (target / info.filename).resolve()
                if not path.is_relative_to(target.resolve()):
                    raise tables.TableError(f"the zip entry {info.filename!r} points outside the zip")
            bundle.extractall(target)  # noqa: S202 - every entry was checked to stay inside target
    except zipfile.BadZipFile as exc:
        raise tables.TableError(f"the dataset zip cannot be read: {exc}") from None
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


class _Progress:
    """An attempt's progress: kept in memory for the caller's callback (the command's progress bar) and
    carried to the row by the job's heartbeat; a new phase is written at once. Raises
    :class:`ImportCancelled` once the import is no longer this attempt's (cancelled, reaped, retried)."""

    def __init__(self, task_import: TaskImport, heartbeat: jobs.JobHeartbeat,
                 callback: Callable[[TaskImport], None] | None) -> None:
        self.task_import, self.heartbeat, self.callback = task_import, heartbeat, callback

    def __call__(self, progress: float, phase: str, **fields: Any) -> None:
        progress = max(0.0, min(1.0, progress))
        if phase != self.task_import.phase:
            ours = self.heartbeat.phase(phase, progress=progress, **fields)
        else:
            self.heartbeat.set(progress=progress, **fields)
            ours = not self.heartbeat.should_stop()
        if not ours:
            raise ImportCancelled
        self.task_import.progress, self.task_import.phase = progress, phase
        for name, value in fields.items():
            setattr(self.task_import, name, value)
        if self.callback is not None:
            self.callback(self.task_import)


@dataclass
class StagedRow:
    line: int
    prompt: str
    negative_prompt: str
    key: str
    metadata: dict[str, Any]
    shas: list[str]
    image_metadata: list[dict[str, Any]]
    source_sha: str = ""  # the source image of an editing task (stored like the candidates)
    source_id: str = ""  # ... or the id of an image already in the project


def _refs(row: tables.TableRow) -> list[tables.ImageRef]:
    """A row's image references: its candidates, then its source image."""
    return [*row.images, *([row.source] if row.source is not None else [])]


def _expected_count(project: Project) -> tuple[int, str]:
    workflow = workflow_of(project)
    for component in components_of(workflow.template_version, "images") if workflow.template_version else []:
        config = component["config"]
        if config.get("source") == "task" and not config.get("count_from"):
            return int(config["count"]), f"the template's {component['name']!r} shows {config['count']} per task"
    return workflow.images_per_task, f"the project has {workflow.images_per_task} images per task"


def task_import_run(*, import_id: int, worker: str | None = None,
                    progress: Callable[[TaskImport], None] | None = None) -> TaskImport:
    """Run an import to its end (see the module docstring). A no-op for one that is not queued (finished,
    or running under another worker's lease)."""
    claimed = jobs.job_claim(TaskImport, import_id, phase=JobPhase.READING_DATA, worker=worker)
    if claimed is None:
        return TaskImport.objects.get(pk=import_id)
    task_import, lease = claimed
    task_import = TaskImport.objects.select_related("project").get(pk=task_import.pk)
    report: dict[str, Any] = {}
    committed = False
    with jobs.JobHeartbeat(lease) as heartbeat:
        beat = _Progress(task_import, heartbeat, progress)
        try:
            rows, report = _check_and_stage(task_import, beat)
            if report["errors"]:
                raise ImportRejected
            if task_import.dry_run:  # stored nothing; its uploads stay for the import that may follow
                jobs.job_finish(lease, report=report, rows=report.get("rows", 0))
            else:
                beat(0.92, JobPhase.CREATING_TASKS)
                _commit(task_import, lease, rows, report)
                committed = True
        except ImportCancelled:
            # Cancelled: delete what it stored. Otherwise its lease was taken back (the reaper gave the
            # import to another attempt, which reuses the staged files and the uploads): touch nothing.
            if TaskImport.objects.filter(pk=import_id, status=JobStatus.CANCELLED).exists():
                _cleanup(task_import)
        except ImportRejected:
            errors = report["errors"]
            first = errors[0]
            where = (f"line {first['line']}" + (f", {first['column']}" if first["column"] else "")
                     if first["line"] else "")
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            _fail(task_import, lease, f"{where + ': ' if where else ''}{first['message']}{more}", report=report)
        except tables.TableError as exc:
            _fail(task_import, lease, exc.message,
                  report={"errors": [{"line": 0, "column": exc.column, "message": exc.message}], "rows": 0})
        except Exception as exc:
            logger.exception("task import %s failed", import_id)
            _fail(task_import, lease, f"{type(exc).__name__}: {exc}")
            raise
    if committed:
        _delete_uploads(task_import)
    return TaskImport.objects.get(pk=import_id)


def _fail(task_import: TaskImport, lease: jobs.Lease, message: str, *, report: dict[str, Any] | None = None) -> None:
    """Fail the import under this attempt's lease and delete what it stored; nothing when the lease was lost
    (the attempt now holding the import owns its files)."""
    fields: dict[str, Any] = {} if report is None else {"report": report, "rows": report.get("rows", 0)}
    if jobs.job_fail(lease, f"{message}. Nothing was imported.", **fields):
        _cleanup(task_import)


def _check_and_stage(task_import: TaskImport, beat: _Progress) -> tuple[list[StagedRow], dict[str, Any]]:
    project = task_import.project
    expected, why = _expected_count(project)
    errors: list[tables.RowError] = []
    rows: list[StagedRow] = []
    keys: dict[str, int] = {}
    source_ids: dict[str, int] = {}  # image id -> the first line naming it as a source
    staged: dict[str, CheckedImage] = {
        s.sha256: CheckedImage(sha256=s.sha256, content_type=s.content_type, extension=s.storage_key.rsplit(".", 1)[-1],
                               width=s.width, height=s.height, size_bytes=s.size_bytes, source=s.source, name=s.name)
        for s in TaskImportImage.objects.filter(task_import=task_import)
    }  # a retried import reuses what its earlier attempt stored
    beat(0.0, JobPhase.READING_DATA)
    with _opened_inputs(task_import) as (reader, sources), ThreadPoolExecutor(URL_THREADS) as pool:
        count = reader.count()
        total = max(count, 1)
        done = 0
        beat(0.0, JobPhase.CHECKING_IMAGES, step=0, total_steps=count)
        for chunk in _chunks(reader.rows(), CHUNK_ROWS):
            refs = [ref for row in chunk for ref in _refs(row)]
            results = list(pool.map(_reader_of(sources), refs)) if any(r.kind == "url" for r in refs) \
                else [_reader_of(sources)(ref) for ref in refs]
            position = 0
            fresh: dict[str, tuple[CheckedImage, bytes]] = {}
            for row in chunk:
                before = len(errors)
                shas: list[str] = []
                for ref in row.images:
                    outcome = results[position]
                    position += 1
                    if isinstance(outcome, ImageProblem):
                        errors.append(tables.RowError(row.line, ref.column, outcome.message))
                        continue
                    checked, data = outcome
                    shas.append(checked.sha256)
                    if checked.sha256 not in staged:
                        fresh.setdefault(checked.sha256, (checked, data))
                source_sha = ""
                if row.source is not None:
                    outcome = results[position]
                    position += 1
                    if isinstance(outcome, ImageProblem):
                        errors.append(tables.RowError(row.line, row.source.column, outcome.message))
                    else:
                        source_sha = outcome[0].sha256
                        if source_sha not in staged:
                            fresh.setdefault(source_sha, outcome)
                if row.source_id:
                    source_ids.setdefault(row.source_id, row.line)
                flagged = len(errors) != before or any(e.line == row.line for e in reader.errors)
                editing = (row.source is not None or bool(row.source_id)) and not row.images
                if len(row.images) != expected and not flagged and not editing:
                    errors.append(tables.RowError(row.line, _column(reader, "images"),
                                                  f"wrong count for the template: the row has {len(row.images)} "
                                                  f"image{'s' if len(row.images) != 1 else ''}; {why}"))
                if len(set(shas)) != len(shas):
                    errors.append(tables.RowError(row.line, "images", "the same image is listed twice in the row"))
                if row.key:
                    if row.key in keys:
                        errors.append(tables.RowError(row.line, _column(reader, "key"),
                                                      f"duplicate key {row.key!r}: line {keys[row.key]} has it too"))
                    else:
                        keys[row.key] = row.line
                rows.append(StagedRow(row.line, row.prompt, row.negative_prompt, row.key, row.metadata, shas,
                                      row.image_metadata, source_sha=source_sha, source_id=row.source_id))
            errors.extend(reader.errors)
            reader.errors.clear()
            if not errors and not task_import.dry_run and fresh:
                _stage(task_import, list(fresh.values()))
            for sha, (checked, _) in fresh.items():
                staged[sha] = checked
            done += len(chunk)
            beat(0.9 * done / total, JobPhase.CHECKING_IMAGES, step=done)
        errors.extend(reader.errors)
    if keys:
        taken = dict(AnnotationTask.objects.filter(project=project, external_key__in=list(keys)).values_list(
            "external_key", "pk"))
        for key, line in keys.items():
            if key in taken:
                errors.append(tables.RowError(line, _column(reader, "key"),
                                              f"duplicate key {key!r}: the project already has it (task {taken[key]})"))
    if source_ids:
        known = {str(pk) for pk in GeneratedImage.objects.filter(
            Q(project=project) | Q(job__project=project), pk__in=list(source_ids)).values_list("pk", flat=True)}
        for image_id, line in source_ids.items():
            if image_id not in known:
                errors.append(tables.RowError(line, _column(reader, "source_image"),
                                              f"missing image: no image {image_id} in this project"))
    if not rows and not errors:
        errors.append(tables.RowError(0, "", "the table holds no rows"))
    errors.sort(key=lambda e: (e.line, e.column))
    report = {"errors": [e.as_dict() for e in errors[:1000]], "error_count": len(errors), "rows": len(rows),
              "images": sum(len(r.shas) for r in rows), "distinct_images": len({s for r in rows for s in r.shas}),
              "source_images": sum(1 for r in rows if r.source_sha or r.source_id),
              "expected_images_per_task": expected}
    return rows, report


def _column(reader: tables.TableReader, what: str) -> str:
    """The table's name of the images or key column, for error reports."""
    layout = reader.layout
    if layout is None:
        return what
    name = {"images": layout.images, "key": layout.key, "source_image": layout.source}.get(what)
    return name or what


def _reader_of(sources: Sources) -> Callable[[tables.ImageRef], tuple[CheckedImage, bytes] | ImageProblem]:
    def read(ref: tables.ImageRef) -> tuple[CheckedImage, bytes] | ImageProblem:
        try:
            data, source, name = sources.fetch(ref)
            return inspect(data, limits=sources.limits, source=source, name=name), data
        except ImageProblem as exc:
            return exc
    return read


def _chunks(rows: Iterator[tables.TableRow], size: int) -> Iterator[list[tables.TableRow]]:
    chunk: list[tables.TableRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _store_lock() -> None:
    """Serialise writers of the shared external image store with cleanups (PostgreSQL; SQLite's one writer
    already does)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_STORE_LOCK])


def _stage(task_import: TaskImport, images: list[tuple[CheckedImage, bytes]]) -> None:
    """Store images under their content-addressed keys and list them in the import's staging table, under
    the store lock (so a cleanup never deletes a file this import is about to use)."""
    with transaction.atomic():
        _store_lock()
        rows = []
        for checked, data in images:
            key = checked.storage_key
            written = not default_storage.exists(key)
            if written:
                saved = default_storage.save(key, ContentFile(data))
                if saved != key:  # a storage that renames instead of overwriting: keep one copy only
                    default_storage.delete(saved)
                    raise OSError(f"storage saved {key!r} as {saved!r}")
            rows.append(TaskImportImage(
                task_import=task_import, sha256=checked.sha256, storage_key=key, written=written,
                content_type=checked.content_type, width=checked.width, height=checked.height,
                size_bytes=checked.size_bytes, source=checked.source, name=checked.name))
        TaskImportImage.objects.bulk_create(rows, ignore_conflicts=True)


def _commit(task_import: TaskImport, lease: jobs.Lease, rows: list[StagedRow], report: dict[str, Any]) -> None:
    """Create everything, and end the import, in one transaction that only the lease holder can take."""
    project = task_import.project
    options = ImportOptions.from_json(task_import.options)
    with transaction.atomic():
        if jobs.job_lock_owned(lease) is None:  # cancelled or taken back: nothing of it may land
            raise ImportCancelled
        Project.objects.select_for_update().filter(pk=project.pk).first()  # one import (or prompt set) at a time
        keys = [row.key for row in rows if row.key]
        taken = set(AnnotationTask.objects.filter(project=project, external_key__in=keys).values_list(
            "external_key", flat=True)) if keys else set()
        if taken:
            report["errors"] = [{"line": row.line, "column": "key", "message": f"duplicate key {row.key!r}: the "
                                 "project already has it"} for row in rows if row.key in taken]
            raise ImportRejected
        duplicates: list[dict[str, Any]] = []
        if options.deduplicate:
            existing = set(Prompt.objects.filter(project=project).values_list("text_sha256", flat=True))
            kept, first_line = [], {}
            for row in rows:
                digest = text_sha256(row.prompt)
                if digest in existing or digest in first_line:
                    duplicates.append({"line": row.line, "text": row.prompt, "first_line": first_line.get(digest)})
                    continue
                first_line[digest] = row.line
                kept.append(row)
            rows = kept
        staged = {s.sha256: s for s in TaskImportImage.objects.filter(task_import=task_import)}
        candidates = {sha for row in rows for sha in row.shas}
        wanted = candidates | {row.source_sha for row in rows if row.source_sha}
        images = dict(GeneratedImage.objects.filter(
            project=project, origin=ImageOrigin.EXTERNAL, sha256__in=list(wanted)).values_list("sha256", "pk"))
        first_meta: dict[str, dict[str, Any]] = {}
        first_prompt: dict[str, str] = {}
        for row in rows:
            for sha, meta in zip(row.shas, row.image_metadata, strict=False):
                first_meta.setdefault(sha, meta)
                first_prompt.setdefault(sha, row.prompt)
            if row.source_sha:
                first_meta.setdefault(row.source_sha, {"column": "source_image"})
                first_prompt.setdefault(row.source_sha, row.prompt)
        new_images = [
            GeneratedImage(
                origin=ImageOrigin.EXTERNAL, project=project, prompt=first_prompt[sha],
                external_source=staged[sha].source if staged[sha].source in ExternalSource.values else "upload",
                external_name=staged[sha].name, external_metadata=first_meta.get(sha, {}),
                storage_key=staged[sha].storage_key, content_type=staged[sha].content_type, sha256=sha,
                width=staged[sha].width, height=staged[sha].height, size_bytes=staged[sha].size_bytes,
            )
            for sha in wanted if sha not in images
        ]
        for image in GeneratedImage.objects.bulk_create(new_images, batch_size=2000):
            images[image.sha256] = image.pk
        prompt_set = PromptSet.objects.create(
            project=project, name=task_import.name, source_format=task_import.source_format,
            prompt_count=len(rows), duplicate_count=len(duplicates), created_by=task_import.created_by)
        prompts = Prompt.objects.bulk_create([
            Prompt(project=project, prompt_set=prompt_set, text=row.prompt, text_sha256=text_sha256(row.prompt),
                   negative_prompt=row.negative_prompt, metadata=row.metadata, source=PromptSource.IMPORT,
                   created_by=task_import.created_by)
            for row in rows], batch_size=2000)
        start = (AnnotationTask.objects.filter(project=project).aggregate(m=Max("position"))["m"] or 0) + 1
        rng = random.SystemRandom()
        tasks = AnnotationTask.objects.bulk_create([
            AnnotationTask(project=project, prompt=prompt, position=start + i, random_key=rng.randint(0, RANDOM_KEY_MAX),
                           external_key=row.key, metadata=_task_metadata(row, images),
                           created_by=task_import.created_by)
            for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True))], batch_size=2000)
        TaskImage.objects.bulk_create([
            TaskImage(task=task, image_id=images[sha], position=position)
            for task, row in zip(tasks, rows, strict=True) for position, sha in enumerate(row.shas)],
            batch_size=5000)
        reward_scores().task_images_added(project=project, image_ids=[str(images[sha]) for sha in candidates])
        TaskImportImage.objects.filter(task_import=task_import).delete()
        report.update(tasks=len(tasks), new_images=len(new_images), duplicates=duplicates[:1000],
                      duplicate_count=len(duplicates))
        jobs.job_finish(lease, report=report, prompt_set=prompt_set, rows=len(rows))


def _task_metadata(row: StagedRow, images: dict[str, Any]) -> dict[str, Any]:
    """The row's metadata; an editing task's also names its source image (``source_image``: the image's id,
    which the Source image component's "from the task's data" choice reads)."""
    source = str(images[row.source_sha]) if row.source_sha else row.source_id
    return {**row.metadata, "source_image": source} if source else row.metadata


# --- cleaning up, cancelling, reaping -----------------------------------------------------------


def _cleanup(task_import: TaskImport) -> int:
    """Delete the files this import wrote that no image row and no other unfinished import uses, its staging
    rows and its uploads; returns how many image files were deleted."""
    deleted = 0
    with transaction.atomic():
        _store_lock()
        written = list(TaskImportImage.objects.filter(task_import=task_import, written=True).values_list(
            "storage_key", flat=True))
        if written:
            used = set(GeneratedImage.objects.filter(storage_key__in=written).values_list("storage_key", flat=True))
            used |= set(TaskImportImage.objects.filter(storage_key__in=written).exclude(task_import=task_import)
                        .filter(task_import__status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
                        .values_list("storage_key", flat=True))
            for key in written:
                if key not in used:
                    with contextlib.suppress(FileNotFoundError):
                        default_storage.delete(key)
                        deleted += 1
        TaskImportImage.objects.filter(task_import=task_import).delete()
    _delete_uploads(task_import)
    return deleted


def _delete_uploads(task_import: TaskImport) -> None:
    inputs = task_import.inputs or {}
    keys = [inputs.get("table_key"), inputs.get("zip_key"), *(inputs.get("uploads") or {}).values()]
    for key in keys:
        if key:
            with contextlib.suppress(FileNotFoundError, OSError):
                default_storage.delete(key)


@transaction.atomic
def task_import_cancel(*, task_import: TaskImport) -> TaskImport:
    """Cancel an import that has not finished: a queued one at once, a running one at its worker's next
    progress step (the worker then deletes what it stored). One that already committed cannot be cancelled."""
    locked = TaskImport.objects.select_for_update().get(pk=task_import.pk)
    if locked.is_finished:
        raise ApplicationError(f"Import {locked.pk} has already {locked.status}.", field="status")
    was_queued = locked.status == JobStatus.QUEUED
    cancelled = jobs.job_cancel(TaskImport, locked.pk)
    if was_queued:
        transaction.on_commit(lambda: _cleanup(cancelled))
    return cancelled


@register_reaper("annotate.task_imports")
def task_imports_reap() -> int:
    """Re-queue imports whose worker died (lease expired) until their attempts run out, then fail them and
    delete what they stored; clean up after ended imports that still hold staged files (a worker that died
    while cleaning up). Returns how many were handled."""
    gave_up: list[TaskImport] = []

    def give_up(task_import: TaskImport) -> None:  # inside the reaper's transaction, the row locked
        task_import.error = f"{task_import.error} Nothing was imported."
        TaskImport.objects.filter(pk=task_import.pk).update(error=task_import.error)
        gave_up.append(task_import)

    handled = jobs.jobs_reap(TaskImport, task_name=RUN_TASK_IMPORT, what="importing", on_fail=give_up)
    for task_import in gave_up:
        _cleanup(task_import)
    leftovers = TaskImport.objects.filter(status__in=[JobStatus.FAILED, JobStatus.CANCELLED],
                                          staged_images__isnull=False).distinct()[:100]
    for task_import in leftovers:
        _cleanup(task_import)
        handled += 1
    return handled
