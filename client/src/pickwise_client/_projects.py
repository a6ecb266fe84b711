"""Projects, prompt sets, tasks and annotations (``/api/projects/...``)."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Unpack, cast
from urllib.parse import quote

from pickwise_client import _wait
from pickwise_client._base import Resource, only_given, project_path
from pickwise_client._http import dumps_jsonl
from pickwise_client.errors import ConfigurationError, FieldError, ValidationError
from pickwise_client.types import (
    Annotation,
    AnnotationRecord,
    ArenaResults,
    GenerationJob,
    Handout,
    Member,
    Project,
    ProjectSettings,
    PromptImport,
    PromptSet,
    Ranking,
    SettingsChanges,
    SubmitResult,
    Task,
    TaskImage,
)

TaskImageList = list[TaskImage]  # (a module-level name: ``list`` is a method name inside the classes)


class Projects(Resource):
    """Projects you belong to. Creating one needs the project-admin role; you become its admin."""

    def list(self) -> Iterator[Project]:
        """Every project you belong to (archived ones too; see ``archived_at``)."""
        return cast(Iterator[Project], self._http.paginate("api/projects/"))

    def get(self, project: int) -> Project:
        return cast(Project, self._http.get(f"api/projects/{int(project)}/"))

    def create(self, name: str, *, description: str = "") -> Project:
        return cast(Project, self._http.post("api/projects/", {"name": name, "description": description}))

    def settings(self, project: int) -> ProjectSettings:
        """The workflow settings: template version, images per task, overlap, order, gold rate, models..."""
        return cast(ProjectSettings, self._http.get(project_path(project, "settings/")))

    def update_settings(self, project: int, **changes: Unpack[SettingsChanges]) -> ProjectSettings:
        """Change the settings you name (project admins), e.g.
        ``update_settings(1, template_version=7, images_per_task=4, overlap=3, model_version_ids=[2])``."""
        return cast(ProjectSettings, self._http.json("PATCH", project_path(project, "settings/"),
                                                     json_body=dict(changes)))

    def archive(self, project: int) -> ProjectSettings:
        return cast(ProjectSettings, self._http.post(project_path(project, "archive/"), idempotent=True))

    def unarchive(self, project: int) -> ProjectSettings:
        return cast(ProjectSettings, self._http.post(project_path(project, "unarchive/"), idempotent=True))

    def agreement(self, project: int) -> dict[str, Any]:
        """Per-annotator stats and agreement (pairwise, Kendall's tau, Kendall's W); reviewers only."""
        return cast(dict[str, Any], self._http.get(project_path(project, "agreement/")))


class Members(Resource):
    """Who belongs to a project and in which role (project admins of that project).

    Roles: ``admin``, ``annotator``, ``ml_engineer``. A person's global role (set by a superuser) decides
    which they may hold; a project always keeps one admin.
    """

    def list(self, project: int) -> Iterator[Member]:
        """Every member: ``{"user_id", "username", "role"}``, admins first."""
        return cast(Iterator[Member], self._http.paginate(project_path(project, "members/"), {"page_size": 500}))

    def set(self, project: int, username: str, role: str) -> Member:
        """Add ``username`` to the project in ``role``, or change their role. Raises
        :class:`~pickwise_client.ValidationError` (field ``role``) when their global role does not allow it or
        it would demote the last admin, :class:`~pickwise_client.NotFoundError` for an unknown username."""
        return cast(Member, self._http.json("PUT", _member_path(project, username), json_body={"role": role}))

    def remove(self, project: int, username: str) -> None:
        """Take ``username`` out of the project (their annotations stay); never the last admin."""
        self._http.json("DELETE", _member_path(project, username))


def _member_path(project: int, username: str) -> str:
    if not username:
        raise ConfigurationError("Give a username.")
    return project_path(project, f"members/{quote(username, safe='')}/")


class Arena(Resource):
    """A blind arena's results (ML engineers and admins of the project)."""

    def results(self, project: int) -> ArenaResults:
        """The Bradley-Terry leaderboard (best first) and every pair's head-to-head win rate with its
        Wilson 95% interval."""
        return cast(ArenaResults, self._http.get(project_path(project, "arena/results/")))


def _plain(value: Any) -> Any:
    """A DataFrame cell as plain JSON: numpy scalars and arrays unwrapped, NaN/NA/NaT as None."""
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()  # numpy scalars become Python scalars, arrays lists
    if isinstance(value, float) and math.isnan(value):
        return None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    return value


def _records(source: Any) -> tuple[list[dict[str, Any]], list[str], str]:
    """Rows to upload as JSONL, the label of each row for error messages, and what a row is called."""
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # a pandas DataFrame
        if "prompt" not in list(source.columns):
            raise ConfigurationError("The DataFrame needs a 'prompt' column (optional: negative_prompt, seed, "
                                     f"tags, metadata); it has {', '.join(map(str, source.columns))}.")
        rows = []
        for record in source.to_dict(orient="records"):
            row = {str(key): _plain(value) for key, value in record.items()}
            if isinstance(row.get("seed"), float) and row["seed"].is_integer():
                row["seed"] = int(row["seed"])  # an integer column with gaps is float64 in pandas
            rows.append({key: value for key, value in row.items() if value is not None})
        return rows, [str(label) for label in source.index], "row"
    rows = []
    for index, item in enumerate(source):
        if isinstance(item, str):
            rows.append({"prompt": item})
        elif isinstance(item, Mapping):
            rows.append(dict(item))
        else:
            raise ConfigurationError(f"Prompt {index} is a {type(item).__name__}; give strings or dicts with "
                                     "a 'prompt' key.")
    return rows, [str(index) for index in range(len(rows))], "item"


class PromptSets(Resource):
    """Prompt sets: every prompt you upload becomes a task of the project (project admins)."""

    def list(self, project: int) -> Iterator[PromptSet]:
        return cast(Iterator[PromptSet], self._http.paginate(project_path(project, "prompt-sets/")))

    def upload(self, project: int, source: Any, *, name: str = "", format: str | None = None,
               deduplicate: bool = False) -> PromptImport:
        """Import prompts; every one becomes a task, repeated prompts too. With ``deduplicate``, prompts
        repeated in the source or already in the project are skipped and reported in ``duplicates``.

        ``source`` is a path to a ``.csv`` (a ``prompt`` column; optional ``negative_prompt``, ``seed``,
        ``tags``, other columns kept as metadata), ``.jsonl`` or ``.txt`` file; a list of prompt strings
        or of dicts with those keys; or a pandas DataFrame with those columns. Any bad row imports
        nothing: :class:`~pickwise_client.ValidationError` lists every problem by line (files) or by
        row label (lists, DataFrames).
        """
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            if not path.is_file():
                raise ConfigurationError(f"No prompt file {str(path)!r} (to import prompt texts, pass a list).")
            content, filename, labels, kind = path.read_bytes(), path.name, None, ""
        elif isinstance(source, bytes | bytearray):
            raise ConfigurationError("Pass a file path, a list of prompts or a DataFrame, not bytes.")
        elif isinstance(source, Sequence) or (hasattr(source, "to_dict") and hasattr(source, "columns")):
            rows, row_labels, kind = _records(source)
            content, filename, labels, format = dumps_jsonl(rows), "prompts.jsonl", row_labels, "jsonl"
        else:
            raise ConfigurationError(f"Cannot import prompts from a {type(source).__name__}.")
        try:
            return cast(PromptImport, self._http.post(
                project_path(project, "prompt-sets/"), files={"file": (filename, content)},
                data=only_given(format=format, name=name or None, deduplicate="true" if deduplicate else None)))
        except ValidationError as exc:
            if labels is None:
                raise
            raise _relabel(exc, labels, kind) from None


def _relabel(exc: ValidationError, labels: list[str], kind: str) -> ValidationError:
    """Line numbers of the JSONL we built, as the caller's rows (a DataFrame's index labels)."""
    errors = []
    for error in exc.errors:
        if error.line is not None and 1 <= error.line <= len(labels):
            errors.append(FieldError(f"{kind} {labels[error.line - 1]}", error.message))
        else:
            errors.append(FieldError(error.field, error.message))
    first = errors[0]
    return ValidationError(f"{first.message} (nothing was imported)", status=exc.status, field=first.field,
                           errors=errors, body=exc.body, method=exc.method, url=exc.url)


class Tasks(Resource):
    """A project's tasks, and the annotator loop: ``next`` leases a task, ``submit`` ranks it."""

    def list(self, project: int, *, is_gold: bool | None = None, is_open: bool | None = None,
             prompt_set: int | None = None) -> Iterator[Task]:
        """Every task (reviewers and admins); ``is_open`` = still handed out to more annotators."""
        return cast(Iterator[Task], self._http.paginate(
            project_path(project, "tasks/"), {"is_gold": is_gold, "is_open": is_open, "prompt_set": prompt_set,
                                              "page_size": 500}))

    def count(self, project: int, *, is_gold: bool | None = None, is_open: bool | None = None) -> int:
        return self._http.count(project_path(project, "tasks/"), {"is_gold": is_gold, "is_open": is_open})

    def get(self, project: int, task: int) -> Task:
        return cast(Task, self._http.get(project_path(project, f"tasks/{int(task)}/")))

    def create(self, project: int, prompt: str, *, negative_prompt: str = "", image_ids: Sequence[str] = (),
               gold_ranking: Ranking | None = None) -> Task:
        """A task with images you generated already (project admins); ``gold_ranking`` makes it gold."""
        return cast(Task, self._http.post(project_path(project, "tasks/"), {
            "prompt": prompt, "negative_prompt": negative_prompt, "image_ids": [str(i) for i in image_ids],
            "gold_ranking": gold_ranking}))

    def set_images(self, project: int, task: int, image_ids: Sequence[str]) -> TaskImageList:
        """Replace a task's images (project admins, before anyone answered it)."""
        body = self._http.json("PUT", project_path(project, f"tasks/{int(task)}/images/"),
                               json_body={"image_ids": [str(i) for i in image_ids]})
        return cast(TaskImageList, body["images"])

    def next(self, project: int) -> Handout | None:
        """Lease your next task (or get your current one back); ``None`` when none is left for you."""
        return cast("Handout | None", self._http.post(project_path(project, "tasks/next/"), idempotent=True))

    def submit(self, project: int, task: int, ranking: Ranking, *, idempotency_key: str | None = None,
               answers: Mapping[str, Any] | None = None, rationale: str | None = None,
               duration_ms: int | None = None) -> SubmitResult | None:
        """Submit your ranking of a leased task (tie groups of image ids, best first) and get your next task
        in the same round trip: a handout with ``submitted`` (the stored annotation) beside it, or ``None``
        when no task is left for you.

        The idempotency key makes a retry safe (the server stores nothing twice), so this call is retried
        on 429/503; pass the handout's ``idempotency_key`` to make a resubmission after a crash safe too.
        """
        return self._submit(project_path(project, f"tasks/{int(task)}/submit/"), ranking, idempotency_key,
                            answers, rationale, duration_ms)

    def submit_by_key(self, project: int, task_key: str, ranking: Ranking, *, idempotency_key: str | None = None,
                      answers: Mapping[str, Any] | None = None, rationale: str | None = None,
                      duration_ms: int | None = None) -> SubmitResult | None:
        """:meth:`submit` naming the task by its own key (``task_key`` from its import) instead of its id."""
        return self._submit(project_path(project, f"tasks/by-key/{quote(task_key, safe='')}/submit/"), ranking,
                            idempotency_key, answers, rationale, duration_ms)

    def _submit(self, path: str, ranking: Ranking, idempotency_key: str | None, answers: Mapping[str, Any] | None,
                rationale: str | None, duration_ms: int | None) -> SubmitResult | None:
        body = only_given(ranking=ranking, answers=dict(answers) if answers is not None else None,
                          rationale=rationale, duration_ms=duration_ms)
        body["idempotency_key"] = idempotency_key or f"client-{uuid.uuid4()}"
        return cast("SubmitResult | None", self._http.post(path, body, idempotent=True))

    def generate_edit(self, project: int, task: int, *, source: str | os.PathLike[str] | bytes | None = None,
                      source_from: str | None = None, mask: str | os.PathLike[str] | bytes | None = None,
                      strength: float | None = None, outpaint: Sequence[int] | None = None,
                      model_version: int | None = None) -> GenerationJob:
        """Generate a leased task's candidates as edits of a source image (the template says which kind:
        inpainting, image-to-image or outpainting); returns the generation job (wait for it with
        ``client.generation_jobs.wait(job["id"])``; its images then join the task).

        ``source``: an image file (path or bytes) to upload; or ``source_from="task"`` (the image the task's
        data names; what the server takes when neither is given and the task has one) or
        ``"candidate:<image id>"`` (a candidate generated earlier in the task). ``mask``: the
        mask PNG (white repaints) for inpainting; ``strength``: 0 to 1; ``outpaint``: px to add (left, top,
        right, bottom), multiples of 8. Bad input raises a ``ValidationError`` whose ``field`` names the
        template's component and field (``mask.mask``); nothing is stored. The same inputs on the same lease
        answer with the same job, so a retry is safe.
        """
        files: dict[str, tuple[str, bytes]] = {}
        if source is not None:
            files["source_image"] = _image_file(source, "source")
        if mask is not None:
            files["mask"] = _image_file(mask, "mask.png")
        data: dict[str, Any] = only_given(source_from=source_from or ("upload" if source is not None else None),
                                          strength=strength, model_version=model_version)
        if outpaint is not None:
            if len(outpaint) != 4:
                raise ConfigurationError("outpaint is four numbers: left, top, right, bottom.")
            data.update({f"outpaint_{side}": int(px)
                         for side, px in zip(("left", "top", "right", "bottom"), outpaint, strict=True)})
        return cast(GenerationJob, self._http.post(
            project_path(project, f"tasks/{int(task)}/generate/edit/"), files=files or None,
            data={key: str(value) for key, value in data.items()}, idempotent=True))

    def skip(self, project: int, task: int, reason: str) -> dict[str, Any]:
        """Give a leased task back, with a reason."""
        return cast(dict[str, Any], self._http.post(project_path(project, f"tasks/{int(task)}/skip/"),
                                                    {"reason": reason}))


def _image_file(value: str | os.PathLike[str] | bytes, default_name: str) -> tuple[str, bytes]:
    """(file name, bytes) of an image given as bytes or a path."""
    if isinstance(value, bytes | bytearray):
        return default_name, bytes(value)
    path = Path(value)
    if not path.is_file():
        raise ConfigurationError(f"No image file {str(path)!r}.")
    return path.name, path.read_bytes()


class Annotations(Resource):
    """Annotations: every one for reviewers and admins, your own for annotators."""

    def list(self, project: int, *, status: str | None = None, task: int | None = None,
             annotator: str | None = None, created_after: str | None = None) -> Iterator[Annotation]:
        """Newest first. ``status``: submitted, superseded or rejected; ``created_after``: ISO 8601."""
        return cast(Iterator[Annotation], self._http.paginate(project_path(project, "annotations/"), {
            "status": status, "task": task, "annotator": annotator, "created_after": created_after,
            "page_size": 500}))

    def count(self, project: int, *, status: str | None = None, annotator: str | None = None) -> int:
        return self._http.count(project_path(project, "annotations/"), {"status": status, "annotator": annotator})

    def get(self, project: int, annotation: int) -> Annotation:
        return cast(Annotation, self._http.get(project_path(project, f"annotations/{int(annotation)}/")))

    def amend(self, project: int, annotation: int, ranking: Ranking, *, idempotency_key: str | None = None,
              answers: Mapping[str, Any] | None = None, rationale: str | None = None) -> Annotation:
        """Amend one of your recent annotations; the old one is kept, marked superseded."""
        body = only_given(ranking=ranking, answers=dict(answers) if answers is not None else None,
                          rationale=rationale)
        body["idempotency_key"] = idempotency_key or f"client-{uuid.uuid4()}"
        return cast(Annotation, self._http.post(project_path(project, f"annotations/{int(annotation)}/amend/"),
                                                body, idempotent=True))

    def reject(self, project: int, annotation: int, *, note: str = "") -> Annotation:
        """Reject an annotation in review; its task goes back to the queue."""
        return cast(Annotation, self._http.post(project_path(project, f"annotations/{int(annotation)}/reject/"),
                                                {"note": note}))

    def stream(self, project: int, *, status: str | Sequence[str] | None = None, annotator: str | None = None,
               template_version: int | None = None, since: str | None = None,
               timeout: float | None = 600.0) -> Iterator[AnnotationRecord]:
        """Every annotation of the project (ML engineers and admins), read from one streamed download
        (``annotations/export/``) as it arrives: constant memory, one request. Filters: ``status``
        (submitted, superseded, rejected; one or several), ``annotator`` (username), ``template_version``,
        ``since`` (ISO 8601: changed after it). Each record carries the task's key, metadata, prompt and
        images."""
        params = self._export_params(status, annotator, template_version, since, "jsonl")
        with self._http.stream(project_path(project, "annotations/export/"), params=params,
                               timeout=timeout) as response:
            for line in response.iter_lines():
                if line.strip():
                    yield cast(AnnotationRecord, json.loads(line))

    def export(self, project: int, path: str | os.PathLike[str], *, format: str = "jsonl",
               status: str | Sequence[str] | None = None, annotator: str | None = None,
               template_version: int | None = None, since: str | None = None,
               timeout: float | None = 600.0) -> Path:
        """Download every annotation in one request to ``path``: ``jsonl`` (one annotation a line) or ``json``
        (tasks with their annotations, for Label Studio-style tools). The file appears once complete."""
        target = Path(path)
        partial = target.with_name(f".{target.name}.part")
        params = self._export_params(status, annotator, template_version, since, format)
        try:
            with self._http.stream(project_path(project, "annotations/export/"), params=params,
                                   timeout=timeout) as response, partial.open("wb") as sink:
                for block in response.iter_bytes():
                    sink.write(block)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def to_pandas(self, project: int, **filters: Any) -> Any:
        """:meth:`stream` as a pandas DataFrame (needs the ``data`` extra)."""
        import pandas as pd  # an optional dependency: imported only when asked for

        return pd.DataFrame.from_records(list(self.stream(project, **filters)))

    @staticmethod
    def _export_params(status: str | Sequence[str] | None, annotator: str | None, template_version: int | None,
                       since: str | None, fmt: str) -> dict[str, Any]:
        statuses = [status] if isinstance(status, str) else list(status or [])
        return {"format": fmt, "status": ",".join(statuses) or None, "annotator": annotator,
                "template_version": template_version, "since": since}

    def wait(self, project: int, *, at_least: int, status: str = "submitted", timeout: float | None = None,
             poll_interval: float = 5.0, progress: bool = True) -> int:
        """Block until the project has ``at_least`` annotations with ``status`` (a progress bar shows
        how many); returns the count. Raises :class:`~pickwise_client.WaitTimeoutError` after ``timeout``."""
        return _wait.poll(
            lambda: self.count(project, status=status),
            finished=lambda n: n >= at_least,
            position=lambda n: (min(n, at_least), at_least, ""),
            description=f"project {project}: annotations", unit="annotation", progress=progress,
            timeout=timeout, poll_interval=poll_interval, sleep=self._context.sleep)
