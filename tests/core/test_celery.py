"""A task goes through Redis to a real worker process and its result comes back."""

from __future__ import annotations

import os

import pytest

from config.celery import TASK_ROUTES, app
from core.tasks import ping


@pytest.mark.django_db(transaction=True)
def test_round_trip_through_a_real_worker(celery_worker_process):
    result = ping.delay("hello").get(timeout=60)
    assert result["payload"] == "hello"
    assert result["database"] is True
    assert result["pid"] != os.getpid()


def test_queue_routing_and_reliability_settings():
    conf = app.conf
    assert {q.name for q in conf.task_queues} == {"default", "gpu", "gpu-train"}
    router = app.amqp.router
    assert router.route({}, "generation.tasks.generate_images")["queue"].name == "gpu"
    assert router.route({}, "rlhf.tasks.train_reward_model")["queue"].name == "gpu-train"
    assert router.route({}, "rlhf.tasks.export_preferences")["queue"].name == "default"
    assert TASK_ROUTES["*"] == {"queue": "default"}
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit < conf.broker_transport_options["visibility_timeout"]
    assert "core.tasks.run_reapers" in {entry["task"] for entry in conf.beat_schedule.values()}


def test_embedded_filesystem_broker_round_trip(tmp_path):
    """`make run` uses kombu's filesystem transport: a real worker must serve it with no Redis."""
    import subprocess
    import sys
    from pathlib import Path

    from config.env import REGISTRY

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in REGISTRY}
    env.update(PICKWISE_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="config.settings")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=root, env=env, check=True, timeout=120)  # noqa: S603
    worker = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default", "--pool", "solo"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client = subprocess.run(  # noqa: S603
            [sys.executable, "-c",
             "import django; django.setup(); from core.tasks import ping; print(ping.delay('fs').get(timeout=60))"],
            cwd=root, env=env, capture_output=True, text=True, timeout=120,
        )
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    assert client.returncode == 0, client.stderr
    assert "'payload': 'fs'" in client.stdout
    assert "'database': True" in client.stdout
