"""Factories for the annotation workflow: pre-generated images (a tiny PNG in storage), tasks."""

from __future__ import annotations

import hashlib
import io
import itertools
from typing import Any

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from annotate.models import AnnotationTask, ProjectWorkflow
from annotate.workflow import services as workflow_services
from generation.models import GeneratedImage, GenerationJob, ModelVersion
from projects.models import Project

_counter = itertools.count(1)
# A template of four task images and a full ranking that allows ties.
RANK_SCHEMA = {
    "schema_version": 1,
    "components": [
        {"type": "images", "name": "images", "config": {"source": "task", "count": 4}},
        {"type": "ranking", "name": "ranking",
         "config": {"images": "images", "mode": "full", "allow_ties": True, "allow_partial": False}},
    ],
}

_COLORS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40), (150, 60, 200), (30, 190, 190)]


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


def png(index: int) -> bytes:
    """A 16x16 PNG in the ``index``-th test colour."""
    return _png(_COLORS[index % len(_COLORS)])


def set_workflow(project: Project, **settings: Any) -> ProjectWorkflow:
    """Store these workflow settings of ``project`` as they are (no validation: fixtures set odd values on
    purpose), and let the ``project`` instance see them."""
    workflow, _ = ProjectWorkflow.objects.update_or_create(project=project, defaults=settings)
    project.workflow = workflow
    return workflow


def model_version() -> ModelVersion:
    version, _ = ModelVersion.objects.get_or_create(
        name="test-shapes", defaults={"source": "tests/fixtures/none", "dtype": "float32"}
    )
    return version


def images_for(project: Project | None, count: int = 4, *, prompt: str = "a red square",
               store: bool = True) -> list[GeneratedImage]:
    """``count`` pre-generated images of one job in ``project`` (PNG files written when ``store``)."""
    version = model_version()
    n = next(_counter)
    job = GenerationJob.objects.create(
        project=project, model_version=version, prompt=prompt, params={}, params_hash="0" * 64,
        num_images=count, seeds=list(range(count)), status="succeeded", progress=1.0,
    )
    images = []
    for index in range(count):
        key = f"test-generated/{n}/{index}.png"
        data = _png(_COLORS[index % len(_COLORS)])
        if store:
            default_storage.save(key, ContentFile(data))
        images.append(GeneratedImage(
            job=job, index=index, model_version=version, prompt=prompt, seed=index, params={},
            storage_key=key, sha256=hashlib.sha256(data).hexdigest(), width=16, height=16,
            size_bytes=len(data), generation_seconds=0.01,
        ))
    return GeneratedImage.objects.bulk_create(images)


def task_with_images(project: Project, *, prompt: str | None = None, count: int = 4, store: bool = False,
                     gold_ranking: Any = None) -> AnnotationTask:
    text = prompt or f"prompt {next(_counter)}"
    images = images_for(project, count, prompt=text, store=store)
    task = workflow_services.task_create(project=project, prompt_text=text, created_by=None,
                                         image_ids=[image.pk for image in images])
    if gold_ranking == "identity":
        workflow_services.task_set_gold(task=task, ranking=[[str(image.pk)] for image in images])
        task.refresh_from_db()
    return task


def tasks_with_images(project: Project, n: int, *, count: int = 4) -> list[AnnotationTask]:
    return [task_with_images(project, count=count) for _ in range(n)]
