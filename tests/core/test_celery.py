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


# Every task of the project and the queue it must run on: a new task has to be placed here on purpose.
EXPECTED_QUEUES = {
    "core.tasks.ping": "default",
    "core.tasks.run_reapers": "default",
    "annotate.tasks.reap_expired_leases": "default",
    "annotate.tasks.run_task_import": "default",
    "projects.webhooks.deliver": "default",  # or WEBHOOK_QUEUE, named when a delivery is queued
    "projects.webhooks.sweep": "default",
    "generation.tasks.run_generation": "gpu",
    "rlhf.tasks.export_preferences": "default",
    "rlhf.tasks.train_reward_model": "gpu-train",
    "rlhf.tasks.finetune_model": "gpu-train",
    "rlhf.tasks.finetune_loop_round": "gpu-train",
    "rlhf.tasks.training_node_run": "gpu-train-node",  # TRAIN_NODE_QUEUE: the other machines' node workers
    "rlhf.tasks.score_images": "gpu",
    "rlhf.tasks.arena_generate_comparisons": "gpu",
}


def test_every_task_is_registered_and_routed_to_its_queue():
    ours = {name for name in app.tasks if name.split(".", 1)[0] in {"core", "projects", "annotate", "generation", "rlhf"}}
    assert ours == set(EXPECTED_QUEUES)
    router = app.amqp.router
    assert {name: router.route({}, name)["queue"].name for name in ours} == EXPECTED_QUEUES


def test_the_names_services_queue_are_registered_tasks():
    """Services queue by name (core.tasks.enqueue_on_commit); each name is a task of that name."""
    from core.tasks import registered_task
    from generation.services import RUN_GENERATION
    from rlhf.datasets.services import EXPORT_PREFERENCES
    from rlhf.loop.arena import ARENA_GENERATE_COMPARISONS
    from rlhf.loop.rounds import FINETUNE_LOOP_ROUND
    from rlhf.runs.distributed import TRAINING_NODE_RUN
    from rlhf.runs.finetune import FINETUNE_MODEL
    from rlhf.runs.reward import TRAIN_REWARD_MODEL
    from rlhf.runs.scoring import SCORE_IMAGES

    for name in (RUN_GENERATION, EXPORT_PREFERENCES, ARENA_GENERATE_COMPARISONS, FINETUNE_LOOP_ROUND,
                 FINETUNE_MODEL, TRAIN_REWARD_MODEL, SCORE_IMAGES, TRAINING_NODE_RUN):
        assert registered_task(name).name == name


def test_queue_reliability_settings():
    conf = app.conf
    assert {q.name for q in conf.task_queues} == {"default", "gpu", "gpu-train"}
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
    # A fresh checkout: the var directory does not exist yet (manage.py and Celery make what they need).
    env.update(PICKWISE_VAR_DIR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="config.settings")
    # No migrate: the round trip needs no table (ping asks the database for SELECT 1, results go to files).
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default", "--pool", "solo"],
        cwd=root, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
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
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_importing_the_celery_app_creates_no_folders(tmp_path):
    """The embedded broker's folders are made when Celery first reads its configuration, not at import."""
    import subprocess
    import sys
    from pathlib import Path

    from config.env import REGISTRY

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in REGISTRY}
    env.update(PICKWISE_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="config.settings")
    probe = ("import django, pathlib; django.setup(); from django.conf import settings; from config.celery import app; "
             "broker = pathlib.Path(settings.CELERY_BROKER_DIR); print(broker.exists()); app.conf.broker_url; "
             "print(sorted(p.name for p in broker.iterdir()))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True,  # noqa: S603
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "['control',", "'processed',", "'queue',", "'results']"]


def test_a_gpu_train_worker_runs_train_worker_concurrency_tasks_unless_told(tmp_path):
    """TRAIN_WORKER_CONCURRENCY sizes a worker that consumes only gpu-train; --concurrency still wins, and
    other workers keep their own."""
    import subprocess
    import sys
    from pathlib import Path

    from config.celery import worker_concurrency
    from config.env import REGISTRY

    settings = type("S", (), {"TRAIN_WORKER_CONCURRENCY": 3})
    assert worker_concurrency(["gpu-train"], None, settings) == 3
    assert worker_concurrency("gpu-train", 2, settings) is None
    assert worker_concurrency(["gpu", "gpu-train"], None, settings) is None

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in REGISTRY}
    env.update(PICKWISE_VAR_DIR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="config.settings",
               TRAIN_WORKER_CONCURRENCY="3")
    worker = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "gpu-train", "-n", "train@test"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    probe = ("import django, time; django.setup(); from config.celery import app\n"
             "for _ in range(60):\n"
             "    stats = app.control.inspect(timeout=1.0, destination=['train@test']).stats()\n"
             "    if stats: print(stats['train@test']['pool']['max-concurrency']); break\n"
             "    time.sleep(0.5)\n")
    try:
        client = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True,  # noqa: S603
                                timeout=120)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == "3"
