"""`make run` seeds a "Rank inpaintings" project: the preset of that name, the shapes model, and tasks whose
source images are shapes-model renders (imported as data URIs), so the whole edit flow works out of the box."""

from __future__ import annotations

import io

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.urls import reverse
from PIL import Image

from annotate.builder import presets
from annotate.workflow import queue, services
from annotate.workflow.access import workflow_of
from generation.models import GeneratedImage, ImageOrigin, ModelVersion
from generation.selectors import project_model_version_ids
from projects.models import Project


@pytest.mark.django_db
def test_seed_demo_makes_an_inpainting_project_with_shapes_model_sources(settings, tmp_path, client):
    settings.MEDIA_ROOT = tmp_path / "media"
    call_command("seed_demo")
    call_command("seed_demo")  # idempotent: no second set of tasks, nothing rendered again
    project = Project.objects.get(name="Rank inpaintings")
    version = workflow_of(project).template_version
    assert version is not None and version.is_published
    assert [c["type"] for c in version.schema["components"]] == [
        c["type"] for c in presets.rank_inpaintings()["components"]]
    assert workflow_of(project).images_per_task == 4
    shapes = ModelVersion.objects.get(name="shapes-v1")
    assert set(project_model_version_ids(project=project)) == {shapes.pk}
    tasks = list(project.tasks.order_by("position"))
    assert len(tasks) == 6 and {m.user.username for m in project.memberships.select_related("user")} == {
        "demo-admin", "demo-annotator", "demo-ml"}
    for task in tasks:
        assert not task.task_images.exists()
        source = GeneratedImage.objects.get(pk=task.metadata["source_image"], project=project)
        assert source.origin == ImageOrigin.EXTERNAL and (source.width, source.height) == (64, 64)
        with default_storage.open(source.storage_key, "rb") as handle:
            render = Image.open(io.BytesIO(handle.read()))
            assert render.size == (64, 64) and len(render.convert("RGB").getcolors(4096) or []) > 2
        assert task.prompt.text.startswith("a ") and task.metadata["hint"].startswith("Paint over the ")
    # The annotator is handed a task whose Source image offers the task's own image.
    from django.contrib.auth import get_user_model

    annotator = get_user_model().objects.get(username="demo-annotator")
    handout = queue.task_next(project=project, user=annotator)
    assert handout.task is not None
    plan = services.task_edit_plan(assignment=handout.assignment)
    assert plan is not None and plan.kind == "inpaint" and "task" in plan.source["config"]["sources"]
    own, _ = services.task_edit_sources(task=handout.task)
    assert own is not None and str(own.pk) == handout.task.metadata["source_image"]
    # The task page shows the task's hint under the prompt.
    client.force_login(annotator)
    page = client.get(reverse("annotate:task_annotate", args=[project.pk])).content.decode()
    assert f'<p class="task-hint" data-task-hint>{handout.task.metadata["hint"]}</p>' in page
