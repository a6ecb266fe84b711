"""A gpu worker loads the model versions projects offer when it starts (and warms them up), so the first
Generate does not wait for a model load: which versions, the load itself, a version that cannot load, and a
real worker process of each pool kind doing it at start. Also the progress poll's pace."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
import uuid

import pytest
from django.db import connection
from django.utils import timezone

from generation import selectors, services, worker
from generation.models import GenerationJob
from tests.conftest import ROOT, _worker_env
from tests.generation.conftest import TINY_DEFAULTS


def register(name: str, source: str, **extra):
    return services.model_version_register(name=name, source=source, dtype="float32", **TINY_DEFAULTS, **extra)


def job_for(version, project, user, *, minutes_ago: float):
    job = services.generation_job_create(user=user, model_version=version, prompt="a red circle", num_images=1,
                                         project=project)
    GenerationJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - dt.timedelta(minutes=minutes_ago))
    return job


def test_the_offered_versions_most_recently_used_first_one_per_base_pipeline(
        project, annotator, tiny_pipeline_dir, tiny_lora_dir):
    older, recent, unused, hidden = (register(name, str(tiny_pipeline_dir)) for name in ("older", "recent", "unused",
                                                                                        "hidden"))
    adapter = services.model_version_register(name="recent-lora", parent=recent, lora_path=str(tiny_lora_dir),
                                              dtype="float32")
    disabled = register("disabled", str(tiny_pipeline_dir))
    services.project_model_versions_set(project=project, version_ids=[v.pk for v in (older, recent, unused, adapter,
                                                                                     disabled)])
    services.model_version_set_enabled(version=disabled, enabled=False)  # offered, then switched off
    job_for(older, project, annotator, minutes_ago=30)
    job_for(recent, project, annotator, minutes_ago=20)
    job_for(adapter, project, annotator, minutes_ago=10)

    names = [v.name for v in selectors.model_versions_to_preload(limit=5)]
    # the LoRA shares its parent's pipeline: loading it loads "recent" too, so "recent" takes no slot of its own
    assert names == ["recent-lora", "older", "unused"]
    assert [v.name for v in selectors.model_versions_to_preload(limit=1)] == ["recent-lora"]
    assert hidden.name not in names and disabled.name not in names  # not offered, or disabled


def test_preload_loads_and_warms_each_version_and_skips_one_that_cannot_load(project, tiny_pipeline_dir, settings,
                                                                            caplog):
    settings.GENERATION_PIPELINE_CACHE_SIZE = 2
    tiny = register("tiny", str(tiny_pipeline_dir))
    broken = register("broken", str(tiny_pipeline_dir.parent / "no-such-pipeline"))
    services.project_model_versions_set(project=project, version_ids=[tiny.pk, broken.pk])
    assert worker.preload_versions() == ["tiny"]
    assert worker.pipeline_cache().keys() == [tiny.cache_key]
    assert "could not preload model version 'broken'" in caplog.text
    assert "preloaded model version 'tiny'" in caplog.text


def test_progress_is_polled_quickly_while_a_job_is_young(project, annotator, tiny_pipeline_dir):
    job = job_for(register("tiny", str(tiny_pipeline_dir)), project, annotator, minutes_ago=0)
    assert selectors.poll_interval_ms(job) == 200
    GenerationJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - dt.timedelta(seconds=25))
    job.refresh_from_db()
    assert selectors.poll_interval_ms(job) == 1000


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_a_gpu_worker_preloads_the_offered_versions_when_it_starts(pool, project, tiny_pipeline_dir, tmp_path):
    tiny = register("tiny-preloaded", str(tiny_pipeline_dir))
    services.project_model_versions_set(project=project, version_ids=[tiny.pk])
    log = tmp_path / "worker.log"
    env = _worker_env(connection.settings_dict["NAME"]) | {"GENERATION_TORCH_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "gpu", "--pool", pool,
             "--concurrency", "1", "--loglevel", "INFO", "-n", f"preload-{uuid.uuid4().hex[:6]}@%h"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "preloaded model version 'tiny-preloaded'" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert "could not preload" not in log.read_text()
