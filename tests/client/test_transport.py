"""Retries, timeouts, pagination links and error bodies, against a scripted stdlib HTTP server on loopback;
credentials storage. No Django here: these are the client's own rules."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pickwise_client import (
    Client,
    NetworkError,
    NotLoggedInError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    ServiceUnavailableError,
    ValidationError,
)
from pickwise_client import config as client_config
from pickwise_client.errors import FieldError, parse_error_body


class ScriptedServer:
    """Answers each request with the next scripted ``(status, headers, body, delay)``; 200 ``{}`` when the
    script is empty. Records every request as ``(method, path, headers)``."""

    def __init__(self) -> None:
        self.script: deque[tuple[int, dict[str, str], object, float]] = deque()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server.requests.append((self.command, self.path, dict(self.headers)))
                status, headers, body, delay = server.script.popleft() if server.script else (200, {}, {}, 0.0)
                if delay:
                    time.sleep(delay)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def then(self, status: int, body: object = None, headers: dict[str, str] | None = None,
             delay: float = 0.0) -> ScriptedServer:
        self.script.append((status, headers or {}, {} if body is None else body, delay))
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def client(server, waits):
    """A client of the scripted server whose backoff waits are recorded instead of slept."""
    with Client(server.url, "secret-token", sleep=waits.append, backoff_factor=0.5) as made:
        yield made


def test_a_get_that_meets_503_is_retried_after_retry_after_and_succeeds(server, client, waits):
    server.then(503, {"detail": "busy"}, {"Retry-After": "2"}).then(200, {"id": 3, "name": "Shapes"})
    assert client.projects.get(3) == {"id": 3, "name": "Shapes"}
    assert [(m, p) for m, p, _ in server.requests] == [("GET", "/api/projects/3/"), ("GET", "/api/projects/3/")]
    assert waits == [2.0]
    assert server.requests[0][2]["Authorization"] == "Token secret-token"


def test_a_429_without_retry_after_backs_off_exponentially_then_gives_up(server, client, waits):
    for _ in range(5):
        server.then(429, {"detail": "Slow down."})
    with pytest.raises(RateLimitedError) as limited:
        client.projects.get(3)
    assert limited.value.status == 429 and limited.value.message == "Slow down."
    assert len(server.requests) == 5  # the first try and max_retries (4) retries
    for attempt, wait in enumerate(waits):  # 0.5 * 2**attempt, with up to half of it as jitter
        assert 0.25 * 2**attempt <= wait <= 0.5 * 2**attempt


def test_a_post_that_is_not_idempotent_is_never_retried(server, client, waits):
    server.then(503, {"detail": "The scoring worker did not answer in time."})
    with pytest.raises(ServiceUnavailableError) as unavailable:
        client.exports.create(1, "pickapic")
    assert unavailable.value.status == 503 and len(server.requests) == 1 and waits == []


def test_a_submit_with_an_idempotency_key_is_retried(server, client, waits):
    server.then(503, headers={"Retry-After": "0"}).then(201, {"id": 9, "task": 4})
    assert client.tasks.submit(1, 4, [["a"], ["b"]], idempotency_key="k-1")["id"] == 9
    assert len(server.requests) == 2 and waits == [0.0]


def test_a_retry_after_longer_than_the_limit_is_raised_at_once(server, waits):
    server.then(429, {"detail": "Too many generation jobs."}, {"Retry-After": "3600"})
    with Client(server.url, "t", sleep=waits.append, max_retry_after=60) as client, \
            pytest.raises(RateLimitedError) as limited:
        client.generation.get(5)
    assert limited.value.retry_after == 3600 and waits == [] and len(server.requests) == 1


def test_server_errors_and_html_bodies_become_typed_errors(server, client):
    server.then(500, "<html><body><h1>Server Error (500)</h1></body></html>")
    with pytest.raises(ServerError) as failed:
        client.projects.get(1)
    assert failed.value.status == 500 and "Server Error (500)" in failed.value.message
    assert len(server.requests) == 1  # 500 is not retried


def test_a_slow_server_times_out(server):
    server.then(200, {"id": 1}, delay=1.5)
    with Client(server.url, "t", timeout=0.3) as client, pytest.raises(RequestTimeoutError):
        client.projects.get(1)


def closed_port_url() -> str:
    """A loopback URL where nothing listens."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_a_refused_connection_is_retried_for_reads_then_raised(waits):
    with Client(closed_port_url(), "t", sleep=waits.append, max_retries=2) as client, \
            pytest.raises(NetworkError, match="Cannot reach http://127.0.0.1:"):
        client.projects.get(1)
    assert len(waits) == 2


def test_pages_are_followed_on_our_server_even_when_next_names_another_host(server, client):
    server.then(200, {"count": 3, "next": "http://elsewhere.invalid/api/projects/?page=2", "previous": None,
                      "results": [{"id": 1}, {"id": 2}]})
    server.then(200, {"count": 3, "next": None, "previous": "x", "results": [{"id": 3}]})
    assert [p["id"] for p in client.projects.list()] == [1, 2, 3]
    assert [p for _, p, _ in server.requests] == ["/api/projects/", "/api/projects/?page=2"]


def test_drf_error_bodies_are_parsed_into_fields():
    nested = {"params": {"steps": ["Ensure this value is less than or equal to 200."]},
              "seeds": {"1": ["A valid integer is required."]}, "non_field_errors": ["Pick one."]}
    message, field, errors = parse_error_body(nested)
    assert (message, field) == ("Ensure this value is less than or equal to 200.", "params.steps")
    assert errors == [FieldError("params.steps", "Ensure this value is less than or equal to 200."),
                      FieldError("seeds.1", "A valid integer is required."), FieldError(None, "Pick one.")]
    domain = {"detail": "line 3: the prompt is empty. Nothing was imported.", "field": "file",
              "errors": [{"line": 3, "message": "the prompt is empty"}]}
    assert parse_error_body(domain) == ("line 3: the prompt is empty. Nothing was imported.", "file",
                                        [FieldError("file", "the prompt is empty", 3)])
    assert parse_error_body(["Unknown preset."]) == ("Unknown preset.", None, [FieldError(None, "Unknown preset.")])


def test_validation_error_names_every_problem(server, client):
    server.then(400, {"detail": "Invalid schema.", "field": "ranking.images",
                      "errors": [{"location": "ranking.images", "message": "no component 'nowhere'"},
                                 {"location": "images.count", "message": "must be 2 to 8"}]})
    with pytest.raises(ValidationError) as invalid:
        client.templates.create(1, "Broken", schema={"components": []})
    assert invalid.value.field == "ranking.images"
    assert [str(e) for e in invalid.value.errors] == ["ranking.images: no component 'nowhere'",
                                                      "images.count: must be 2 to 8"]
    assert str(invalid.value).endswith("ranking.images: Invalid schema. (and 1 more)")


def test_credentials_are_saved_for_the_owner_only_and_used_for_their_server_only(tmp_path, monkeypatch):
    path = tmp_path / "nested" / "config.json"
    monkeypatch.setenv("PICKWISE_CONFIG", str(path))
    monkeypatch.delenv("PICKWISE_URL", raising=False)
    monkeypatch.delenv("PICKWISE_TOKEN", raising=False)
    os.umask(0o022)
    client_config.save(client_config.Credentials("http://127.0.0.1:8000", "saved-token", "demo-ml"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    assert client_config.resolve() == client_config.Credentials("http://127.0.0.1:8000", "saved-token", "demo-ml")
    monkeypatch.setenv("PICKWISE_TOKEN", "env-token")
    assert client_config.resolve().token == "env-token"  # the environment beats the file
    monkeypatch.delenv("PICKWISE_TOKEN")
    with pytest.raises(NotLoggedInError, match="No API token for http://other.example"):
        client_config.resolve("http://other.example")  # the saved token is never sent to another server
    assert client_config.forget() and not path.exists()
    with pytest.raises(NotLoggedInError, match="No Pickwise server"):
        Client()
