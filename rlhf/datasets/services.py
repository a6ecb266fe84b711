"""Creating preference exports and building them (the Celery task calls ``preference_export_build``).

The Django side of exports; the row logic, formats and dataset card are the Django-free :mod:`rlhf.exports`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Prefetch, QuerySet

from annotate.models import (
    Annotation,
    AnnotationStatus,
    AnnotationTask,
    AnnotationTemplateVersion,
    TaskImage,
)
from core import jobs
from core.audit import audit_record
from core.exceptions import ApplicationError
from core.models import JobPhase
from core.parsing import check_length, parse_bool, parse_ids, parse_int
from core.tasks import enqueue_on_commit
from generation.models import GeneratedImage, ImageOrigin, ModelVersion
from generation.selectors import image_url
from projects.models import Project, ProjectMembership
from projects.webhooks.events import emit, url_for
from rlhf.datasets.storage import ObjectStore
from rlhf.exports.aggregate import ComparisonLog, count_votes, fit_bradley_terry, task_agreement
from rlhf.exports.card import render_card
from rlhf.exports.formats import (
    IMAGE_STRENGTH_SCHEMA,
    LISTWISE_SCHEMA,
    PAIR_SCHEMA,
    JsonlWriter,
    ParquetRowWriter,
    jsonl_row,
    save_hf_pairs,
    save_trl_preferences,
)
from rlhf.exports.pairs import TIE_POLICIES, Pair, expand_ranking
from rlhf.exports.splits import SplitSpec
from rlhf.models import PreferenceExport, RunStatus

logger = logging.getLogger(__name__)

EXPORT_PREFERENCES = "rlhf.tasks.export_preferences"
GOLD_CHOICES = ("exclude", "include", "only")
# Where an export's files go: the server's PICKWISE_EXPORT_DIR, or the bucket of EXPORT_STORAGE_URL
# (the Parquet and JSONL formats; hf and trl are datasets' save_to_disk folders, written on the server).
DESTINATIONS = ("server", "object_store")
OBJECT_STORE_FORMATS = ("pickapic", "listwise", "jsonl")
_PLACEHOLDER_UUID = uuid.UUID(int=0)


@dataclass(frozen=True)
class ExportFilters:
    """Which rankings an export takes. Every field is optional; the defaults take them all."""

    template_versions: tuple[int, ...] = ()
    model_versions: tuple[int, ...] = ()  # a pair is kept when both images come from these
    annotators: tuple[int, ...] = ()
    date_from: dt.date | None = None  # inclusive, by the annotation's submission date (UTC)
    date_to: dt.date | None = None  # inclusive
    exclude_rejected: bool = True
    min_agreement: float | None = None  # per-task agreement in [0, 1]; tasks below are dropped
    gold: str = "exclude"  # exclude | include | only
    split: SplitSpec = field(default_factory=SplitSpec)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["template_versions"] = list(self.template_versions)
        data["model_versions"] = list(self.model_versions)
        data["annotators"] = list(self.annotators)
        data["date_from"] = self.date_from.isoformat() if self.date_from else None
        data["date_to"] = self.date_to.isoformat() if self.date_to else None
        return data

    def described(self) -> dict[str, Any]:
        """Only the filters that narrow the export, for the dataset card."""
        defaults = ExportFilters().as_json()
        return {k: v for k, v in self.as_json().items() if k != "split" and v != defaults[k]}


def _ids(value: Any, name: str) -> tuple[int, ...]:
    if value in (None, "", []):
        return ()
    return tuple(sorted(parse_ids(value, field=name)))  # ids in a bigint's range: 1e30 is a 400, not a crash


def _date(value: Any, name: str) -> dt.date | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ApplicationError(f"{name} must be a date as YYYY-MM-DD, got {value!r}.", field=name) from None


def _bool(value: Any, name: str, default: bool) -> bool:
    if value in (None, ""):
        return default
    try:
        return parse_bool(value)
    except ValueError:
        raise ApplicationError(f"{name} must be true or false.", field=name) from None


def _fraction(value: Any, name: str, default: float) -> float:
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApplicationError(f"{name} must be a number between 0 and 1.", field=name) from None
    if not 0.0 <= number <= 1.0:
        raise ApplicationError(f"{name} must lie between 0 and 1, got {number}.", field=name)
    return number


@dataclass(frozen=True)
class ExportRequest:
    format: str
    tie_policy: str
    weight_per_prompt: bool
    include_images: bool
    filters: ExportFilters
    name: str = ""
    destination: str = "server"


def _destination(value: Any, export_format: str) -> str:
    destination = str(value or "server")
    if destination not in DESTINATIONS:
        raise ApplicationError(f"Unknown destination {destination!r}; choose one of {', '.join(DESTINATIONS)}.",
                               field="destination")
    if destination == "object_store":
        if not settings.EXPORT_STORAGE_URL:
            raise ApplicationError("No object store is configured for exports (EXPORT_STORAGE_URL is empty).",
                                   field="destination")
        if export_format not in OBJECT_STORE_FORMATS:
            raise ApplicationError(
                f"Format {export_format!r} is written on the server; the object store takes "
                f"{', '.join(OBJECT_STORE_FORMATS)}.", field="destination")
    return destination


def export_request_parse(data: dict[str, Any]) -> ExportRequest:
    """Validate what a form or an API client sent; errors name the field."""
    export_format = str(data.get("format") or "")
    if export_format not in PreferenceExport.Format.values:
        raise ApplicationError(
            f"Unknown format {export_format!r}; choose one of {', '.join(PreferenceExport.Format.values)}.",
            field="format",
        )
    tie_policy = str(data.get("tie_policy") or "soft")
    if tie_policy not in TIE_POLICIES:
        raise ApplicationError(
            f"Unknown tie policy {tie_policy!r}; choose one of {', '.join(TIE_POLICIES)}.", field="tie_policy"
        )
    date_from, date_to = _date(data.get("date_from"), "date_from"), _date(data.get("date_to"), "date_to")
    if date_from and date_to and date_from > date_to:
        raise ApplicationError("date_from is after date_to.", field="date_from")
    gold = str(data.get("gold") or "exclude")
    if gold not in GOLD_CHOICES:
        raise ApplicationError(f"gold must be one of {', '.join(GOLD_CHOICES)}.", field="gold")
    min_agreement = data.get("min_agreement")
    train = _fraction(data.get("split_train"), "split_train", 0.8)
    validation = _fraction(data.get("split_validation"), "split_validation", 0.1)
    test = _fraction(data.get("split_test"), "split_test", round(1.0 - train - validation, 10))
    try:
        seed = parse_int(data.get("split_seed") or 0, field="split_seed", minimum=0)
        split = SplitSpec(train=train, validation=validation, test=test, seed=seed)
    except (TypeError, ValueError) as exc:
        raise ApplicationError(f"Bad split: {exc}", field="split_train") from None
    filters = ExportFilters(
        template_versions=_ids(data.get("template_versions"), "template_versions"),
        model_versions=_ids(data.get("model_versions"), "model_versions"),
        annotators=_ids(data.get("annotators"), "annotators"),
        date_from=date_from,
        date_to=date_to,
        exclude_rejected=_bool(data.get("exclude_rejected"), "exclude_rejected", True),
        min_agreement=None if min_agreement in (None, "") else _fraction(min_agreement, "min_agreement", 0.0),
        gold=gold,
        split=split,
    )
    name = check_length(str(data.get("name") or "").strip(), field="name",
                        maximum=PreferenceExport._meta.get_field("name").max_length or 200)
    return ExportRequest(
        format=export_format,
        tie_policy=tie_policy,
        weight_per_prompt=_bool(data.get("weight_per_prompt"), "weight_per_prompt", False),
        include_images=_bool(data.get("include_images"), "include_images", True),
        filters=filters,
        name=name,
        destination=_destination(data.get("destination"), export_format),
    )


def filters_from_json(data: dict[str, Any]) -> ExportFilters:
    split = data.get("split") or {}
    return ExportFilters(
        template_versions=tuple(data.get("template_versions") or ()),
        model_versions=tuple(data.get("model_versions") or ()),
        annotators=tuple(data.get("annotators") or ()),
        date_from=_date(data.get("date_from"), "date_from"),
        date_to=_date(data.get("date_to"), "date_to"),
        exclude_rejected=bool(data.get("exclude_rejected", True)),
        min_agreement=data.get("min_agreement"),
        gold=data.get("gold", "exclude"),
        split=SplitSpec(**split) if split else SplitSpec(),
    )


def _check_filter_ids(*, project: Project, filters: ExportFilters) -> None:
    """Every id a filter names must be one of this project's (or, for model versions, a registered one);
    another project's template versions or annotators answer as ids that do not exist."""
    known = {
        "template_versions": set(AnnotationTemplateVersion.objects.filter(
            pk__in=filters.template_versions, template__project=project).values_list("pk", flat=True)),
        "model_versions": set(ModelVersion.objects.filter(pk__in=filters.model_versions).values_list("pk", flat=True)),
        "annotators": set(Annotation.objects.filter(project=project, annotator_id__in=filters.annotators)
                          .values_list("annotator_id", flat=True).distinct())
        | set(ProjectMembership.objects.filter(project=project, user_id__in=filters.annotators)
              .values_list("user_id", flat=True)),
    }
    labels = {"template_versions": "template version", "model_versions": "model version", "annotators": "annotator"}
    for name, label in labels.items():
        missing = [pk for pk in getattr(filters, name) if pk not in known[name]]
        if missing:
            where = "" if name == "model_versions" else " in this project"
            raise ApplicationError(f"No {label} {missing[0]}{where}.", field=name)


@transaction.atomic
def preference_export_create(*, project: Project, user: User, request: ExportRequest) -> PreferenceExport:
    _check_filter_ids(project=project, filters=request.filters)
    export = PreferenceExport.objects.create(
        project=project,
        created_by=user,
        name=request.name,
        format=request.format,
        tie_policy=request.tie_policy,
        weight_per_prompt=request.weight_per_prompt,
        include_images=request.include_images,
        filters=request.filters.as_json(),
        storage_url=settings.EXPORT_STORAGE_URL if request.destination == "object_store" else "",
        max_attempts=settings.JOB_MAX_ATTEMPTS,
    )
    audit_record(event="export.created", instance=export, actor=user, project_id=project.pk,
                 details={"format": export.format, "tie_policy": export.tie_policy, "filters": export.filters,
                          "storage_url": export.storage_url})
    enqueue_on_commit(EXPORT_PREFERENCES, export.pk)
    return export


def export_root() -> Path:
    return Path(settings.PICKWISE_EXPORT_DIR)


def export_directory(export: PreferenceExport) -> Path:
    """The export's data files: ``PICKWISE_EXPORT_DIR/data/<content hash>/``, keyed by content, never by id.

    Two exports with the same data share the directory, and a row restored from a backup finds exactly
    the data its hash names (or nothing), never another export's files that reused its id. An export
    built before files were keyed by content is moved there the first time it is read, after its
    files are checked against its hash. Without a hash (not built yet) the path names no directory.
    """
    root = export_root() / "data"
    if not export.content_hash:
        return root / f"unbuilt-{export.pk}"
    directory = root / export.content_hash
    if not directory.is_dir():
        legacy = export_root() / str(export.pk)
        if legacy.is_dir() and _hash_directory(legacy) == export.content_hash:
            root.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # another process moved it first
                legacy.rename(directory)
    return directory


def export_store(export: PreferenceExport) -> ObjectStore | None:
    """The object store holding the export's files, or ``None`` for files on the server."""
    return ObjectStore.from_url(export.storage_url) if export.storage_url else None


def export_data_url(export: PreferenceExport) -> str | None:
    """``s3://bucket/prefix/data/<hash>`` of a built object-store export (what ``datasets`` reads); else None."""
    store = export_store(export)
    return store.path_url("data", export.content_hash) if store and export.content_hash else None


def export_files_present(export: PreferenceExport) -> bool:
    if not export.content_hash:
        return False
    store = export_store(export)
    return store.exists(store.key("data", export.content_hash)) if store else export_directory(export).is_dir()


def export_card(export: PreferenceExport) -> str:
    """The dataset card (README.md) of a finished export, rendered from its row."""
    filters = filters_from_json(export.filters)
    counts = dict(export.counts or {})
    external = int(counts.get("external_images", 0))
    return render_card(
        title=export.name or f"Pickwise export {export.pk}",
        source_project=export.project.name,
        export_format=export.get_format_display(),
        created_at=export.finished_at or export.created_at,
        tie_policy=export.tie_policy,
        filters=filters.described(),
        counts=counts,
        split_counts=export.split_counts or {},
        split_seed=filters.split.seed,
        content_hash=export.content_hash,
        weighting="1 / (pairs of the prompt)" if export.weight_per_prompt else "every pair weighs 1",
        notes=[f"External images are imported (origin `external`): no seed to regenerate; their seed, "
               f"parameters and model version id are empty ({external} in this export)"] if external else [],
    )


# --- building ------------------------------------------------------------------------------


def annotations_for_export(*, project: Project, filters: ExportFilters) -> QuerySet[Annotation]:
    """The annotations an export takes, ordered by task so one task's rankings arrive together."""
    statuses = [AnnotationStatus.SUBMITTED] + ([] if filters.exclude_rejected else [AnnotationStatus.REJECTED])
    queryset = Annotation.objects.filter(project=project, status__in=statuses)
    if filters.template_versions:
        queryset = queryset.filter(template_version_id__in=filters.template_versions)
    if filters.annotators:
        queryset = queryset.filter(annotator_id__in=filters.annotators)
    if filters.date_from:
        queryset = queryset.filter(created_at__date__gte=filters.date_from)
    if filters.date_to:
        queryset = queryset.filter(created_at__date__lte=filters.date_to)
    if filters.gold == "exclude":
        queryset = queryset.filter(task__is_gold=False)
    elif filters.gold == "only":
        queryset = queryset.filter(task__is_gold=True)
    return queryset.order_by("task_id", "pk")


@dataclass
class TaskGroup:
    task: AnnotationTask
    images: dict[str, GeneratedImage]
    annotations: list[Annotation]


def _task_groups(queryset: QuerySet[Annotation], *, chunk_size: int = 500) -> Iterator[TaskGroup]:
    task_images = Prefetch(
        "task__task_images",
        queryset=TaskImage.objects.select_related("image__model_version").order_by("position"),
    )
    rows = (
        queryset.select_related("task__prompt")
        .prefetch_related(task_images)
        .only(
            "id", "task_id", "annotator_id", "template_version_id", "ranking", "answers", "rationale",
            "created_at", "status", "task__id", "task__is_gold", "task__external_key", "task__metadata",
            "task__prompt__id", "task__prompt__text",
        )
        .iterator(chunk_size=chunk_size)
    )
    for _, task_rows in groupby(rows, key=lambda a: a.task_id):
        batch = list(task_rows)
        task = batch[0].task
        images = {str(ti.image_id): ti.image for ti in task.task_images.all()}
        yield TaskGroup(task=task, images=images, annotations=batch)


class ExportStopped(Exception):  # noqa: N818 - a signal, not an error
    """The export was cancelled or taken back from this worker while it was being built."""


class ExportBuilder:
    """Streams one export's rows from the database into its files (see the module docstring).

    Progress goes to ``heartbeat`` (which renews the export's lease on its timer); once the export is
    no longer this worker's, the build stops with :class:`ExportStopped`.
    """

    def __init__(self, export: PreferenceExport, heartbeat: jobs.JobHeartbeat | None = None) -> None:
        self.export = export
        self.heartbeat = heartbeat
        self.filters = filters_from_json(export.filters)
        self.queryset = annotations_for_export(project=export.project, filters=self.filters)
        self.counts = {"rankings": 0, "pairs": 0, "tasks": 0, "images": 0}
        self.split_counts = {"train": 0, "validation": 0, "test": 0}
        self.comparisons = ComparisonLog()
        self.compared_images: dict[str, int] = {}
        self.external_images: set[str] = set()

    # -- rows --
    def _kept_pairs(self, group: TaskGroup) -> list[tuple[Annotation, Pair]]:
        keep_versions = set(self.filters.model_versions)
        pairs: list[tuple[Annotation, Pair]] = []
        for annotation in group.annotations:
            ranked = {image for tie_group in annotation.ranking for image in tie_group}
            unranked = [image for image in group.images if image not in ranked]
            for pair in expand_ranking(annotation.ranking, tie_policy=self.export.tie_policy, unranked=unranked):
                if keep_versions:
                    versions = {group.images[str(pair.image_0)].model_version_id,
                                group.images[str(pair.image_1)].model_version_id}
                    if not versions <= keep_versions:
                        continue
                pairs.append((annotation, pair))
        return pairs

    def _groups(self) -> Iterator[tuple[TaskGroup, list[tuple[Annotation, Pair]], float | None]]:
        for group in _task_groups(self.queryset):
            pairs = self._kept_pairs(group)
            by_annotation: dict[int, list[Pair]] = {}
            for annotation, pair in pairs:
                by_annotation.setdefault(annotation.pk, []).append(pair)
            agreement = task_agreement(list(by_annotation.values()))
            if self.filters.min_agreement is not None and (agreement or 0.0) < self.filters.min_agreement:
                continue
            yield group, pairs, agreement

    def _pair_weights(self) -> dict[int, float]:
        """First pass for per-prompt weighting: 1 / (pairs of that prompt)."""
        per_prompt: dict[int, int] = {}
        for group, pairs, _ in self._groups():
            per_prompt[group.task.prompt_id] = per_prompt.get(group.task.prompt_id, 0) + len(pairs)
        return {prompt: 1.0 / n for prompt, n in per_prompt.items() if n}

    def pair_rows(self, *, with_bytes: bool, weights: dict[int, float] | None) -> Iterator[dict[str, Any]]:
        for group, pairs, agreement in self._groups():
            self.counts["tasks"] += 1
            self.counts["rankings"] += len(group.annotations)
            prompt = group.task.prompt
            split = self.filters.split.assign(str(prompt.pk))
            weight = weights.get(prompt.pk, 0.0) if weights is not None else 1.0
            votes = count_votes(pair for _, pair in pairs)
            # Per-image columns are computed once per task, not once per pair.
            columns = {uid: self._image_columns(image, with_bytes=with_bytes) for uid, image in group.images.items()}
            task_key, task_metadata = group.task.external_key, json.dumps(group.task.metadata or {}, sort_keys=True)
            for annotation, pair in pairs:
                zero, one = columns[str(pair.image_0)], columns[str(pair.image_1)]
                low, high = sorted((pair.image_0, pair.image_1), key=str)
                vote = votes[(low, high)]
                zero_is_low = str(pair.image_0) == str(low)
                self.comparisons.add(pair)
                self.counts["pairs"] += 1
                if self.counts["pairs"] > settings.EXPORT_MAX_PAIRS:
                    raise ApplicationError(
                        f"The export would hold more than {settings.EXPORT_MAX_PAIRS} pairs (EXPORT_MAX_PAIRS); "
                        "narrow the filters.", field="filters")
                self.split_counts[split] += 1
                row = {
                    "caption": prompt.text,
                    "label_0": pair.label_0,
                    "label_1": pair.label_1,
                    "user_id": annotation.annotator_id,
                    "ranking_id": annotation.pk,
                    "are_different": True,
                    "has_label": True,
                    "best_image_uid": "" if pair.tie else zero["uid"],
                    "created_at": annotation.created_at,
                    "prompt_id": str(prompt.pk),
                    "task_id": group.task.pk,
                    "template_version_id": annotation.template_version_id,
                    "tie": pair.tie,
                    "weight": weight,
                    "split": split,
                    "votes_0": vote.low_wins if zero_is_low else vote.high_wins,
                    "votes_1": vote.high_wins if zero_is_low else vote.low_wins,
                    "votes_tie": vote.ties,
                    "majority_uid": "" if vote.majority is None else str(vote.majority),
                    "task_agreement": agreement,
                    "task_key": task_key,
                    "task_metadata": task_metadata,
                }
                for side, image in (("0", zero), ("1", one)):
                    row[f"jpg_{side}"] = image["bytes"]
                    row[f"model_{side}"] = image["model"]
                    row[f"image_{side}_uid"] = image["uid"]
                    row[f"image_{side}_url"] = image["url"]
                    row[f"image_{side}_path"] = image["path"]
                    row[f"model_version_id_{side}"] = image["model_version_id"]
                    row[f"seed_{side}"] = image["seed"]
                    row[f"params_{side}"] = image["params"]
                    row[f"sha256_{side}"] = image["sha256"]
                    row[f"origin_{side}"] = image["origin"]
                    for column in ("edit_kind", "edit", "source_path", "mask_path"):
                        row[f"{column}_{side}"] = image[column]
                    row[f"source_{side}"], row[f"mask_{side}"] = image["source_bytes"], image["mask_bytes"]
                    if image["origin"] == ImageOrigin.EXTERNAL:
                        self.external_images.add(image["uid"])
                yield row
            self._progress()

    def _image_columns(self, image: GeneratedImage, *, with_bytes: bool) -> dict[str, Any]:
        """One image's columns. An external (imported) image has no model version, seed or parameters: those
        columns are empty and ``origin`` says ``external`` (the card counts them: no seed to regenerate)."""
        return {
            "uid": str(image.pk),
            "url": self._url(image),
            "path": image.storage_key,
            "bytes": _read(image.storage_key) if with_bytes else None,
            "model": image.model_label,
            "model_version_id": image.model_version_id,
            "seed": image.seed,
            "params": json.dumps(image.params, sort_keys=True) if image.params is not None else "",
            "sha256": image.sha256,
            "origin": image.origin,
            **self._edit_columns(image, with_bytes=with_bytes),
        }

    _edit_files: dict[str, bytes] | None = None

    def _edit_columns(self, image: GeneratedImage, *, with_bytes: bool) -> dict[str, Any]:
        """An edited image's kind, provenance JSON, source and mask (paths, and bytes when asked; a task's
        candidates share their content-keyed source, read once)."""
        if self._edit_files is None:
            self._edit_files = {}
        files = self._edit_files

        def read(key: str) -> bytes | None:
            if not key or not with_bytes:
                return None
            if key not in files:
                if len(files) >= 64:  # a task's candidates share theirs: keep only the recent ones
                    files.clear()
                files[key] = _read(key)
            return files[key]

        source, mask = image.edit_source_key, image.edit_mask_key
        return {"edit_kind": image.edit_kind, "edit": json.dumps(image.edit, sort_keys=True) if image.edit else "",
                "source_path": source, "mask_path": mask, "source_bytes": read(source), "mask_bytes": read(mask)}

    _url_template: str | None = None

    def _url(self, image: GeneratedImage) -> str:
        """``generation.selectors.image_url`` without a URL reverse per image (it dominated the profile)."""
        if self._url_template is None:
            self._url_template = image_url(GeneratedImage(pk=_PLACEHOLDER_UUID))
        return self._url_template.replace(str(_PLACEHOLDER_UUID), str(image.pk))

    def listwise_rows(self) -> Iterator[dict[str, Any]]:
        for group, _, _ in self._groups():
            self.counts["tasks"] += 1
            prompt = group.task.prompt
            split = self.filters.split.assign(str(prompt.pk))
            columns = {uid: self._image_columns(image, with_bytes=self.export.include_images)
                       for uid, image in group.images.items()}
            for annotation in group.annotations:
                self.counts["rankings"] += 1
                self.split_counts[split] += 1
                rank_of: dict[str, int] = {}
                for tie_group in annotation.ranking:
                    rank = len(rank_of)  # competition ranking: a tie group shares the best free rank
                    for image in tie_group:
                        rank_of[str(image)] = rank
                last = len(rank_of)
                ordered = sorted(columns.values(), key=lambda im: (rank_of.get(im["uid"], last), im["uid"]))
                self.external_images.update(im["uid"] for im in ordered if im["origin"] == ImageOrigin.EXTERNAL)
                answers = annotation.answers or {}
                yield {
                    "ranking_id": annotation.pk,
                    "task_id": group.task.pk,
                    "prompt_id": str(prompt.pk),
                    "caption": prompt.text,
                    "user_id": annotation.annotator_id,
                    "template_version_id": annotation.template_version_id,
                    "images": [im["bytes"] for im in ordered],
                    "ranks": [rank_of.get(im["uid"], last) for im in ordered],
                    "ranked": [im["uid"] in rank_of for im in ordered],
                    "image_uids": [im["uid"] for im in ordered],
                    "image_urls": [im["url"] for im in ordered],
                    "image_paths": [im["path"] for im in ordered],
                    "models": [im["model"] for im in ordered],
                    "model_version_ids": [im["model_version_id"] for im in ordered],
                    "seeds": [im["seed"] for im in ordered],
                    "sha256s": [im["sha256"] for im in ordered],
                    "origins": [im["origin"] for im in ordered],
                    "task_key": group.task.external_key,
                    "task_metadata": json.dumps(group.task.metadata or {}, sort_keys=True),
                    "has_ties": any(len(g) > 1 for g in annotation.ranking),
                    "rationale": annotation.rationale,
                    "ratings": json.dumps(self._answers_of_type(annotation, answers, "rating")),
                    "flags": json.dumps(self._answers_of_type(annotation, answers, "flags")),
                    "weight": 1.0,
                    "created_at": annotation.created_at,
                    "split": split,
                    "edit_kinds": [im["edit_kind"] for im in ordered],
                    "edits": [im["edit"] for im in ordered],
                    "sources": [im["source_bytes"] for im in ordered],
                    "masks": [im["mask_bytes"] for im in ordered],
                    "source_paths": [im["source_path"] for im in ordered],
                    "mask_paths": [im["mask_path"] for im in ordered],
                }
            self._progress()

    _component_types: dict[int | None, dict[str, str]] | None = None

    def _answers_of_type(self, annotation: Annotation, answers: dict[str, Any], kind: str) -> dict[str, Any]:
        """The answers of the template's components of ``kind`` (rating or flags), by component name."""
        if self._component_types is None:
            self._component_types = {}
        version_id = annotation.template_version_id
        if version_id not in self._component_types:
            version = AnnotationTemplateVersion.objects.filter(pk=version_id).first() if version_id else None
            components = (version.schema or {}).get("components", []) if version else []
            self._component_types[version_id] = {c["name"]: c["type"] for c in components}
        types = self._component_types[version_id]
        return {name: value for name, value in answers.items() if types.get(name) == kind}

    # -- progress and cancellation --
    _last_progress = 0.0
    _done_groups = 0

    def _progress(self) -> None:
        self._done_groups += 1
        total = max(self.total_tasks, 1)
        fraction = min(0.95, self._done_groups / total)
        if fraction - self._last_progress >= 0.02 and self.heartbeat is not None:
            self._last_progress = fraction
            self.heartbeat.set(progress=fraction)
            if self.heartbeat.should_stop():
                raise ExportStopped

    # -- the whole build --
    def build(self, partial: Path | StoreFolder) -> Path | StoreFolder:
        """Write the export's files into ``partial`` (a directory, or an object-store folder, of this attempt's
        own) and return it."""
        self.total_tasks = self.queryset.values("task_id").distinct().count()
        if isinstance(partial, StoreFolder):
            partial.store.check()
        _remove(partial)
        if isinstance(partial, Path):
            partial.mkdir(parents=True)
        weights = self._pair_weights() if self.export.weight_per_prompt else None
        fmt = self.export.format
        if fmt == PreferenceExport.Format.PICKAPIC:
            with _output(partial, "pairs.parquet") as out, ParquetRowWriter(out, PAIR_SCHEMA) as writer:
                for row in self.pair_rows(with_bytes=self.export.include_images, weights=weights):
                    writer.write(row)
            self._write_strengths(partial)
        elif fmt == PreferenceExport.Format.LISTWISE:
            with (_output(partial, "rankings.parquet") as out,
                  ParquetRowWriter(out, LISTWISE_SCHEMA, row_group_size=2000) as writer):
                for row in self.listwise_rows():
                    writer.write(row)
        elif fmt == PreferenceExport.Format.JSONL:
            with _output(partial, "pairs.jsonl") as out, JsonlWriter(out) as writer:
                for row in self.pair_rows(with_bytes=False, weights=weights):
                    writer.write(jsonl_row(row))
            self._write_strengths(partial)
        else:
            if not isinstance(partial, Path):
                raise ApplicationError(f"Format {fmt!r} is written on the server.", field="destination")
            saver = save_hf_pairs if fmt == PreferenceExport.Format.HF else save_trl_preferences
            passes = 0

            def rows() -> Iterator[dict[str, Any]]:
                nonlocal passes
                passes += 1
                if passes > 1:  # the writer reads the rows more than once; count the last pass
                    self.counts.update(rankings=0, pairs=0, tasks=0)
                    self.split_counts = dict.fromkeys(self.split_counts, 0)
                    self.comparisons = ComparisonLog()
                yield from self.pair_rows(with_bytes=False, weights=weights)

            saver(rows, partial / "dataset", image_loader=_read)
            if fmt == PreferenceExport.Format.TRL:
                self.counts["strict_pairs"] = _trl_rows(partial / "dataset")
        self.counts["images"] = len(self.comparisons.ids) if fmt != PreferenceExport.Format.LISTWISE else 0
        if self.external_images:
            self.counts["external_images"] = len(self.external_images)
        if isinstance(partial, Path):
            self.content_hash = _hash_directory(partial)
        else:
            self.content_hash = partial.store.content_hash(partial.key)
        return partial

    def _write_strengths(self, directory: Path | StoreFolder) -> None:
        fit = fit_bradley_terry(self.comparisons)
        first, second, _ = self.comparisons.arrays()
        seen: dict[int, int] = {}
        for index in [*first.tolist(), *second.tolist()]:
            seen[index] = seen.get(index, 0) + 1
        by_index = {index: identifier for identifier, index in self.comparisons.ids.items()}
        with (_output(directory, "image_strengths.parquet") as out,
              ParquetRowWriter(out, IMAGE_STRENGTH_SCHEMA) as writer):
            for index, comparisons in sorted(seen.items()):
                identifier = by_index[index]
                writer.write({
                    "image_uid": str(identifier),
                    "bt_strength": fit.strengths[identifier],
                    "bt_log_strength": fit.log_strengths[identifier],
                    "comparisons": comparisons,
                })


@dataclass(frozen=True)
class StoreFolder:
    """A folder (key prefix) in an object store: where one attempt of an object-store export is built."""

    store: ObjectStore
    key: str


@contextlib.contextmanager
def _output(folder: Path | StoreFolder, name: str) -> Iterator[Any]:
    """A file of the export: a path on disk, or a streamed upload to the store (closed, so finished, on the way
    out; a stream left unfinished by a killed worker never becomes an object)."""
    if isinstance(folder, Path):
        yield folder / name
        return
    with folder.store.open_output(f"{folder.key}/{name}") as stream:
        yield stream


def _remove(folder: Path | StoreFolder) -> None:
    if isinstance(folder, Path):
        shutil.rmtree(folder, ignore_errors=True)
    else:
        folder.store.delete(folder.key)


def _read(storage_key: str) -> bytes:
    with default_storage.open(storage_key, "rb") as handle:
        return handle.read()


def export_partial_directory(export: PreferenceExport, attempt: int) -> Path:
    """Where attempt ``attempt`` builds the export's files before they move to their content-keyed
    directory (whole or not at all)."""
    return export_root() / "building" / f"{export.pk}-attempt-{attempt}"


def export_partial_folder(export: PreferenceExport, attempt: int) -> Path | StoreFolder:
    """Where attempt ``attempt`` builds the export: on the server, or under the store's ``building/``."""
    store = export_store(export)
    if store is None:
        return export_partial_directory(export, attempt)
    return StoreFolder(store, store.key("building", f"{export.pk}-attempt-{attempt}"))


def _publish(partial: Path | StoreFolder, content_hash: str) -> None:
    if isinstance(partial, Path):
        _move_into_place(partial, content_hash)
    else:
        partial.store.publish(partial.key, partial.store.key("data", content_hash))


def _move_into_place(partial: Path, content_hash: str) -> Path:
    """The built files become ``data/<content_hash>``; when the same data was exported before (or a
    concurrent export of it got there first) those files are these, and the copy is dropped."""
    final = export_root() / "data" / content_hash
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir():
        shutil.rmtree(partial, ignore_errors=True)
    else:
        try:
            partial.rename(final)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    return final


def _hash_directory(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "README.md"):
        digest.update(str(path.relative_to(directory)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _trl_rows(directory: Path) -> int:
    import datasets  # lazy: the datasets library costs a second to import, and only the trl format needs it

    return len(datasets.load_from_disk(str(directory)))


def export_event(export_id: int) -> dict[str, Any]:
    """The ``data`` of ``export.finished`` and ``export.failed``: ids, counts and URLs, never the data."""
    export = PreferenceExport.objects.get(pk=export_id)
    done = export.status == RunStatus.SUCCEEDED
    return {"export": {
        "id": export.pk, "name": export.name, "format": export.format, "status": export.status,
        "counts": export.counts, "split_counts": export.split_counts, "content_hash": export.content_hash or None,
        "error": export.error or None, "url": url_for("rlhf:export_detail", export.pk),
        "api_url": url_for("export-detail", export.pk),
        "download_url": url_for("rlhf:export_download", export.pk) if done else None,
        "api_download_url": url_for("export-download", export.pk) if done else None,
    }}


def export_failed_announce(export: PreferenceExport) -> None:
    """``export.failed``, whoever failed the export: its worker or the reaper (``jobs_reap``'s ``on_fail``)."""
    emit("export.failed", project_id=export.project_id, data=lambda: export_event(export.pk))


def preference_export_build(*, export_id: int) -> PreferenceExport | None:
    """Build one export; a no-op for an export that is not queued (finished, or another worker's).

    The export is claimed under a lease (its heartbeat renews it while rows stream) and written into a
    directory of this attempt's own; the files become the export, and the export succeeded, in one step
    that only the lease holder can take, so a worker whose export was taken back never replaces the files.
    """
    claimed = jobs.job_claim(PreferenceExport, export_id, phase=JobPhase.EXPORTING)
    if claimed is None:
        return PreferenceExport.objects.filter(pk=export_id).first()
    export, lease = claimed
    export = PreferenceExport.objects.select_related("project").get(pk=export.pk)
    partial = export_partial_folder(export, lease.attempt)
    with jobs.JobHeartbeat(lease) as heartbeat:
        builder = ExportBuilder(export, heartbeat)
        try:
            builder.build(partial)
            if isinstance(partial, StoreFolder):
                # The store's server-side copies take a while for a large export: made here, under the lease
                # (its heartbeat keeps running), not under the row lock below. ``data/<hash>`` is keyed by
                # content, so a worker that loses the lease during the copy wrote the bytes the owner would.
                _publish(partial, builder.content_hash)
        except ExportStopped:
            _remove(partial)
            return PreferenceExport.objects.get(pk=export_id)
        except Exception as exc:
            logger.exception("export %s failed", export_id)
            with contextlib.suppress(Exception):  # an unreachable store: nothing of this attempt got there
                _remove(partial)
            message = exc.message if isinstance(exc, ApplicationError) else f"{type(exc).__name__}: {exc}"
            with transaction.atomic():
                if jobs.job_fail(lease, message):
                    export_failed_announce(export)
            raise
    with transaction.atomic():
        if jobs.job_lock_owned(lease) is None:  # cancelled or taken back while the last rows were written
            _remove(partial)
        else:
            if isinstance(partial, Path):  # a rename: instant, so under the lock
                _publish(partial, builder.content_hash)
            jobs.job_finish(lease, counts=builder.counts, split_counts=builder.split_counts,
                            content_hash=builder.content_hash)
            emit("export.finished", project_id=export.project_id, data=lambda: export_event(export_id))
    for leftover in final_leftovers(export):
        shutil.rmtree(leftover, ignore_errors=True)
    return PreferenceExport.objects.get(pk=export_id)


def _finished(export: PreferenceExport) -> bool:
    return PreferenceExport.objects.filter(pk=export.pk, status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED,
                                                                      RunStatus.CANCELLED]).exists()


def final_leftovers(export: PreferenceExport) -> list[Path]:
    """Partial directories of an export that is no longer being built (earlier attempts' leftovers); an
    object-store export's are deleted here and not listed."""
    if not _finished(export):
        return []
    store = export_store(export)
    if store is not None:
        store.delete(store.key("building", f"{export.pk}-attempt-"), folder=False)
        return []
    return list((export_root() / "building").glob(f"{export.pk}-attempt-*"))


def preference_exports_reap_expired() -> int:
    """Re-queue exports whose worker died (the retry writes them again, into a directory of its own)."""
    return jobs.jobs_reap(PreferenceExport, task_name=EXPORT_PREFERENCES, what="writing this export",
                          on_fail=export_failed_announce)


def preference_export_cancel(*, export: PreferenceExport) -> PreferenceExport:
    """Cancel a queued or running export; a worker building it stops at its next progress step."""
    return jobs.job_cancel(PreferenceExport, export.pk)
