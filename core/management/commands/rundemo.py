"""Run the web server and a Celery worker (with embedded beat) together, for ``make run``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Start the development web server and a Celery worker on all queues; Ctrl-C stops both."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000", help="host:port for the web server")

    def handle(self, *args: Any, **options: Any) -> None:
        addr = options["addr"]
        worker = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-B", "-Q", "default,gpu,gpu-train",
             "--pool", "solo", "--loglevel", "INFO", "--schedule", "var/celerybeat-schedule"],
        )
        web = subprocess.Popen(  # noqa: S603
            [sys.executable, "manage.py", "runserver", "--noreload", addr],
        )
        self.stdout.write(self.style.SUCCESS(f"Pickwise is running at http://{addr}/  (Ctrl-C stops it)"))

        def stop(*_: Any) -> None:
            for proc in (web, worker):
                if proc.poll() is None:
                    proc.terminate()

        signal.signal(signal.SIGTERM, stop)
        try:
            while web.poll() is None and worker.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            stop()
            for proc in (web, worker):
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
