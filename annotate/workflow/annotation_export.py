"""Every annotation of a project in one streamed response: JSON Lines, or JSON for Label Studio-style tools.

Rows come from a server-side cursor (``QuerySet.iterator(chunk_size=...)``, a named cursor on
PostgreSQL) in chunks; each chunk's task images are read with one query and the chunk is written out
before the next is fetched, so memory stays flat whatever the number of annotations. JSON columns
(ranking, answers, task metadata) are read as JSON text and written as they are, without a decode
and re-encode per row.

JSON Lines rows (``pandas.read_json(path, lines=True)`` reads them)::

    {"id", "task_id", "task_key", "task_metadata", "prompt", "annotator", "status", "ranking", "answers",
     "rationale", "duration_ms", "template_version", "supersedes", "images": [{"id", "url", "sha256",
     "origin"}], "created_at", "updated_at"}

The JSON form is one array of tasks, each ``{"id", "data": {"prompt", "images", "task_key",
"metadata"}, "annotations": [{"id", "completed_by", "result": [ranker, textarea], ...}]}``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db.models import F, QuerySet, TextField
from django.db.models.functions import Cast
from django.utils.dateparse import parse_datetime

from annotate.models import Annotation, AnnotationStatus, TaskImage
from annotate.workflow.selectors import image_url
from core.exceptions import ApplicationError
from core.parsing import query_id
from projects.models import Project

FORMATS = ("jsonl", "json")
CHUNK = 2000
FLUSH_BYTES = 256 * 1024


@dataclass(frozen=True)
class ExportFilters:
    statuses: tuple[str, ...] = ()
    annotator: str = ""  # username
    template_version: int | None = None
    since: dt.datetime | None = None  # changed after (created, amended, superseded or rejected)


def filters_parse(params: Any) -> ExportFilters:
    """Filters from query parameters; a bad value is an ``ApplicationError`` naming the parameter."""
    statuses = tuple(s for s in str(params.get("status") or "").split(",") if s)
    unknown = [s for s in statuses if s not in AnnotationStatus.values]
    if unknown:
        raise ApplicationError(f"status must be one or more of {', '.join(AnnotationStatus.values)} "
                               f"(comma-separated), not {unknown[0]!r}.", field="status")
    version = query_id(params, "template_version", blank_is_missing=True)
    since = None
    if params.get("since"):
        since = parse_datetime(str(params["since"]))
        if since is None:
            raise ApplicationError("since must be an ISO 8601 date-time, such as 2026-05-01T12:00:00Z.",
                                   field="since")
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
    annotator = str(params.get("annotator") or "")
    if len(annotator) > 150:
        raise ApplicationError("annotator is a username (at most 150 characters).", field="annotator")
    return ExportFilters(statuses=statuses, annotator=annotator,
                         template_version=version, since=since)


def annotations_for_export(*, project: Project, filters: ExportFilters, user: User | None = None,
                           by_task: bool = False) -> QuerySet[Annotation]:
    """The rows of the export (only ``user``'s own when given), as values with JSON columns as text."""
    queryset = Annotation.objects.filter(project=project)
    if user is not None:
        queryset = queryset.filter(annotator=user)
    if filters.statuses:
        queryset = queryset.filter(status__in=filters.statuses)
    if filters.annotator:
        queryset = queryset.filter(annotator__username=filters.annotator)
    if filters.template_version is not None:
        queryset = queryset.filter(template_version_id=filters.template_version)
    if filters.since is not None:
        queryset = queryset.filter(updated_at__gt=filters.since)
    return queryset.annotate(
        ranking_json=Cast("ranking", TextField()), answers_json=Cast("answers", TextField()),
        metadata_json=Cast(F("task__metadata"), TextField()),
    ).order_by(*(("task_id", "pk") if by_task else ("pk",))).values_list(
        "pk", "task_id", "task__external_key", "task__prompt__text", "annotator__username", "status",
        "rationale", "duration_ms", "template_version_id", "supersedes_id", "created_at", "updated_at",
        "ranking_json", "answers_json", "metadata_json",
    )


def _images(task_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Each task's images in display order: one query for a chunk's tasks."""
    found: dict[int, list[dict[str, Any]]] = {}
    for task_id, image_id, sha256, origin in TaskImage.objects.filter(task_id__in=task_ids).order_by(
        "task_id", "position"
    ).values_list("task_id", "image_id", "image__sha256", "image__origin"):
        found.setdefault(task_id, []).append({"id": str(image_id), "url": image_url(image_id), "sha256": sha256,
                                              "origin": origin})
    return found


def _chunks(queryset: QuerySet[Any]) -> Iterator[tuple[list[tuple[Any, ...]], dict[int, list[dict[str, Any]]]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in queryset.iterator(chunk_size=CHUNK):
        chunk.append(row)
        if len(chunk) >= CHUNK:
            yield chunk, _images(list({r[1] for r in chunk}))
            chunk = []
    if chunk:
        yield chunk, _images(list({r[1] for r in chunk}))


def _time(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def jsonl_lines(queryset: QuerySet[Any]) -> Iterator[bytes]:
    """The export as JSON Lines, in blocks of about ``FLUSH_BYTES``."""
    buffer: list[str] = []
    size = 0
    for chunk, images in _chunks(queryset):
        encoded = {task_id: _dumps(task_images) for task_id, task_images in images.items()}  # once per task
        for (pk, task_id, key, prompt, annotator, status, rationale, duration, version, supersedes, created,
             updated, ranking, answers, metadata) in chunk:
            line = (
                f'{{"id": {pk}, "task_id": {task_id}, "task_key": {_dumps(key)}, "task_metadata": {metadata}, '
                f'"prompt": {_dumps(prompt)}, "annotator": {_dumps(annotator)}, "status": "{status}", '
                f'"ranking": {ranking}, "answers": {answers}, "rationale": {_dumps(rationale)}, '
                f'"duration_ms": {_dumps(duration)}, "template_version": {_dumps(version)}, '
                f'"supersedes": {_dumps(supersedes)}, "images": {encoded.get(task_id, "[]")}, '
                f'"created_at": "{_time(created)}", "updated_at": "{_time(updated)}"}}\n'
            )
            buffer.append(line)
            size += len(line)
            if size >= FLUSH_BYTES:
                yield "".join(buffer).encode()
                buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode()


def label_studio_json(queryset: QuerySet[Any]) -> Iterator[bytes]:
    """The export as one JSON array of tasks with their annotations (rows ordered by task)."""
    yield b"["
    first = True
    current: dict[str, Any] | None = None
    for chunk, images in _chunks(queryset):
        out: list[str] = []
        for (pk, task_id, key, prompt, annotator, status, rationale, duration, version, supersedes, created,
             updated, ranking, answers, metadata) in chunk:
            if current is None or current["id"] != task_id:
                if current is not None:
                    out.append(("" if first else ",\n") + _dumps(current))
                    first = False
                task_images = images.get(task_id, [])
                current = {"id": task_id, "data": {"prompt": prompt, "images": [i["url"] for i in task_images],
                                                   "image_ids": [i["id"] for i in task_images], "task_key": key,
                                                   "metadata": json.loads(metadata)}, "annotations": []}
            result: list[dict[str, Any]] = [{"from_name": "ranking", "to_name": "images", "type": "ranker",
                                             "value": {"ranker": {"rank": json.loads(ranking)}}}]
            if rationale:
                result.append({"from_name": "rationale", "to_name": "images", "type": "textarea",
                               "value": {"text": [rationale]}})
            current["annotations"].append({
                "id": pk, "completed_by": annotator, "status": status, "result": result,
                "answers": json.loads(answers), "lead_time": duration / 1000 if duration is not None else None,
                "template_version": version, "supersedes": supersedes, "was_cancelled": False,
                "created_at": _time(created), "updated_at": _time(updated),
            })
        if out:
            yield "".join(out).encode()
    if current is not None:
        yield (("" if first else ",\n") + _dumps(current)).encode()
    yield b"]\n"
