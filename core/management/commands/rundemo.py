"""Run the web server and the Celery workers together, for ``make run``.

Three worker processes, one per queue, so that no kind of work waits behind another: ``gpu``
(generation and scoring: a Generate click never queues behind a fine-tune), ``default`` (exports,
bookkeeping) with the embedded beat (the lease reapers), and ``gpu-train`` (reward-model and fine-tune
runs). Each runs its tasks in its own process (the solo pool). On one small machine they share the CPU
with the web server, so Generate, which someone is waiting for, comes first:

- the gpu worker starts first, loads the offered model versions as it starts (``GENERATION_PRELOAD``)
  and, unless ``GENERATION_TORCH_THREADS`` says otherwise, renders on one CPU thread: beside the web
  server and a training worker, a second torch thread made the demo's render about ten times slower
  (the threads spin waiting for each other whenever another process holds a core);
- it polls the embedded broker every ``CELERY_FILESYSTEM_POLL_MS`` (50 ms); the other two, whose work
  nobody watches start, every 500 ms unless that setting is given;
- the default and training workers run at a lower scheduling priority (nice 10), so a fine-tune takes
  the CPU the gpu worker and the web server leave.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand


@dataclass(frozen=True)
class Worker:
    name: str  # the node name (name@host)
    queues: str
    extra: tuple[str, ...] = ()  # more worker arguments
    env: dict[str, str] = field(default_factory=dict)  # environment defaults (the caller's own win)
    nice: int = 0  # scheduling priority increment


BACKGROUND = {"CELERY_FILESYSTEM_POLL_MS": "500"}
WORKERS: tuple[Worker, ...] = (
    Worker("gpu", "gpu", env={"GENERATION_TORCH_THREADS": "1"}),
    Worker("default", "default", ("-B",), env=BACKGROUND, nice=10),
    Worker("train", "gpu-train", env=BACKGROUND, nice=10),
)


def worker_command(worker: Worker) -> list[str]:
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", worker.queues, "--pool", "solo",
               "--loglevel", "INFO", "-n", f"{worker.name}@%h", *worker.extra]
    if "-B" in worker.extra:
        command += ["--schedule", str(settings.VAR_DIR / "celerybeat-schedule")]
    return command


def start_worker(worker: Worker) -> subprocess.Popen[bytes]:
    def lower_priority() -> None:  # runs in the child, before the worker starts
        os.nice(worker.nice)

    return subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        worker_command(worker), env={**worker.env, **os.environ},
        preexec_fn=lower_priority if worker.nice else None,
    )


class Command(BaseCommand):
    help = ("Start the development web server and three Celery workers (default + beat, gpu, gpu-train); "
            "Ctrl-C stops them all.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000", help="host:port for the web server")

    def handle(self, *args: Any, **options: Any) -> None:
        addr = options["addr"]
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        processes = [start_worker(worker) for worker in WORKERS]
        processes.append(subprocess.Popen(  # noqa: S603
            [sys.executable, "manage.py", "runserver", "--noreload", addr],
        ))
        self.stdout.write(self.style.SUCCESS(
            f"Pickwise is running at http://{addr}/ with workers for {', '.join(w.queues for w in WORKERS)} "
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
