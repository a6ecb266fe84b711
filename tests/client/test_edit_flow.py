"""The edit loop from the Python client, through a real Celery worker on the tiny pipeline: lease an
inpainting task, send a source image and a painted mask, wait for the inpaintings (two a task here, to keep
it quick), rank them and submit; bad input comes back as a ValidationError naming the component and field."""

from __future__ import annotations

import io

import pytest
from pickwise_client import ValidationError
from PIL import Image

from annotate.builder import services as template_services
from annotate.models import Annotation, TaskImage
from annotate.workflow import services as workflow_services
from generation.models import GenerationJob
from tests.annotate.factories_workflow import set_workflow

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.django_db(transaction=True)]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_annotator_inpaints_ranks_and_submits_through_the_client(celery_worker_process, connect, project,
                                                                     admin_user, annotator, ml_engineer, tiny_base):
    project.model_versions.add(tiny_base)
    template = template_services.template_create_from_preset(project=project, preset="rank_inpaintings",
                                                             created_by=admin_user)
    version = template_services.template_version_publish(template=template, created_by=admin_user)
    set_workflow(project, template_version=version, images_per_task=2)
    task = workflow_services.task_create(project=project, prompt_text="a red circle in the center", created_by=None)
    api = connect(annotator)
    handout = api.tasks.next(project.pk)
    assert handout is not None and (handout["task_id"], handout["images"]) == (task.pk, [])

    source = _png(Image.new("RGB", (32, 32), (40, 90, 200)))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    with pytest.raises(ValidationError) as refused:
        api.tasks.generate_edit(project.pk, task.pk, source=source, mask=_png(Image.new("L", (32, 32), 0)))
    assert refused.value.field == "mask.mask"
    assert GenerationJob.objects.count() == 0

    job = api.tasks.generate_edit(project.pk, task.pk, source=source, mask=_png(mask), strength=0.9)
    assert (job["edit_kind"], job["edit"]["strength"], job["num_images"]) == ("inpaint", 0.9, 2)
    done = api.generation.wait(job["id"], progress=False, timeout=180, poll_interval=0.3)
    assert done["status"] == "succeeded" and len(done["images"]) == 2
    assert {image["edit"]["kind"] for image in done["images"]} == {"inpaint"}

    handout = api.tasks.next(project.pk)  # the same lease, now with the inpaintings to rank
    assert handout is not None and handout["task_id"] == task.pk
    ids = [image["id"] for image in handout["images"]]
    assert sorted(ids) == sorted(image["id"] for image in done["images"])
    assert TaskImage.objects.filter(task=task).count() == 2
    result = api.tasks.submit(project.pk, task.pk, [[ids[1]], [ids[0]]])
    assert result is None  # stored; no task left
    annotation = Annotation.objects.get(task=task, annotator=annotator)
    assert annotation.ranking == [[ids[1]], [ids[0]]]

    # The ML engineer exports the ranking: the pair carries the edit kind and the source and mask.
    ml = connect(ml_engineer)
    export = ml.exports.wait(ml.exports.create(project.pk, "pickapic")["id"], poll_interval=0.3, timeout=120,
                             progress=False)
    pairs = ml.exports.to_pandas(export["id"], progress=False)
    assert len(pairs) == 1 and (pairs["edit_kind_0"][0], pairs["edit_kind_1"][0]) == ("inpaint", "inpaint")
    exported = Image.open(io.BytesIO(pairs["source_0"][0])).convert("RGB")
    assert exported.size == (32, 32) and exported.getpixel((0, 0)) == (40, 90, 200)
    assert Image.open(io.BytesIO(pairs["mask_0"][0])).convert("L").getpixel((16, 16)) == 255
