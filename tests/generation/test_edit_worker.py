"""Image-editing jobs end to end: the API creates them, a real Celery worker process renders them (tiny pipeline
and the shipped shapes model, each kind), and the images, their provenance and their source and mask files
come back through the permission-checked URLs."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from django.core.files.storage import default_storage
from PIL import Image
from rest_framework.test import APIClient

from generation import inference, services
from generation.editing import EditRequest
from generation.models import GenerationJob, JobStatus
from tests.factories import api_client_for
from tests.generation.test_editing import edit_of

pytestmark = pytest.mark.django_db(transaction=True)


def wait_done(job: GenerationJob, timeout: float = 180) -> GenerationJob:
    deadline = time.monotonic() + timeout
    while True:
        job.refresh_from_db()
        if job.is_finished:
            return job
        assert time.monotonic() < deadline, f"job {job.pk} still {job.status} after {timeout} s"
        time.sleep(0.2)


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def register(model: str, tiny_pipeline_dir):
    from generation.shapes.model import DEFAULT_GUIDANCE, DEFAULT_STEPS, WEIGHTS_DIR

    if model == "tiny":
        return services.model_version_register(name="tiny", source=str(tiny_pipeline_dir), dtype="float32",
                                               scheduler="ddim", steps=4, guidance=5.0, width=32, height=32)
    return services.model_version_register(name="shapes", source=str(WEIGHTS_DIR), dtype="float32",
                                           scheduler="dpmpp_2m", steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE,
                                           width=64, height=64)


@pytest.mark.parametrize("model", ["tiny", "shapes"])
def test_every_edit_kind_through_a_real_worker(celery_worker_process, annotator, project,
                                               other_project, tiny_pipeline_dir, model):
    version = register(model, tiny_pipeline_dir)
    size = version.default_width
    jobs = {
        kind: services.generation_job_create(user=annotator, model_version=version, project=project,
                                             prompt="a blue circle in the center on a gray background",
                                             num_images=2, edit=edit_of(kind, size))
        for kind in ("img2img", "inpaint", "outpaint")
    }
    client = api_client_for(annotator)
    for kind, job in jobs.items():
        job = wait_done(job)
        assert job.status == JobStatus.SUCCEEDED, job.error
        status = client.get(f"/api/generation-jobs/{job.pk}/").json()
        assert status["edit_kind"] == kind and status["edit"]["source_sha256"] == job.edit["source_sha256"]
        assert len(status["images"]) == 2
        for shown in status["images"]:
            edit = shown["edit"]
            assert (edit["kind"], edit["strength"], edit["outpaint"]) == (
                kind, job.edit["strength"], job.edit["outpaint"])
            assert (shown["width"], shown["height"]) == (
                (size + 24, size + 8) if kind == "outpaint" else (size, size))
            png = body(client.get(shown["url"]))
            assert inference.sha256_hex(png) == shown["sha256"]
            source = body(client.get(edit["source_url"]))
            assert inference.sha256_hex(source) == edit["source_sha256"]
            if kind == "inpaint":
                mask = body(client.get(edit["mask_url"]))
                assert inference.sha256_hex(mask) == edit["mask_sha256"]
            else:
                assert edit["mask_url"] == "" and edit["mask_sha256"] == ""
                image_id = shown["id"]
                assert client.get(f"/generation/images/{image_id}/mask.png").status_code == 404
        # Who may not see the image may not see its source either.
        outsider = other_project.memberships.get().user
        assert api_client_for(outsider).get(edit["source_url"]).status_code == 404
        assert APIClient().get(edit["source_url"]).status_code == 302  # to the login page
        # Reproduction from the provenance alone, byte for byte, is checked for each kind and model in
        # test_editing.test_each_kind_renders_and_reproduces_byte_for_byte (rendered by the worker's code).


def test_the_shapes_model_keeps_what_the_mask_keeps(celery_worker_process, annotator, project, tiny_pipeline_dir):
    """Inpainting with a 4-channel UNet blends latents: outside the mask the source stays (up to the VAE)."""
    version = register("shapes", tiny_pipeline_dir)
    source = Image.new("RGB", (64, 64), (245, 245, 245))
    source.paste((40, 80, 220), (8, 8, 24, 24))  # a blue square at the top left, kept
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 32, 64, 64))
    mask_buffer = io.BytesIO()
    mask.save(mask_buffer, format="PNG")
    job = services.generation_job_create(
        user=annotator, model_version=version, project=project, num_images=2,
        prompt="a large red circle at the bottom right on a white background",
        edit=EditRequest("inpaint", buffer.getvalue(), mask=mask_buffer.getvalue(), strength=1.0))
    job = wait_done(job)
    assert job.status == JobStatus.SUCCEEDED, job.error
    for image in job.images.all():
        with default_storage.open(image.storage_key, "rb") as handle:
            pixels = np.asarray(Image.open(handle).convert("RGB"), dtype=np.int16)
        kept = np.abs(pixels[:32, :32] - np.asarray(source, dtype=np.int16)[:32, :32]).mean()
        assert kept < 12, kept
