"""Task imports for editing tasks: a row's ``source_image`` (a file in the uploaded zip, an http(s) URL fetched
through the outbound guard, a base64 data URI, or a JSONL ``metadata.source_image``) is stored as a project
image that the task's data names, and the Source image component's "from the task's data" choice edits it.
Bad sources fail the import with the line and the column, and nothing is stored."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile

import pytest
from PIL import Image

from annotate.builder import services as template_services
from annotate.models import AnnotationTask
from generation.models import GeneratedImage, GenerationJob, ImageOrigin
from tests.annotate.factories_workflow import model_version, set_workflow
from tests.annotate.test_task_import import _Images, external_files, image_server, media, run, upload
from tests.factories import api_client_for

pytestmark = pytest.mark.django_db

__all__ = ["image_server", "media"]  # fixtures, used by name


def source(n: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (n % 251, (n * 7) % 251, (n * 13) % 251)).save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
def edits(project, admin_user, media):
    """A project whose template edits a source image (image-to-image, two edits a task)."""
    project.model_versions.add(model_version())
    template = template_services.template_create_from_preset(project=project, preset="rank_img2img_edits",
                                                             created_by=admin_user)
    version = template_services.template_version_publish(template=template, created_by=admin_user)
    set_workflow(project, template_version=version, images_per_task=2)
    return project


def test_sources_from_a_zip_a_url_a_data_uri_and_metadata(edits, admin_user, annotator, media, image_server,
                                                          settings):
    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = True
    _Images.routes = {"/s.png": ("image/png", source(2))}
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("pics/one.png", source(1))
    rows = [
        {"key": "zip", "prompt": "a red circle", "source_image": "pics/one.png", "style": "flat"},
        {"key": "url", "prompt": "a blue square", "source_image": f"{image_server}/s.png"},
        {"key": "b64", "prompt": "a green triangle", "source_image": data_uri(source(3, "JPEG"), "image/jpeg")},
        {"key": "meta", "prompt": "a pink diamond", "metadata": {"source_image": data_uri(source(4)), "n": 4}},
    ]
    table = "".join(json.dumps(row) + "\n" for row in rows).encode()
    result = run(edits, admin_user, table=upload("edits.jsonl", table), images_zip=upload("b.zip", bundle.getvalue()))
    assert result.status == "succeeded", result.report
    assert (result.report["tasks"], result.report["source_images"], result.report["images"]) == (4, 4, 0)
    tasks = {task.external_key: task for task in AnnotationTask.objects.filter(project=edits)}
    expected = {"zip": (source(1), "zip", "pics/one.png"), "url": (source(2), "url", f"{image_server}/s.png"),
                "b64": (source(3, "JPEG"), "inline", "data URI"), "meta": (source(4), "inline", "data URI")}
    for key, (data, origin, name) in expected.items():
        task = tasks[key]
        assert not task.task_images.exists()  # the annotator generates the candidates
        image = GeneratedImage.objects.get(pk=task.metadata["source_image"])
        assert (image.project_id, image.origin, image.external_source, image.external_name) == (
            edits.pk, ImageOrigin.EXTERNAL, origin, name)
        assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert tasks["zip"].metadata == {"style": "flat", "source_image": tasks["zip"].metadata["source_image"]}
    assert tasks["meta"].metadata["n"] == 4
    # The annotator edits the task's own image: the job's source is the imported bytes.
    client = api_client_for(annotator)
    handout = client.post(f"/api/projects/{edits.pk}/tasks/next/").json()
    task = AnnotationTask.objects.get(pk=handout["task_id"])
    response = client.post(f"/api/projects/{edits.pk}/tasks/{task.pk}/generate/edit/",
                           {"strength": "0.7"}, format="multipart")  # no file: the task's image, as on the page
    assert response.status_code == 201, response.content
    image = GeneratedImage.objects.get(pk=task.metadata["source_image"])
    assert GenerationJob.objects.get().edit["source_sha256"] == image.sha256


def test_an_existing_project_image_by_id(edits, admin_user, media):
    from tests.annotate.factories_workflow import images_for

    (image,) = images_for(edits, 1)
    table = f"prompt,source_image\nrepaint it,{image.pk}\n".encode()
    result = run(edits, admin_user, table=upload("t.csv", table))
    assert result.status == "succeeded", result.report
    assert AnnotationTask.objects.get(project=edits).metadata == {"source_image": str(image.pk)}


def test_bad_sources_name_the_line_and_column_and_store_nothing(edits, admin_user, media, settings):
    settings.IMPORT_MAX_IMAGE_BYTES = 5_000
    big = io.BytesIO()
    Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48).save(big, format="PNG", compress_level=0)
    assert len(big.getvalue()) > 5_000
    rows = [
        {"prompt": "fine", "source_image": data_uri(source(1))},
        {"prompt": "text", "source_image": data_uri(b"hello, not an image")},
        {"prompt": "huge", "source_image": data_uri(big.getvalue())},
        {"prompt": "b64", "source_image": "data:image/png;base64,@@@not base64@@@"},
        {"prompt": "gone", "source_image": "nowhere.png"},
        {"prompt": "no id", "source_image": "5b0c5b33-0000-4000-8000-000000000000"},
        {"prompt": "nothing"},
    ]
    table = "".join(json.dumps(row) + "\n" for row in rows).encode()
    result = run(edits, admin_user, table=upload("bad.jsonl", table))
    assert result.status == "failed"
    errors = [(e["line"], e["column"], e["message"]) for e in result.report["errors"]]
    assert errors == [
        (2, "source_image", "unreadable image: not a PNG, JPEG, WebP or GIF file"),
        (3, "source_image", f"the image is {len(big.getvalue()):,} bytes; the limit is 5,000"),
        (4, "source_image", "the data URI is not valid base64"),
        (5, "source_image", "missing image: no file 'nowhere.png' among the uploaded images or under the import "
                            "root"),
        (6, "source_image", "missing image: no image 5b0c5b33-0000-4000-8000-000000000000 in this project"),
        (7, "images", "no image columns: give 'images' (a list) or numbered 'image_0', 'image_1', ... (Pick-a-Pic: "
                      "'jpg_0', 'jpg_1' or 'image_0_url', ...), or for an editing task a 'source_image'"),
    ]
    assert result.error.startswith("line 2, source_image: unreadable image")
    assert not AnnotationTask.objects.filter(project=edits).exists()
    assert not GeneratedImage.objects.filter(origin=ImageOrigin.EXTERNAL).exists() and external_files(media) == []
