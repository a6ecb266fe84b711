"""The Celery app: three queues, late acks, prefetch 1, time limits under the visibility timeout.

Queues: ``default`` (exports, reapers, bookkeeping), ``gpu`` (inference) and ``gpu-train``
(training); ``TRAIN_NODE_QUEUE`` (``gpu-train-node``) is for the node workers of the other machines of a
training run over several machines. Routing is by task name, so a task module never names a queue itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import celeryd_init
from django.conf import settings as django_settings
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("pickwise")

QUEUES = ("default", "gpu", "gpu-train")
TASK_ROUTES = {
    "generation.tasks.*": {"queue": "gpu"},
    "rlhf.tasks.train_*": {"queue": "gpu-train"},
    "rlhf.tasks.finetune_*": {"queue": "gpu-train"},
    # The other machines' parts of runs over several machines (rlhf.runs.distributed): consumed by one node
    # worker on each of those machines, never by this app's own workers (so not one of QUEUES).
    "rlhf.tasks.training_node_*": {"queue": django_settings.TRAIN_NODE_QUEUE},
    "rlhf.tasks.score_*": {"queue": "gpu"},
    "rlhf.tasks.arena_*": {"queue": "gpu"},
    "*": {"queue": "default"},
}


def build_config(settings: Any) -> dict[str, Any]:
    """Celery configuration derived from Django settings (pure: it creates nothing, so tests can inspect it)."""
    broker = settings.CELERY_BROKER_URL
    transport_options: dict[str, Any] = {"visibility_timeout": settings.CELERY_VISIBILITY_TIMEOUT}
    result_backend = settings.CELERY_RESULT_BACKEND
    if broker.startswith("filesystem://"):
        folder = settings.CELERY_BROKER_DIR
        transport_options.update(
            data_folder_in=str(folder / "queue"),
            data_folder_out=str(folder / "queue"),
            processed_folder=str(folder / "processed"),
            control_folder=str(folder / "control"),
            store_processed=False,
            # Workers poll the folder for messages (every second by default): a short interval is what lets
            # a Generate click start within a few tens of milliseconds; a listdir each time costs little.
            polling_interval=settings.CELERY_FILESYSTEM_POLL_MS / 1000,
        )
        result_backend = result_backend or f"file://{folder / 'results'}"
    elif broker.startswith(("redis://", "rediss://")):
        result_backend = result_backend or broker
    return {
        "broker_url": broker,
        "result_backend": result_backend or None,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": {"visibility_timeout": settings.CELERY_VISIBILITY_TIMEOUT},
        "broker_connection_retry_on_startup": True,
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": "default",
        "task_routes": TASK_ROUTES,
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.CELERY_TASK_TIME_LIMIT,
        "task_soft_time_limit": settings.CELERY_TASK_TIME_LIMIT - 30,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 24 * 3600,
        "task_track_started": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": {
            "run-lease-reapers": {
                "task": "core.tasks.run_reapers",
                "schedule": float(settings.REAPER_INTERVAL_SECONDS),
            },
        },
    }


def embedded_broker_folders(conf: Any) -> list[Path]:
    """The folders the embedded filesystem broker and its file result store need (none for Redis)."""
    options = conf.get("broker_transport_options") or {}
    folders = [Path(options[key]) for key in ("data_folder_in", "data_folder_out", "processed_folder",
                                                "control_folder") if options.get(key)]
    backend = conf.get("result_backend") or ""
    if backend.startswith("file://"):
        folders.append(Path(backend.removeprefix("file://")))
    return folders


@app.on_after_configure.connect
def _make_embedded_broker_folders(sender: Celery, source: Any, **kwargs: Any) -> None:
    """Celery reads its configuration on first use (a worker starting, a task sent), not at import:
    only then are the embedded broker's folders made."""
    for folder in embedded_broker_folders(source):
        folder.mkdir(parents=True, exist_ok=True)


def worker_concurrency(queues: Any, given: Any, settings: Any) -> int | None:
    """The concurrency of a worker consuming only ``gpu-train``: ``TRAIN_WORKER_CONCURRENCY``, unless its
    command line gives ``--concurrency`` (None: leave the worker's own)."""
    names = queues.split(",") if isinstance(queues, str) else list(queues or [])
    if given or [name.strip() for name in names] != ["gpu-train"]:
        return None
    return int(settings.TRAIN_WORKER_CONCURRENCY)


@celeryd_init.connect
def _train_worker_concurrency(sender: Any = None, conf: Any = None, options: Any = None, **kwargs: Any) -> None:
    """Runs as a worker starts, before it sizes its pool."""
    value = worker_concurrency((options or {}).get("queues"), (options or {}).get("concurrency"), django_settings)
    if value is not None and conf is not None:
        conf.worker_concurrency = value


def _configure() -> None:
    app.conf.update(build_config(django_settings))


_configure()
app.autodiscover_tasks()
