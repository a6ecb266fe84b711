"""The worker stores a chunk on a background thread while the next one renders (transactional tests:
the storer's thread commits through a database connection of its own)."""

from __future__ import annotations

import threading

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import default_storage

from generation import services, tasks, worker
from generation.models import GeneratedImage, GenerationJob, JobStatus
from tests.generation.conftest import TINY_DEFAULTS

pytestmark = pytest.mark.django_db(transaction=True)


def create(user, version, project, **kwargs):
    kwargs.setdefault("prompt", "a red circle on a blue background")
    return services.generation_job_create(user=user, model_version=version, project=project, **kwargs)


def stored_files(job: GenerationJob) -> list[str]:
    try:
        return sorted(default_storage.listdir(job.storage_prefix)[1])
    except FileNotFoundError:
        return []


def assert_exactly_requested(job: GenerationJob) -> None:
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    images = list(GeneratedImage.objects.filter(job=job).order_by("index"))
    assert [(i.index, i.seed) for i in images] == list(enumerate(job.seeds))
    assert stored_files(job) == sorted(i.storage_key.rsplit("/", 1)[1] for i in images)


def fail_saves_under(monkeypatch, prefix: str, error: Exception) -> None:
    monkeypatch.setattr(services, "STORAGE_BACKOFF_S", 0)
    real_save = default_storage.save

    def save(name, content, *args, **kwargs):
        if name.startswith(prefix):
            raise error
        return real_save(name, content, *args, **kwargs)

    monkeypatch.setattr(default_storage, "save", save)


def test_a_chunk_is_stored_while_the_next_one_renders(annotator, project, tiny_version, monkeypatch):
    job = create(annotator, tiny_version, project, num_images=5)  # chunks of 2 + 2 + 1 images
    steps = TINY_DEFAULTS["steps"]
    chunk_started = [threading.Event() for _ in range(3)]
    forwards = []

    def on_forward(module, args, output):
        forwards.append(1)
        if (len(forwards) - 1) % steps == 0:
            chunk_started[(len(forwards) - 1) // steps].set()

    unet = worker.pipeline_cache().get(worker.spec_for(tiny_version)).pipe.unet
    handle = unet.register_forward_hook(on_forward)
    real_store = services.generated_images_store
    stores = []

    def store(**kwargs):
        chunk = len(stores)
        # Chunk k's store waits until chunk k+1 renders: it can only finish if the two overlap.
        overlapped = chunk == 2 or chunk_started[chunk + 1].wait(timeout=60)
        stores.append((threading.current_thread() is threading.main_thread(), overlapped, kwargs["finish"]))
        return real_store(**kwargs)

    monkeypatch.setattr(services, "generated_images_store", store)
    try:
        result = worker.run_job(job.pk, batch_limit=2)
    finally:
        handle.remove()
    # The last chunk has no pipeline call after it: its store runs as the run ends.
    assert stores == [(False, True, False), (False, True, False), (True, True, True)]
    assert (result.outcome, result.images_written) == ("succeeded", 5)
    assert_exactly_requested(job)
    assert sorted(job.images.values_list("batch_size", flat=True)) == [1, 2, 2, 2, 2]


def test_the_task_stores_each_claim_while_rendering_the_next(annotator, project, tiny_version):
    # Different steps: no coalescing, so each job is a claim of its own.
    jobs = [create(annotator, tiny_version, project, num_images=2, params={"steps": s}) for s in (2, 3, 4)]
    outcome = tasks.run_generation.apply(args=[jobs[0].pk]).get()
    assert outcome["outcome"] == "succeeded"
    assert [(d["job_id"], d["outcome"]) for d in outcome["drained"]] == [
        (jobs[1].pk, "succeeded"), (jobs[2].pk, "succeeded")
    ]
    for job in jobs:
        assert_exactly_requested(job)


def test_a_storage_outage_in_an_overlapped_store_releases_only_that_claim(
    annotator, project, tiny_version, monkeypatch
):
    jobs = [create(annotator, tiny_version, project, num_images=2, params={"steps": s}) for s in (2, 3, 4)]
    fail_saves_under(monkeypatch, jobs[0].storage_prefix, ConnectionResetError("storage hiccup"))
    with worker.Storer() as storer:
        first = worker.run_job(jobs[0].pk, storer=storer)
        assert first.outcome == "storing"  # its store is still in flight
        drained = worker.drain_queue(model_version_id=tiny_version.pk, claims=5, storer=storer)
    assert first.outcome == "storage_unavailable" and "storage hiccup" in first.error
    # The failure settled while the second claim rendered: that claim is stored, then draining stops.
    assert [(d.job_id, d.outcome) for d in drained] == [(jobs[1].pk, "succeeded")]
    jobs[0].refresh_from_db()
    assert (jobs[0].status, jobs[0].lease_token, jobs[0].attempts) == (JobStatus.QUEUED, None, 1)
    assert not jobs[0].images.exists() and stored_files(jobs[0]) == []
    assert_exactly_requested(jobs[1])
    assert GenerationJob.objects.get(pk=jobs[2].pk).status == JobStatus.QUEUED


def test_the_task_requeues_a_drained_claim_that_storage_turned_away(annotator, project, tiny_version, monkeypatch):
    jobs = [create(annotator, tiny_version, project, params={"steps": s}) for s in (2, 3)]
    fail_saves_under(monkeypatch, jobs[1].storage_prefix, ConnectionResetError("storage hiccup"))
    requeued = []
    monkeypatch.setattr(tasks.run_generation, "delay", requeued.append)
    outcome = tasks.run_generation.apply(args=[jobs[0].pk]).get()
    # The last store settles before the task returns.
    assert outcome["outcome"] == "succeeded"
    assert [(d["job_id"], d["outcome"]) for d in outcome["drained"]] == [(jobs[1].pk, "storage_unavailable")]
    assert requeued == [jobs[1].pk]
    assert_exactly_requested(jobs[0])
    assert GenerationJob.objects.get(pk=jobs[1].pk).status == JobStatus.QUEUED


def test_any_other_store_error_fails_the_job_with_a_readable_reason(annotator, project, tiny_version, monkeypatch):
    job = create(annotator, tiny_version, project, num_images=3)
    fail_saves_under(monkeypatch, job.storage_prefix, SuspiciousFileOperation("Detected path traversal attempt"))
    result = worker.run_job(job.pk, batch_limit=2)
    assert result.outcome == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error == "Could not store the images: SuspiciousFileOperation: Detected path traversal attempt"
    assert not job.images.exists() and stored_files(job) == []


def test_a_pipeline_error_after_a_pending_store_leaves_no_orphans(annotator, project, tiny_version):
    job = create(annotator, tiny_version, project, num_images=4)
    unet = worker.pipeline_cache().get(worker.spec_for(tiny_version)).pipe.unet
    forwards = []

    def fail_in_the_second_chunk(module, args):
        forwards.append(1)
        if len(forwards) > TINY_DEFAULTS["steps"]:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    handle = unet.register_forward_pre_hook(fail_in_the_second_chunk)
    try:
        assert worker.run_job(job.pk, batch_limit=2).outcome == "failed"
    finally:
        handle.remove()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error.startswith("Generation failed: RuntimeError")
    images = list(job.images.order_by("index"))
    assert [i.index for i in images] == [0, 1]  # the first chunk's store finished before the job failed
    assert stored_files(job) == sorted(i.storage_key.rsplit("/", 1)[1] for i in images)
