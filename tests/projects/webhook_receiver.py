"""A real HTTP receiver for webhook tests (loopback, a thread per request), and a Celery worker of its own.

``Receiver`` records every request (path, headers, body) and answers each path with the answers queued for
it (``respond``; then ``answer_always``'s status): a status code, ``Sleep(seconds, status)`` (longer than the worker's timeout: no answer in
time) or ``HOLD`` (keep the request open until ``release()``: a worker killed mid-delivery). With nothing
queued it answers 200.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from svix.webhooks import Webhook

from tests.conftest import ROOT, _worker_env
from tests.workers import stop


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def verified(self, secret: str) -> dict[str, Any]:
        """The JSON body, after svix's verifier accepted the signature (raises otherwise)."""
        import json

        Webhook(secret).verify(self.body, self.headers)
        return json.loads(self.body)


@dataclass(frozen=True)
class Sleep:
    seconds: float
    status: int = 200


HOLD = "hold"


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._answers: dict[str, deque[Any]] = defaultdict(deque)
        self._defaults: dict[str, int] = {}
        self._changed = threading.Condition()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                with receiver._changed:
                    receiver.requests.append(received)
                    queued = receiver._answers[self.path]
                    answer = queued.popleft() if queued else receiver._defaults.get(self.path, 200)
                    receiver._changed.notify_all()
                if answer == HOLD:
                    receiver._release.wait(120)
                    answer = 200
                elif isinstance(answer, Sleep):
                    time.sleep(answer.seconds)
                    answer = answer.status
                try:
                    self.send_response(answer)
                    self.send_header("content-type", "text/plain")
                    self.end_headers()
                    self.wfile.write(b"ok" if answer < 300 else f"receiver says {answer}".encode())
                except OSError:  # the sender gave up (timeout) or died first
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def respond(self, path: str, *answers: Any) -> None:
        with self._changed:
            self._answers[path].extend(answers)

    def answer_always(self, path: str, status: int) -> None:
        """Answer ``path`` with ``status`` once its queued answers are used up."""
        with self._changed:
            self._defaults[path] = status

    def release(self) -> None:
        self._release.set()

    def received(self, path: str | None = None) -> list[Received]:
        with self._changed:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 60) -> list[Received]:
        """The first ``count`` requests (to ``path``), waiting up to ``timeout`` seconds for them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = [r for r in self.requests if path is None or r.path == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the receiver got {len(got)} of {count} requests to {path or 'any path'}")
                self._changed.wait(left)

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


# The settings a webhook worker of these tests runs with: loopback allowed, short timeouts, quick retries.
# (The retry window is stamped on each delivery by the process that emits it: each test sets its own.)
WORKER_SETTINGS = {
    "OUTBOUND_ALLOW_PRIVATE_ADDRESSES": "true",
    "WEBHOOK_TIMEOUT_SECONDS": "3",  # the receiver answers from the test process, which may be busy training
    "WEBHOOK_RETRY_BASE_SECONDS": "1",
    "WEBHOOK_RETRY_FOR_SECONDS": "6",
    "WEBHOOK_DISABLE_AFTER_FAILURES": "2",
}


def start_worker(*, database: str, queue: str, log: Path, **settings: str) -> subprocess.Popen[bytes]:
    """A ``celery worker`` consuming only ``queue`` (its deliveries go there too: ``WEBHOOK_QUEUE``), ready."""
    from config.celery import app

    env = _worker_env(database)
    env.update(WORKER_SETTINGS, WEBHOOK_QUEUE=queue, **settings)
    name = f"webhooks-{uuid.uuid4().hex[:6]}@%h"
    with open(log, "ab") as out:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-Q", queue, "--pool", "prefork",
             "--concurrency", "1", "--loglevel", "INFO", "-n", name],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    host = name.replace("%h", __import__("socket").gethostname())
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the webhook worker exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if app.control.ping(destination=[host], timeout=1.0):
            return proc
    stop(proc, signal.SIGKILL)
    raise AssertionError(f"the webhook worker did not answer a ping in 90 s: {log.read_text()[-2000:]}")


def new_queue() -> str:
    return f"webhooks-test-{uuid.uuid4().hex[:8]}"
