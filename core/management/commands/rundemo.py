"""Run the web server and the Celery workers together, for ``make run``.

Three worker processes, one per queue, so that no kind of work waits behind another: ``default``
(exports, bookkeeping) with the embedded beat (the lease reapers), ``gpu`` (generation and scoring: a
Generate click never queues behind a fine-tune) and ``gpu-train`` (reward-model and fine-tune runs).
Each runs its tasks in its own process (the solo pool); the gpu worker loads the offered model versions
as it starts (``GENERATION_PRELOAD``) and, unless ``GENERATION_TORCH_THREADS`` says otherwise, renders on
one CPU thread: beside the web server and a training worker on a small machine, a second torch thread
made a Generate about ten times slower (its threads spin waiting for each other whenever another
process holds a core), while one thread renders the demo's four images in under a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

# (node name, queues, extra arguments, environment defaults) of each worker process.
WORKERS: tuple[tuple[str, str, tuple[str, ...], dict[str, str]], ...] = (
    ("default", "default", ("-B",), {}),
    ("gpu", "gpu", (), {"GENERATION_TORCH_THREADS": "1"}),
    ("train", "gpu-train", (), {}),
)


def worker_command(name: str, queues: str, extra: tuple[str, ...]) -> list[str]:
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "--pool", "solo",
               "--loglevel", "INFO", "-n", f"{name}@%h", *extra]
    if "-B" in extra:
        command += ["--schedule", str(settings.VAR_DIR / "celerybeat-schedule")]
    return command


class Command(BaseCommand):
    help = ("Start the development web server and three Celery workers (default + beat, gpu, gpu-train); "
            "Ctrl-C stops them all.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000", help="host:port for the web server")

    def handle(self, *args: Any, **options: Any) -> None:
        addr = options["addr"]
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        processes = [
            subprocess.Popen(worker_command(name, queues, extra),  # noqa: S603 - fixed argv, no shell
                             env={**defaults, **os.environ})
            for name, queues, extra, defaults in WORKERS
        ]
        processes.append(subprocess.Popen(  # noqa: S603
            [sys.executable, "manage.py", "runserver", "--noreload", addr],
        ))
        self.stdout.write(self.style.SUCCESS(
            f"Pickwise is running at http://{addr}/ with workers for {', '.join(w[1] for w in WORKERS)} "
            "(Ctrl-C stops them all)"))

        def stop(*_: Any) -> None:
            for proc in processes:
                if proc.poll() is None:
                    proc.terminate()

        signal.signal(signal.SIGTERM, stop)
        try:
            while all(proc.poll() is None for proc in processes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            stop()
            for proc in processes:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
