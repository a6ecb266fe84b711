"""POST /api/projects/<id>/tasks/<task>/generate/edit/: the REST twin of the annotation page's edit form.
The same rules and errors (named by component and field, nothing stored), exact status codes for who may
ask, the job in the answer, and the endpoint in the OpenAPI schema. (A real worker renders the edits in
tests/client/test_edit_flow.py.)"""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotate.models import TaskGenerationJob
from generation.models import GenerationJob
from tests.annotate.test_edit_views import _edit_project, _mask, _png, _stored_edit_files
from tests.factories import UserFactory, api_client_for


def _url(project, task) -> str:
    return f"/api/projects/{project.pk}/tasks/{task.pk}/generate/edit/"


def _file(name: str, data: bytes, content_type: str = "image/png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


def _leased(project, user, task):
    client = api_client_for(user)
    handout = client.post(f"/api/projects/{project.pk}/tasks/next/")
    assert handout.status_code == 200 and handout.json()["task_id"] == task.pk
    return client


@pytest.fixture
def inpaint_task(project, admin_user):
    return _edit_project(project, admin_user, "rank_inpaintings")


def test_an_inpainting_request_answers_with_its_job(project, annotator, inpaint_task):
    client = _leased(project, annotator, inpaint_task)
    form = {"source_image": _file("cat.png", _png()), "mask": _file("mask.png", _mask()), "strength": "0.8"}
    response = client.post(_url(project, inpaint_task), form, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    job = GenerationJob.objects.get(created_by=annotator)
    assert (body["id"], body["edit_kind"], body["num_images"], body["status"]) == (job.pk, "inpaint", 2, "queued")
    assert body["edit"]["strength"] == 0.8 and body["edit"]["mask_sha256"] == job.edit["mask_sha256"]
    assert response["Location"] == f"/api/generation-jobs/{job.pk}/"
    assert TaskGenerationJob.objects.get(job=job).task_id == inpaint_task.pk
    again = {"source_image": _file("cat.png", _png()), "mask": _file("mask.png", _mask()), "strength": "0.8"}
    retry = client.post(_url(project, inpaint_task), again, format="multipart")  # a retry: the same job
    assert retry.status_code == 201 and retry.json()["id"] == job.pk
    assert GenerationJob.objects.count() == 1


BAD = [
    ({"source_image": ("notes.txt", b"hello, not an image", "text/plain")}, "source.source_image",
     "Source image 'source' (source_image): Not an image: upload a PNG, JPEG or WebP."),
    ({"source_image": None}, "source.source_image",
     "Source image 'source' (source_image): Upload a source image: a PNG, JPEG or WebP file."),
    ({"mask": ("mask.png", _mask(size=(16, 16), box=(0, 0, 8, 8)), "image/png")}, "mask.mask",
     "Mask painter 'mask' (mask): The mask is 16x16 but the source image is 32x32."),
    ({"mask": ("mask.png", _mask(box=(0, 0, 0, 0)), "image/png")}, "mask.mask",
     "Mask painter 'mask' (mask): The mask is empty: paint the part to repaint."),
    ({"mask": None}, "mask.mask", "Mask painter 'mask' (mask): The mask is empty: paint the part to repaint."),
    ({"strength": "0.2"}, "strength.strength",
     "Strength 'strength' (strength): The strength must be at least 0.5, got 0.2."),
    ({"strength": "lots"}, "strength.strength",
     "Strength 'strength' (strength): The strength must be a number, got 'lots'."),
    ({"source_from": "task"}, "source.source_image",
     "Source image 'source' (source_image): This task's data names no image to edit; upload one instead."),
    ({"source_from": "candidate:5b0c5b33-0000-4000-8000-000000000000"}, "source.source_image",
     "Source image 'source' (source_image): Choose one of the candidates generated earlier in this task."),
]


def test_bad_input_is_a_400_naming_the_component_and_field_and_stores_nothing(project, annotator, inpaint_task):
    client = _leased(project, annotator, inpaint_task)
    before = _stored_edit_files()
    for change, field, message in BAD:
        data = {"source_image": ("cat.png", _png(), "image/png"), "mask": ("mask.png", _mask(), "image/png"),
                "strength": "0.8", **change}
        form = {key: _file(*value) if isinstance(value, tuple) else value for key, value in data.items()
                if value is not None}
        response = client.post(_url(project, inpaint_task), form, format="multipart")
        assert response.status_code == 400, message
        assert response.json() == {"detail": message, "field": field, "component": field.split(".")[0]}
        assert GenerationJob.objects.count() == 0 and TaskGenerationJob.objects.count() == 0
        assert _stored_edit_files() == before


def test_uploads_over_the_limit_are_refused_by_size(project, annotator, inpaint_task, settings):
    settings.GENERATION_EDIT_MAX_UPLOAD_BYTES = 1_000_000
    client = _leased(project, annotator, inpaint_task)
    big = io.BytesIO(b"\x89PNG" + b"\0" * 1_500_000)  # its size is enough: the bytes are never decoded
    response = client.post(_url(project, inpaint_task), {"source_image": _file("big.png", big.getvalue()),
                                                         "mask": _file("m.png", _mask())}, format="multipart")
    assert response.status_code == 400
    assert response.json()["detail"] == "Source image 'source' (source_image): The image is 1.5 MB; the limit is 1 MB."
    huge = b"\0" * 2_400_000  # over two images' worth: refused by its Content-Length before it is read
    response = client.post(_url(project, inpaint_task), {"source_image": _file("huge.png", huge)}, format="multipart")
    assert response.status_code == 400
    assert response.json()["detail"] == ("Source image 'source' (source_image): The upload is 2.4 MB; each image "
                                         "may be at most 1 MB.")
    assert GenerationJob.objects.count() == 0


def test_outpaint_and_img2img_fields(project, admin_user, annotator):
    task = _edit_project(project, admin_user, "rank_outpaintings")
    client = _leased(project, annotator, task)
    bad = client.post(_url(project, task), {"source_image": _file("a.png", _png()), "outpaint_left": "12"},
                      format="multipart")
    assert bad.status_code == 400 and bad.json()["field"] == "outpaint.outpaint"
    assert bad.json()["detail"] == ("Outpaint canvas 'outpaint' (outpaint): Extend each side by a multiple of 8 px, "
                                    "at most 256 px (left: 12).")
    response = client.post(_url(project, task), {"source_image": _file("a.png", _png()), "outpaint_left": "8",
                                                 "outpaint_top": "16", "outpaint_bottom": "8"}, format="multipart")
    assert response.status_code == 201, response.content
    assert (response.json()["edit_kind"], response.json()["edit"]["outpaint"]) == ("outpaint", [8, 16, 0, 8])


def test_who_may_ask(project, other_project, admin_user, annotator, ml_engineer, inpaint_task):
    form = {"source_image": _file("cat.png", _png()), "mask": _file("mask.png", _mask())}
    url = _url(project, inpaint_task)
    assert api_client_for(UserFactory(username="stranger")).post(url, form, format="multipart").status_code == 404
    outsider = other_project.memberships.get().user
    assert api_client_for(outsider).post(url, form, format="multipart").status_code == 404
    assert api_client_for(ml_engineer).post(url, form, format="multipart").status_code == 403  # may not annotate
    no_lease = api_client_for(annotator).post(url, form, format="multipart")  # the task is not leased to them
    assert (no_lease.status_code, no_lease.json()["field"]) == (404, "task_id")
    _leased(project, annotator, inpaint_task)
    admin = api_client_for(admin_user).post(url, form, format="multipart")  # leased to someone else
    assert admin.status_code == 404
    from rest_framework.test import APIClient

    assert APIClient().post(url, form, format="multipart").status_code == 401
    assert GenerationJob.objects.count() == 0


def test_the_endpoint_is_in_the_openapi_schema(client):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/projects/{project_id}/tasks/{task_id}/generate/edit/"]["post"]
    body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    fields = schema["components"]["schemas"][body]["properties"]
    assert {"source_from", "source_image", "mask", "strength", "outpaint_left", "model_version"} <= set(fields)
    assert {"201", "400", "401", "403", "404", "429"} <= set(operation["responses"])
