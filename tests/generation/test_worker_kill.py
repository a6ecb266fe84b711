"""SIGKILL a real worker mid-job; after the reaper and a fresh worker, exactly the requested images exist."""

from __future__ import annotations

import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from generation import services
from generation.models import GeneratedImage, GenerationJob, JobStatus
from generation.tasks import run_generation
from tests import workers
from tests.workers import stop, wait_for

# A queue of our own, so that the session's shared worker never takes this test's job.
QUEUE = f"gpu-kill-{uuid.uuid4().hex[:8]}"


def start_worker(log: Path) -> subprocess.Popen[bytes]:
    # Short leases (renewed by progress heartbeats) and two images per pipeline call, so the job
    # is stored in chunks and a kill lands between them.
    return workers.start_worker(log, QUEUE, GENERATION_LEASE_SECONDS="3", GENERATION_BATCH_LIMIT="2")


@pytest.mark.django_db(transaction=True)
def test_sigkill_mid_job_ends_with_exactly_the_requested_images(
    annotator, project, tiny_pipeline_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        run_generation,
        "delay_on_commit",
        lambda job_id: transaction.on_commit(lambda: run_generation.apply_async(args=[job_id], queue=QUEUE)),
    )
    version = services.model_version_register(
        name="tiny-slow",
        source=str(tiny_pipeline_dir),
        dtype="float32",
        scheduler="heun",
        steps=150,
        guidance=5.0,
        width=64,
        height=64,
    )
    job = services.generation_job_create(
        user=annotator, model_version=version, prompt="a slow red circle", num_images=6, project=project
    )
    log = tmp_path / "worker.log"
    first = start_worker(log)
    try:
        # Kill -9 once some images are stored and the rest are still being made.
        wait_for(lambda: GeneratedImage.objects.filter(job=job).exists(), 120, "the first stored images")
        stop(first, signal.SIGKILL)
    finally:
        stop(first, signal.SIGKILL)
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING, (job.status, log.read_text()[-2000:])
    before = {image.index: image.pk for image in GeneratedImage.objects.filter(job=job)}
    assert 0 < len(before) < job.num_images
    # A half-written file of an image that never got its row.
    default_storage.save(
        f"{job.storage_prefix}{job.num_images - 1}-{job.seeds[-1]}.png", ContentFile(b"\x89PN")
    )

    # The lease lapses without heartbeats; the reaper puts the job back in the queue.
    wait_for(lambda: GenerationJob.objects.get(pk=job.pk).lease_expires_at < timezone.now(), 30, "the lease")
    assert services.generation_jobs_reap_expired() == 1
    assert GenerationJob.objects.get(pk=job.pk).status == JobStatus.QUEUED

    second = start_worker(log)
    try:
        wait_for(lambda: GenerationJob.objects.get(pk=job.pk).is_finished, 120, "the job to finish")
    finally:
        stop(second)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, (job.error, log.read_text()[-2000:])
    assert job.attempts == 2
    images = list(GeneratedImage.objects.filter(job=job).order_by("index"))
    assert [image.index for image in images] == list(range(job.num_images))
    assert [image.seed for image in images] == job.seeds
    assert {image.index: image.pk for image in images if image.index in before} == before  # kept, not redone
    _, files = default_storage.listdir(job.storage_prefix)
    assert sorted(files) == sorted(Path(image.storage_key).name for image in images)  # no orphans
    for image in images:
        with default_storage.open(image.storage_key, "rb") as handle:
            assert services.sha256_hex(handle.read()) == image.sha256
