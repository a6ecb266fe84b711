"""Outbound requests to user-named URLs reach public addresses only, follow no redirect unchecked, and stop
at their size limit; checked against a real HTTP server on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.outbound import OutboundError, address_is_public, check_url, fetch


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/image")
            self.end_headers()
            return
        if self.path == "/missing":
            self.send_response(404)
            self.end_headers()
            return
        body = b"\x89PNG" + b"x" * 996
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize(("address", "public"), [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("0.0.0.0", False),  # noqa: S104 - a value, not a bind ("::1", False), ("fe80::1", False), ("fc00::1", False),
    ("::ffff:127.0.0.1", False), ("224.0.0.1", False), ("8.8.8.8", True), ("2606:4700:4700::1111", True),
])
def test_only_global_unicast_addresses_are_public(address, public):
    assert address_is_public(address) is public


def test_loopback_is_refused_by_default_and_reached_when_allowed(server, settings):
    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = False
    with pytest.raises(OutboundError) as refused:
        fetch(f"{server}/image", field="url", max_bytes=10_000, timeout=5)
    assert refused.value.field == "url"
    assert "127.0.0.1, a private, loopback or link-local address" in refused.value.message
    # A name that resolves to loopback is refused the same way.
    port = server.rsplit(":", 1)[1]
    with pytest.raises(OutboundError, match="localhost resolves to"):
        fetch(f"http://localhost:{port}/image", field="url", max_bytes=10_000, timeout=5)

    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = True
    fetched = fetch(f"{server}/redirect", field="url", max_bytes=10_000, timeout=5)
    assert (len(fetched.content), fetched.content_type, fetched.url) == (1000, "image/png", f"{server}/image")


def test_size_status_scheme_and_redirect_limits(server):
    with pytest.raises(OutboundError, match="1,000 bytes; the limit is 999"):
        fetch(f"{server}/image", field="images[0]", max_bytes=999, timeout=5, allow_private=True)
    with pytest.raises(OutboundError, match="answered 404"):
        fetch(f"{server}/missing", field="url", max_bytes=10_000, timeout=5, allow_private=True)
    with pytest.raises(OutboundError, match="redirected more than 0 times"):
        fetch(f"{server}/redirect", field="url", max_bytes=10_000, timeout=5, max_redirects=0, allow_private=True)
    with pytest.raises(OutboundError, match="Only http and https URLs are allowed, not 'file'") as scheme:
        check_url("file:///etc/passwd", field="endpoint.url")
    assert scheme.value.field == "endpoint.url"
