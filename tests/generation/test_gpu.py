"""On a CUDA machine: the worker path runs on the GPU, and provenance reproduces the image there."""

from __future__ import annotations

import pytest
import torch

from generation import inference, services, worker
from generation.models import GeneratedImage, JobStatus

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_generation_and_reproduction(settings, annotator, project, tiny_pipeline_dir):
    settings.PICKWISE_DEVICE = "cuda"
    worker.reset_pipeline_cache()
    version = services.model_version_register(
        name="tiny-fp16",
        source=str(tiny_pipeline_dir),
        dtype="float16",
        scheduler="ddim",
        steps=4,
        guidance=5.0,
        width=32,
        height=32,
    )
    jobs = [
        services.generation_job_create(
            user=annotator, model_version=version, prompt=p, project=project, num_images=2
        )
        for p in ("a star", "a circle")
    ]
    worker.run_job(jobs[0].pk)
    for job in jobs:
        job.refresh_from_db()
        assert job.status == JobStatus.SUCCEEDED, job.error
    image = GeneratedImage.objects.filter(job=jobs[1]).first()
    assert (
        image.runtime["device"] == "cuda" and image.runtime["dtype"] == "float16" and "gpu" in image.runtime
    )
    assert inference.sha256_hex(worker.reproduce_image(image)) == image.sha256
