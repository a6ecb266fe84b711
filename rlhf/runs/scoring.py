"""Reward-model scores of generated images: compute them (the ``rlhf.tasks.score_images`` task body), store
them, queue background scoring, and offer them to the annotation workflow (review scores and the
project's pre-sort, :class:`WorkflowRewardScores`, registered in ``RlhfConfig.ready()``)."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from io import BytesIO
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import QuerySet
from PIL import Image

from core.exceptions import ApplicationError
from core.tasks import enqueue_on_commit
from generation.inference import resolve_device
from generation.models import GeneratedImage
from generation.selectors import images_for_user
from projects.models import Project
from rlhf.models import ImageScore, ProjectPresort, RewardModelVersion
from rlhf.runs.lifecycle import check_user_may_train
from rlhf.runs.selectors import reward_versions_for_user
from rlhf.training.configs import conditions_on_source

SCORE_IMAGES = "rlhf.tasks.score_images"
SCORE_BATCH = 32
MAX_SCORE_IMAGES = 256


_models: OrderedDict[str, Any] = OrderedDict()
_models_lock = threading.Lock()
_MODEL_CACHE_SIZE = 2


def reward_model_loaded(path: str) -> Any:
    """This process's loaded reward model for ``path`` (a small LRU; scoring workers keep theirs)."""
    from rlhf.training.reward_model import load_reward_model  # torch: only scoring workers load models

    with _models_lock:
        if path in _models:
            _models.move_to_end(path)
            return _models[path]
        model = load_reward_model(path, device=str(resolve_device(settings.PICKWISE_DEVICE)))
        _models[path] = model
        while len(_models) > _MODEL_CACHE_SIZE:
            _models.popitem(last=False)
        return model


def images_for_scoring(*, user: AbstractBaseUser | None, image_ids: list[Any]) -> list[GeneratedImage]:
    """The images, in the order asked; each must exist and be visible to ``user`` (field ``image_ids``)."""
    if not image_ids:
        raise ApplicationError("Give at least one image id.", field="image_ids")
    if len(image_ids) > MAX_SCORE_IMAGES:
        raise ApplicationError(f"Score at most {MAX_SCORE_IMAGES} images per request.", field="image_ids")
    keys = [_uuid_key(image_id) for image_id in image_ids]
    if user is None:  # trusted code
        found = {str(image.pk): image for image in GeneratedImage.objects.filter(pk__in=[k for k in keys if k])}
    else:  # one query, however many images
        found = images_for_user(user=user, image_ids=[k for k in keys if k])
    images = []
    for image_id, key in zip(image_ids, keys, strict=True):
        image = found.get(key) if key else None
        if image is None:
            raise ApplicationError(f"No image {image_id} that you may see.", field="image_ids")
        images.append(image)
    return images


def _uuid_key(value: Any) -> str | None:
    """The canonical form of an image id, or None when it is not a UUID."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


def check_sources_for(version: RewardModelVersion, images: Sequence[GeneratedImage]) -> None:
    """ApplicationError (field ``image_ids``) when ``version`` conditions on the source image and an image is no
    image edit: such a model scores an edit beside its source and has nothing to score a lone image with."""
    if not version_conditions_on_source(version):
        return
    lone = [str(image.pk) for image in images if not image.edit_source_key]
    if lone:
        raise ApplicationError(
            f"Reward model {version.name} conditions on the source image (condition_on_source), and image "
            f"{lone[0]} is not an image edit with a source{f' ({len(lone)} such images)' if len(lone) > 1 else ''}: "
            "it scores image edits only.", field="image_ids")


def version_conditions_on_source(version: RewardModelVersion) -> bool:
    return conditions_on_source(version.path)


def _open_rgb(key: str) -> Image.Image:
    with default_storage.open(key, "rb") as handle:
        return Image.open(BytesIO(handle.read())).convert("RGB")


def image_scores_compute(*, reward_version_id: int, image_ids: list[str], prompt: str | None = None,
                         store: bool = True) -> dict[str, float]:
    """Score images in batches (under ``prompt``, or each image's own prompt); store the own-prompt scores.

    A reward model conditioned on the source image scores each edit beside its source (read from storage);
    it refuses (ApplicationError, field ``image_ids``) images that are no edits."""
    from rlhf.training.reward_model import score  # torch: only scoring workers load models

    version = RewardModelVersion.objects.get(pk=reward_version_id)
    model = reward_model_loaded(version.path)
    images = list(GeneratedImage.objects.filter(pk__in=image_ids))
    by_id = {str(image.pk): image for image in images}
    ordered = [by_id[str(i)] for i in image_ids if str(i) in by_id]
    check_sources_for(version, ordered)
    scores: dict[str, float] = {}
    for start in range(0, len(ordered), SCORE_BATCH):
        chunk = ordered[start : start + SCORE_BATCH]
        pictures = [_open_rgb(image.storage_key) for image in chunk]
        sources = None
        if model.conditions_on_source:  # a task's edits share their source: read each one once
            opened = {key: _open_rgb(key) for key in {image.edit_source_key for image in chunk}}
            sources = [opened[image.edit_source_key] for image in chunk]
        prompts = [prompt if prompt is not None else image.prompt for image in chunk]
        values = score(model, prompts, pictures, batch_size=SCORE_BATCH, sources=sources)
        for image, value in zip(chunk, values, strict=True):
            scores[str(image.pk)] = float(value)
    if store and prompt is None and scores:
        image_scores_store(reward_version=version, scores=scores)
    return scores


@transaction.atomic
def image_scores_store(*, reward_version: RewardModelVersion, scores: Mapping[str, float]) -> int:
    rows = [ImageScore(reward_version=reward_version, image_id=image_id, score=value)
            for image_id, value in scores.items()]
    ImageScore.objects.bulk_create(rows, update_conflicts=True, unique_fields=["reward_version", "image"],
                                   update_fields=["score", "updated_at"])
    return len(rows)


@transaction.atomic
def image_scores_request(*, user: AbstractBaseUser | None, reward_version: RewardModelVersion,
                         image_ids: list[Any]) -> list[str]:
    """Queue background scoring (``rlhf.tasks.score_images`` on the gpu queue) of images not scored yet."""
    if reward_version.project is not None:
        check_user_may_train(user, reward_version.project)
    images = images_for_scoring(user=user, image_ids=image_ids)
    check_sources_for(reward_version, images)
    done = set(ImageScore.objects.filter(reward_version=reward_version, image__in=images)
               .values_list("image_id", flat=True))
    missing = [str(image.pk) for image in images if image.pk not in done]
    if missing:
        enqueue_on_commit(SCORE_IMAGES, reward_version.pk, missing)
    return missing


# --- a project's pre-sort ------------------------------------------------------------------------------


@transaction.atomic
def project_presort_set(*, project: Project, version_id: int | None, user: AbstractBaseUser | None) -> None:
    """Pre-sort ``project``'s candidates by reward model ``version_id`` (None: stop pre-sorting).

    A new choice must be a version ``user`` may use (``user=None`` is trusted code); keeping the current
    one needs no right (another admin may have chosen it).
    """
    current = ProjectPresort.objects.select_for_update().filter(project=project).first()
    if version_id is None:
        if current is not None:
            current.delete()
        return
    if current is not None and current.reward_version_id == version_id:
        return
    versions = RewardModelVersion.objects.all() if user is None else reward_versions_for_user(user=user)
    if not versions.filter(pk=version_id).exists():  # one answer for unknown ids and other projects' models
        raise ApplicationError(f"No reward model {version_id} that you may use.", field="presort_reward_version")
    ProjectPresort.objects.update_or_create(project=project, defaults={"reward_version_id": version_id})


def project_presort_version(*, project: Project) -> RewardModelVersion | None:
    row = ProjectPresort.objects.select_related("reward_version__project").filter(project=project).first()
    return row.reward_version if row is not None else None


class WorkflowRewardScores:
    """Reward-model scores for the annotation workflow (``annotate.workflow.scoring.RewardScores``):
    review scores and scoring requests, and the project's pre-sort. ``RlhfConfig.ready()`` registers it."""

    def version_queryset(self) -> QuerySet[RewardModelVersion]:
        return RewardModelVersion.objects.all()

    def versions_for(self, *, user: Any) -> list[RewardModelVersion]:
        return list(reward_versions_for_user(user=user))

    def scores(self, *, version_id: int, image_ids: Sequence[Any]) -> dict[str, float]:
        return {str(image_id): value for image_id, value in ImageScore.objects.filter(
            reward_version_id=version_id, image_id__in=list(image_ids)).values_list("image_id", "score")}

    def request_scoring(self, *, user: Any, version_id: int, image_ids: Sequence[str]) -> list[str]:
        version = reward_versions_for_user(user=user).filter(pk=version_id).first()
        if version is None:
            raise ApplicationError("Choose a reward model you may use.", field="reward")
        queued: list[str] = []
        ids = list(image_ids)
        for start in range(0, len(ids), MAX_SCORE_IMAGES):
            # Trusted: the caller checked that the images are ones the user may see (a project's task images).
            queued += image_scores_request(user=None, reward_version=version, image_ids=ids[start:start + MAX_SCORE_IMAGES])
        return queued

    def presort_version(self, *, project: Project) -> RewardModelVersion | None:
        return project_presort_version(project=project)

    def presort_set(self, *, project: Project, version_id: int | None, user: Any) -> None:
        project_presort_set(project=project, version_id=version_id, user=user)

    def presort_scores(self, *, project: Project, image_ids: Sequence[Any]) -> dict[str, float]:
        return {str(image_id): value for image_id, value in ImageScore.objects.filter(
            reward_version__presorted_projects__project=project, image_id__in=list(image_ids),
        ).values_list("image_id", "score")}

    def task_images_added(self, *, project: Project, image_ids: Sequence[Any]) -> None:
        version = project_presort_version(project=project) if image_ids else None
        if version is not None:
            ids = list(image_ids)
            if version_conditions_on_source(version):  # it scores edits only; other images stay unsorted
                ids = [str(image.pk) for image in GeneratedImage.objects.filter(pk__in=ids).only("pk", "edit")
                       if image.edit_source_key]
                if not ids:
                    return
            # Trusted: the version was checked when it was chosen, the images when they joined the task.
            image_scores_request(user=None, reward_version=version, image_ids=ids)
