"""The job life cycle, run in this process through the same worker code a Celery task runs."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.http import Http404
from django.test import override_settings
from django.utils import timezone

from core.exceptions import ApplicationError, PermissionDeniedError
from core.tasks import registered_reapers
from generation import inference, services, tasks, worker
from generation.models import GeneratedImage, GenerationJob, JobStatus
from tests.generation.conftest import TINY_DEFAULTS


def create(user, version, project, **kwargs):
    kwargs.setdefault("prompt", "a red circle on a blue background")
    return services.generation_job_create(user=user, model_version=version, project=project, **kwargs)


@contextmanager
def unet_calls(version):
    """Row counts of the UNet's forward calls in the block (a forward hook observes; nothing is mocked)."""
    pipe = worker.pipeline_cache().get(worker.spec_for(version)).pipe
    rows: list[int] = []
    handle = pipe.unet.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    try:
        yield rows
    finally:
        handle.remove()


def test_create_resolves_params_draws_seeds_and_enqueues_on_commit(
    annotator, project, tiny_version, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = create(annotator, tiny_version, project, num_images=3, params={"steps": 6})
    assert len(callbacks) == 1
    assert job.status == JobStatus.QUEUED
    assert job.params == {**TINY_DEFAULTS, "steps": 6, "guidance": 5.0, "negative_prompt": ""}
    assert len(job.seeds) == 3 and all(0 <= s < 2**31 for s in job.seeds)
    assert job.params_hash == services.params_hash(inference.GenerationParams(**job.params))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 1001}, "prompt"),
        ({"num_images": 0}, "num_images"),
        ({"num_images": 9}, "num_images"),
        ({"seeds": [1, 2], "num_images": 3}, "seeds"),
        ({"seeds": [-1]}, "seeds"),
        ({"params": {"steps": 0}}, "steps"),
        ({"params": {"steps": 151}}, "steps"),
        ({"params": {"guidance": 31}}, "guidance"),
        ({"params": {"width": 36}}, "width"),
        ({"params": {"height": 2048}}, "height"),
        ({"params": {"scheduler": "magic"}}, "scheduler"),
        ({"params": {"sampler": "ddim"}}, "sampler"),
    ],
)
def test_invalid_requests_name_the_field(annotator, project, tiny_version, kwargs, field):
    with pytest.raises(ApplicationError) as info:
        create(annotator, tiny_version, project, **kwargs)
    assert info.value.field == field
    assert info.value.message
    assert not GenerationJob.objects.exists()


def test_permissions_and_disabled_versions(annotator, ml_engineer, project, other_project, tiny_version):
    with pytest.raises(Http404):
        create(annotator, tiny_version, other_project)
    with pytest.raises(PermissionDeniedError):
        create(annotator, tiny_version, None)  # outside a project needs the ML engineer role
    assert create(ml_engineer, tiny_version, None).project is None
    services.model_version_set_enabled(version=tiny_version, enabled=False)
    with pytest.raises(ApplicationError, match="disabled"):
        create(annotator, tiny_version, project)


def test_rate_limit_queue_cap_and_idempotency(annotator, project, tiny_version):
    first = create(annotator, tiny_version, project, idempotency_key="click-1")
    assert create(annotator, tiny_version, project, idempotency_key="click-1") == first
    with override_settings(GENERATION_RATE_LIMIT_PER_MINUTE=2):
        create(annotator, tiny_version, project)
        with pytest.raises(services.RateLimitedError) as info:
            create(annotator, tiny_version, project)
        assert 1 <= info.value.retry_after <= 61
    with override_settings(GENERATION_MAX_QUEUED_JOBS_PER_USER=2), pytest.raises(ApplicationError) as info:
        create(annotator, tiny_version, project)
    assert info.value.field == "queue"


def test_lifecycle_stores_every_image_with_provenance(annotator, project, tiny_version):
    job = create(annotator, tiny_version, project, num_images=2, seeds=[11, 12])
    result = worker.run_job(job.pk)
    assert result.outcome == "succeeded" and result.images_written == 2
    job.refresh_from_db()
    assert (job.status, job.progress, job.attempts, job.error) == (JobStatus.SUCCEEDED, 1.0, 1, "")
    assert job.started_at <= job.finished_at
    images = list(job.images.order_by("index"))
    assert [(i.index, i.seed) for i in images] == [(0, 11), (1, 12)]
    for image in images:
        assert image.storage_key == f"generated/{job.pk}/{image.index}-{image.seed}.png"
        with default_storage.open(image.storage_key, "rb") as handle:
            data = handle.read()
        assert inference.sha256_hex(data) == image.sha256 and len(data) == image.size_bytes
        assert (image.width, image.height) == (32, 32)
        assert image.params == job.params and image.prompt == job.prompt
        assert image.model_version == tiny_version
        assert image.runtime["device"] == "cpu" and image.runtime["dtype"] == "float32"
        assert image.generation_seconds > 0
    # A redelivered task is a no-op.
    assert worker.run_job(job.pk).outcome == "skipped"
    assert job.images.count() == 2


def test_three_queued_jobs_become_one_batched_forward_pass(annotator, project, tiny_version):
    jobs = [
        create(annotator, tiny_version, project, prompt=f"a {c} square", seeds=[i])
        for i, c in enumerate(("red", "green", "blue"))
    ]
    other = create(annotator, tiny_version, project, params={"steps": 3})  # other params: not coalesced
    with unet_calls(tiny_version) as rows:
        result = worker.run_job(jobs[0].pk)
    assert sorted(result.claimed) == sorted(j.pk for j in jobs)
    # One UNet call per step on all three images, padded to a batch of 4 (x2 rows for classifier-free guidance).
    assert rows == [8] * TINY_DEFAULTS["steps"]
    tokens = set()
    for job in jobs:
        job.refresh_from_db()
        assert job.status == JobStatus.SUCCEEDED and job.batch_images == 3
        tokens.add(job.lease_token)
        assert job.images.get().batch_size == 3
    assert len(tokens) == 1
    assert [worker.run_job(j.pk).outcome for j in jobs[1:]] == ["skipped", "skipped"]
    other.refresh_from_db()
    assert other.status == JobStatus.QUEUED


def test_the_task_drains_queued_jobs_of_its_loaded_model_up_to_the_limit(annotator, project, tiny_version):
    # Different steps: no coalescing, so each job is a claim of its own.
    jobs = [create(annotator, tiny_version, project, params={"steps": steps}) for steps in (2, 3, 4, 5)]
    with override_settings(GENERATION_DRAIN_CLAIMS=2):
        outcome = tasks.run_generation.apply(args=[jobs[0].pk]).get()
    assert outcome["outcome"] == "succeeded" and outcome["claimed"] == [jobs[0].pk]
    assert [(d["job_id"], d["outcome"]) for d in outcome["drained"]] == [
        (jobs[1].pk, "succeeded"), (jobs[2].pk, "succeeded")
    ]
    statuses = [GenerationJob.objects.get(pk=j.pk).status for j in jobs]
    assert statuses == [JobStatus.SUCCEEDED] * 3 + [JobStatus.QUEUED]
    assert [GenerationJob.objects.get(pk=j.pk).images.count() for j in jobs] == [1, 1, 1, 0]
    # The drained jobs' own messages find them done; the fourth still gets rendered by its own.
    assert [worker.run_job(j.pk).outcome for j in jobs[1:]] == ["skipped", "skipped", "succeeded"]
    with override_settings(GENERATION_DRAIN_CLAIMS=0):
        assert tasks.run_generation.apply(args=[jobs[3].pk]).get()["drained"] == []


def test_batch_limit_splits_work_into_chunks(annotator, project, tiny_version):
    job = create(annotator, tiny_version, project, num_images=5)
    with unet_calls(tiny_version) as rows:
        worker.run_job(job.pk, batch_limit=2)
    assert rows == [4] * 4 + [4] * 4 + [2] * 4  # 2 + 2 + 1 images, two rows each (guidance)
    assert sorted(i.runtime["batch_shape"] for i in job.images.all()) == [1, 2, 2, 2, 2]
    assert job.images.count() == 5


def test_regenerating_from_provenance_gives_the_same_pixels(annotator, project, tiny_version):
    jobs = [
        create(annotator, tiny_version, project, prompt=p, num_images=2) for p in ("a star", "two circles")
    ]
    worker.run_job(jobs[0].pk)  # both jobs in one batch of four images
    image = GeneratedImage.objects.get(job=jobs[1], index=1)
    assert image.batch_size == 4
    worker.reset_pipeline_cache()  # a fresh load, alone in its batch
    assert inference.sha256_hex(worker.reproduce_image(image)) == image.sha256


def test_rerun_makes_only_the_missing_images_and_removes_orphans(annotator, project, tiny_version):
    job = create(annotator, tiny_version, project, num_images=3)
    worker.run_job(job.pk)
    kept = {i.index: (i.pk, i.sha256) for i in job.images.all()}
    lost = job.images.get(index=1)
    assert lost.runtime["batch_shape"] == 4  # three images, padded to the next power of two
    default_storage.delete(lost.storage_key)
    lost.delete()
    orphan = default_storage.save(f"{job.storage_prefix}7-123.png", ContentFile(b"half-written"))
    GenerationJob.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)

    result = worker.run_job(job.pk)
    assert result.images_written == 1
    assert not default_storage.exists(orphan)
    after = {i.index: (i.pk, i.sha256) for i in job.images.all()}
    assert after[0] == kept[0] and after[2] == kept[2]
    assert after[1][1] == kept[1][1] and after[1][0] != kept[1][0]
    # Re-rendered alone, in the batch shape the image was first made in (kernels round by shape).
    assert job.images.get(index=1).runtime["batch_shape"] == 4
    _, files = default_storage.listdir(job.storage_prefix)
    assert sorted(files) == sorted(i.storage_key.rsplit("/", 1)[1] for i in job.images.all())


def test_pipeline_error_fails_the_job_with_a_readable_reason(annotator, project, tiny_version, monkeypatch):
    job = create(annotator, tiny_version, project)

    def out_of_memory(*args, **kwargs):
        raise inference.translate_error(RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"))

    monkeypatch.setattr(inference, "generate_batch", out_of_memory)
    assert worker.run_job(job.pk).outcome == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("Out of memory while generating") and "fewer images" in job.error


def test_pipeline_failure_and_unloadable_model_fail_the_job(
    annotator, ml_engineer, project, tiny_version, tmp_path
):
    broken = create(annotator, tiny_version, project)
    unet = worker.pipeline_cache().get(worker.spec_for(tiny_version)).pipe.unet

    def shape_error(module, args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x32 and 64x32)")

    handle = unet.register_forward_pre_hook(shape_error)
    try:
        assert worker.run_job(broken.pk).outcome == "failed"
    finally:
        handle.remove()
    broken.refresh_from_db()
    assert broken.status == JobStatus.FAILED
    assert (
        broken.error
        == "Generation failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x32 and 64x32)"
    )

    missing = services.model_version_register(name="gone", source=str(tmp_path / "nowhere"), dtype="float32")
    job = create(ml_engineer, missing, None)
    worker.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("Could not load model version 'gone'") and "does not exist" in job.error


def test_transient_storage_errors_retry_then_release(annotator, project, tiny_version, monkeypatch):
    monkeypatch.setattr(services, "STORAGE_BACKOFF_S", 0)
    real_save = default_storage.save
    failures = {"left": 2}

    def flaky_save(name, content, *args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionResetError("storage hiccup")
        return real_save(name, content, *args, **kwargs)

    monkeypatch.setattr(default_storage, "save", flaky_save)
    job = create(annotator, tiny_version, project)
    assert worker.run_job(job.pk).outcome == "succeeded"

    failures["left"] = 10**6
    second = create(annotator, tiny_version, project)
    result = worker.run_job(second.pk)
    assert result.outcome == "storage_unavailable" and "storage hiccup" in result.error
    second.refresh_from_db()
    assert second.status == JobStatus.QUEUED and second.lease_token is None and second.attempts == 1


def test_reaper_requeues_expired_leases_then_gives_up(
    annotator, project, tiny_version, django_capture_on_commit_callbacks
):
    assert "generation.expired_leases" in registered_reapers()
    job = create(annotator, tiny_version, project)
    claim = services.generation_jobs_claim(job_id=job.pk, worker="w", batch_limit=8)
    assert claim is not None
    assert services.generation_jobs_reap_expired() == 0  # lease still valid
    GenerationJob.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert registered_reapers()["generation.expired_leases"]() == 1
    assert len(callbacks) == 1
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.attempts == 1

    for _ in range(job.max_attempts - 1):
        services.generation_jobs_claim(job_id=job.pk, worker="w", batch_limit=8)
        GenerationJob.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
        services.generation_jobs_reap_expired()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempts == job.max_attempts
    assert "stopped 3 times" in job.error


def test_progress_is_throttled_and_cancel_stops_a_running_job(annotator, project, tiny_version, monkeypatch):
    beats: list[float] = []
    real_heartbeat = services.generation_jobs_heartbeat

    def spy(*, token, progress):
        beats.append(progress)
        return real_heartbeat(token=token, progress=progress)

    monkeypatch.setattr(services, "generation_jobs_heartbeat", spy)
    monkeypatch.setattr(worker, "PROGRESS_INTERVAL_S", 3600)
    job = create(annotator, tiny_version, project, params={"steps": 8})
    assert worker.run_job(job.pk).outcome == "succeeded"
    assert beats == []  # the claim wrote the lease and progress; no other write in an hour-long window
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.progress == 1.0

    beats.clear()
    monkeypatch.setattr(worker, "PROGRESS_INTERVAL_S", 0)
    job = create(annotator, tiny_version, project, params={"steps": 8})

    def cancel_midway(*, token, progress):
        beats.append(progress)
        if len(beats) == 3:
            services.generation_job_cancel(job=job, user=annotator)
        return real_heartbeat(token=token, progress=progress)

    monkeypatch.setattr(services, "generation_jobs_heartbeat", cancel_midway)
    assert worker.run_job(job.pk).outcome == "lease_lost"
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and not job.images.exists()
    assert beats == [pytest.approx(k / 8) for k in (1, 2, 3)]
