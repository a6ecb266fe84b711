"""The annotation page's image-editing form: the components render, Generate posts multipart (source, mask,
strength, box) and starts an edit job linked to the task; bad input gets an error naming the component and
the field, and stores nothing."""

from __future__ import annotations

import contextlib
import io
import os
from html import unescape

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from annotate.builder import services as template_services
from annotate.models import Annotation, TaskGenerationJob, TaskImage
from annotate.workflow import services as workflow_services
from generation.models import GenerationJob
from tests.annotate.factories_workflow import images_for, model_version, set_workflow
from tests.factories import PASSWORD

HX = {"HTTP_HX_REQUEST": "true"}


def _png(size=(32, 32), colour=(200, 30, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _mask(size=(32, 32), box=(8, 8, 24, 24)) -> bytes:
    image = Image.new("L", size, 0)
    image.paste(255, box)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _file(name: str, data: bytes, content_type: str = "image/png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


def _edit_project(project, admin_user, preset: str):
    project.model_versions.add(model_version())
    template = template_services.template_create_from_preset(project=project, preset=preset, created_by=admin_user)
    version = template_services.template_version_publish(template=template, created_by=admin_user)
    set_workflow(project, template_version=version, images_per_task=2)
    return workflow_services.task_create(project=project, prompt_text="a green circle", created_by=None)


def _open_page(client, project, annotator):
    assert client.login(username=annotator.username, password=PASSWORD)
    return client.get(reverse("annotate:task_annotate", args=[project.pk])).content.decode()


def _post(client, project, task, data, **extra):
    return client.post(reverse("annotate:task_generate_edit", args=[project.pk, task.pk]), data, **extra)


def _stored_edit_files() -> set[str]:
    """The files under edits/ (storage outlives a test: compare before and after)."""
    found: list[str] = []
    for folder in ("edits/sources", "edits/masks"):
        with contextlib.suppress(FileNotFoundError):
            found += default_storage.listdir(folder)[1]
    return set(found)


@pytest.fixture
def inpaint_task(project, admin_user):
    return _edit_project(project, admin_user, "rank_inpaintings")


def test_the_page_renders_the_edit_components_and_a_multipart_form(client, project, annotator, inpaint_task):
    page = _open_page(client, project, annotator)
    action = reverse("annotate:task_generate_edit", args=[project.pk, inpaint_task.pk])
    assert f'action="{action}"' in page and 'enctype="multipart/form-data"' in page
    assert 'name="source.file"' in page and 'name="source.from" value="upload"' in page
    assert "PNG, JPEG or WebP, at most 10 MB and 1024 px a side." in page
    assert 'data-mask-painter="mask"' in page and 'name="mask.png"' in page
    assert 'name="strength"' in page and 'min="0.50"' in page and 'value="1.00"' in page
    assert "js/mask_painter.js" in page and "<script>" not in page  # no inline script (CSP)
    assert 'action="{}"'.format(reverse("annotate:task_generate", args=[project.pk, inpaint_task.pk])) not in page


def test_an_inpainting_starts_one_edit_job_linked_to_the_task(client, project, annotator, inpaint_task):
    _open_page(client, project, annotator)
    data = {"source.from": "upload", "source.file": _file("cat.png", _png()), "mask.png": _file("mask.png", _mask()),
            "strength": "0.8"}
    response = _post(client, project, inpaint_task, data, **HX)
    assert response.status_code == 200, response.content
    job = GenerationJob.objects.get(created_by=annotator)
    assert (job.edit_kind, job.edit["strength"], job.num_images) == ("inpaint", 0.8, 2)
    assert job.edit["mask_sha256"] and job.edit["source_sha256"]
    assert TaskGenerationJob.objects.get(job=job).task_id == inpaint_task.pk
    poll = reverse("annotate:task_generation", args=[project.pk, inpaint_task.pk, job.pk])
    assert poll in response.content.decode()
    again = {"source.from": "upload", "source.file": _file("cat.png", _png()),
             "mask.png": _file("mask.png", _mask()), "strength": "0.8"}
    assert _post(client, project, inpaint_task, again, **HX).status_code == 200  # a double click: the same job
    assert GenerationJob.objects.filter(created_by=annotator).count() == 1
    plain = {"source.from": "upload", "source.file": _file("cat.png", _png()),
             "mask.png": _file("mask.png", _mask()), "strength": "0.8"}
    response = _post(client, project, inpaint_task, plain)  # without JavaScript: PRG to the page polling the job
    assert response.status_code == 303 and response["Location"].endswith(f"?job={job.pk}")


BAD_INPAINTS = [
    ({"source.file": ("notes.txt", b"hello, not an image", "text/plain")}, 'Source image \'source\' (source_image): '
     "Not an image: upload a PNG, JPEG or WebP."),
    ({"source.file": None}, "Source image 'source' (source_image): Upload a source image: a PNG, JPEG or WebP file."),
    ({"mask.png": ("mask.png", _mask(size=(16, 16), box=(0, 0, 8, 8)), "image/png")},
     "Mask painter 'mask' (mask): The mask is 16x16 but the source image is 32x32."),
    ({"mask.png": ("mask.png", _mask(box=(0, 0, 0, 0)), "image/png")},
     "Mask painter 'mask' (mask): The mask is empty: paint the part to repaint."),
    ({"mask.png": None}, "Mask painter 'mask' (mask): The mask is empty: paint the part to repaint."),
    ({"strength": "0.2"}, "Strength 'strength' (strength): The strength must be at least 0.5, got 0.2."),
    ({"strength": "lots"}, "Strength 'strength' (strength): The strength must be a number, got 'lots'."),
    ({"source.from": "task"}, "Source image 'source' (source_image): This task's data names no image to edit; "
     "upload one instead."),
    ({"source.from": "candidate:5b0c5b33-0000-4000-8000-000000000000"},
     "Source image 'source' (source_image): Choose one of the candidates generated earlier in this task."),
]


def test_bad_inpaint_input_names_the_component_and_field_and_stores_nothing(client, project, annotator,
                                                                           inpaint_task):
    _open_page(client, project, annotator)
    before = _stored_edit_files()
    for change, message in BAD_INPAINTS:  # one task for all of them: each is refused, so the next starts afresh
        data = {"source.from": "upload", "source.file": ("cat.png", _png(), "image/png"),
                "mask.png": ("mask.png", _mask(), "image/png"), "strength": "0.8", **change}
        form = {key: _file(*value) if isinstance(value, tuple) else value for key, value in data.items()
                if value is not None}
        response = _post(client, project, inpaint_task, form, **HX)
        assert response.status_code == 400, message
        fragment = response.content.decode()
        assert "<html" not in fragment and 'role="alert"' in fragment
        assert unescape(fragment).count(message) == 1, unescape(fragment)
        assert GenerationJob.objects.count() == 0 and TaskGenerationJob.objects.count() == 0
        assert _stored_edit_files() == before


def test_a_plain_post_with_bad_input_gets_the_page_with_the_error(client, project, annotator, inpaint_task):
    _open_page(client, project, annotator)
    response = _post(client, project, inpaint_task, {"source.from": "upload", "mask.png": _file("m.png", _mask()),
                                                      "source.file": _file("a.txt", b"text", "text/plain")})
    assert response.status_code == 400
    page = response.content.decode()
    assert "<html" in page and 'data-field="source.source_image"' in page and 'data-edit-form' in page


def test_uploads_over_the_limit_are_refused_by_size(client, project, annotator, inpaint_task, settings):
    settings.GENERATION_EDIT_MAX_UPLOAD_BYTES = 1_000_000
    _open_page(client, project, annotator)
    before = _stored_edit_files()
    big = os.urandom(1_500_000)  # its size is enough: the bytes are never decoded
    response = _post(client, project, inpaint_task, {"source.from": "upload", "source.file": _file("big.png", big),
                                                     "mask.png": _file("mask.png", _mask())}, **HX)
    assert response.status_code == 400
    assert ("Source image &#x27;source&#x27; (source_image): The image is 1.5 MB; the limit is 1 MB."
            in response.content.decode())
    huge = os.urandom(2_400_000)  # the body is over two files' worth: refused before it is read
    response = _post(client, project, inpaint_task, {"source.from": "upload", "source.file": _file("big.png", huge),
                                                     "mask.png": _file("mask.png", _mask())}, **HX)
    assert response.status_code == 400
    assert "(source_image): The upload is 2.4 MB; each image may be at most 1 MB." in response.content.decode(
        ).replace("&#x27;", "'")
    assert GenerationJob.objects.count() == 0 and _stored_edit_files() == before


def test_the_csrf_check_still_applies(project, annotator, inpaint_task):
    client = Client(enforce_csrf_checks=True)
    _open_page(client, project, annotator)
    response = _post(client, project, inpaint_task, {"source.from": "upload", "source.file": _file("a.png", _png()),
                                                     "mask.png": _file("m.png", _mask())})
    assert response.status_code == 403
    assert GenerationJob.objects.count() == 0


def test_outsiders_cannot_post_edits(client, project, other_project, annotator, inpaint_task):
    from tests.factories import UserFactory

    stranger = UserFactory(username="stranger")
    assert client.login(username=stranger.username, password=PASSWORD)
    response = _post(client, project, inpaint_task, {"source.from": "upload"})
    assert response.status_code == 404
    assert client.login(username=annotator.username, password=PASSWORD)
    response = _post(client, project, inpaint_task, {"source.from": "upload"})  # no lease on this task yet
    assert response.status_code == 404


BAD_BOXES = [
    ({"left": "12"}, "Outpaint canvas 'outpaint' (outpaint): Extend each side by a multiple of 8 px, at most 256 px "
                     "(left: 12)."),
    ({"top": "264"}, "Outpaint canvas 'outpaint' (outpaint): Extend each side by a multiple of 8 px, at most 256 px "
                     "(top: 264)."),
    ({"left": "0", "top": "0", "right": "0", "bottom": "0"},
     "Outpaint canvas 'outpaint' (outpaint): Choose how far to extend at least one side."),
    ({"right": "ten"}, "Outpaint canvas 'outpaint' (outpaint): Right must be a whole number, got 'ten'."),
]


def test_outpaint_boxes_over_the_limit_are_refused(client, project, admin_user, annotator):
    task = _edit_project(project, admin_user, "rank_outpaintings")
    page = _open_page(client, project, annotator)
    before = _stored_edit_files()
    assert 'name="outpaint.left"' in page and 'max="256"' in page and 'step="8"' in page
    for sides, message in BAD_BOXES:
        data = {"source.from": "upload", "source.file": _file("a.png", _png()), "outpaint.left": "8",
                "outpaint.top": "0", "outpaint.right": "8", "outpaint.bottom": "0",
                **{f"outpaint.{k}": v for k, v in sides.items()}}
        response = _post(client, project, task, data, **HX)
        assert response.status_code == 400, message
        assert message in unescape(response.content.decode())
        assert GenerationJob.objects.count() == 0 and _stored_edit_files() == before


def test_an_outpainting_and_an_img2img_start_their_jobs(client, project, admin_user, annotator):
    task = _edit_project(project, admin_user, "rank_outpaintings")
    _open_page(client, project, annotator)
    data = {"source.from": "upload", "source.file": _file("a.png", _png()), "outpaint.left": "8", "outpaint.top": "16",
            "outpaint.right": "0", "outpaint.bottom": "8"}
    assert _post(client, project, task, data, **HX).status_code == 200
    job = GenerationJob.objects.get()
    assert (job.edit_kind, job.edit["outpaint"], job.params["width"], job.params["height"]) == (
        "outpaint", [8, 16, 0, 8], 40, 56)


def test_a_candidate_of_the_task_can_be_edited_and_the_edits_replace_the_candidates(
        client, project, admin_user, annotator):
    task = _edit_project(project, admin_user, "rank_img2img_edits")
    earlier = images_for(project, 2, prompt="a green circle")
    workflow_services.task_set_images(task=task, image_ids=[image.pk for image in earlier])
    page = _open_page(client, project, annotator)
    assert "Edit one of these candidates instead" in page and f'value="candidate:{earlier[1].pk}"' in page
    response = _post(client, project, task, {"source.from": f"candidate:{earlier[1].pk}", "strength": "0.6"}, **HX)
    assert response.status_code == 200, response.content
    job = GenerationJob.objects.get(created_by=annotator)
    assert (job.edit_kind, job.edit["strength"]) == ("img2img", 0.6)
    assert not TaskImage.objects.filter(task=task).exists()  # the edits take their place when they are made
    assert Annotation.objects.count() == 0


def test_the_tasks_own_image_is_a_source(client, project, admin_user, annotator):
    task = _edit_project(project, admin_user, "rank_img2img_edits")
    (image,) = images_for(project, 1)
    task.metadata = {"source_image": str(image.pk)}
    task.save(update_fields=["metadata"])
    page = _open_page(client, project, annotator)
    assert 'name="source.from" value="task" checked' in page  # chosen to begin with; the upload is not
    assert 'name="source.from" value="upload" checked' not in page
    assert _post(client, project, task, {"source.from": "task", "strength": "0.7"}, **HX).status_code == 200
    job = GenerationJob.objects.get(created_by=annotator)
    assert (job.edit_kind, job.edit["source_width"], job.edit["source_height"]) == ("img2img", 16, 16)
