"""Real Celery worker processes on a queue of a test's own, to kill and restart (tests/*/test_worker_kill.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from django.db import connection, transaction

from tests.conftest import ROOT, _worker_env

T = TypeVar("T")


def start_worker(log: Path, queue: str, **env: str) -> subprocess.Popen[bytes]:
    """A ``celery worker`` consuming only ``queue``, in a process group of its own (so a kill takes it whole)."""
    worker_env = _worker_env(connection.settings_dict["NAME"])
    worker_env.update({"GENERATION_TORCH_THREADS": "1", **env})
    with open(log, "ab") as out:
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-Q", queue, "--pool", "prefork",
             "--concurrency", "1", "--loglevel", "INFO", "-n", f"kill-{uuid.uuid4().hex[:6]}@%h"],
            cwd=ROOT, env=worker_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def wait_for(predicate: Callable[[], T], timeout: float, what: str, *, poll: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def route_to(monkeypatch: Any, queue: str, *tasks: Any) -> None:
    """Send ``tasks`` (what services and reapers queue by name) to ``queue`` instead of their usual one."""
    for task in tasks:
        monkeypatch.setattr(task, "delay_on_commit", lambda *args, task=task: transaction.on_commit(
            lambda: task.apply_async(args=list(args), queue=queue)))


class KillableWorkers:
    """One worker at a time on a private queue: ``current()`` starts one when none runs, ``kill()`` SIGKILLs it
    (the next ``current()`` starts a fresh one). Tests of a module share them, so n kills cost n + 1 starts."""

    def __init__(self, log: Path, queue: str, env: dict[str, str]) -> None:
        self.log, self.queue, self.env = log, queue, env
        self.proc: subprocess.Popen[bytes] | None = None

    def current(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = start_worker(self.log, self.queue, **self.env)
        return self.proc

    def kill(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL)
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def processes_naming(path: Path) -> set[int]:
    """The live processes whose command line names ``path`` (a launch spec names one training group's
    torchrun and ranks)."""
    from rlhf.runs.distributed import alive

    marker = str(path).encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return alive(found)
