"""The HTTP layer under every resource: auth, timeouts, typed errors, retries and pagination.

Retries: a call that is safe to repeat (GET, PUT, DELETE, and POSTs the caller marks idempotent,
such as a submit that carries an idempotency key) is retried when the server answers 429 or 503,
and when the connection could not be opened at all (nothing reached the server). The wait is
``Retry-After`` when the server sends one (up to ``max_retry_after`` seconds; a longer one is
raised at once, with ``retry_after`` on the error), else an exponential backoff with jitter:
``backoff_factor * 2**attempt`` seconds, at most ``max_backoff``. Every other failure, and every
failure of a call that is not idempotent, is raised at once.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from pickwise_client.errors import (
    APIError,
    NetworkError,
    RateLimitedError,
    RequestTimeoutError,
    error_class,
    parse_error_body,
)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 503})

Params = Mapping[str, Any]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(now if now is not None else time.time(), tz=UTC)
    return max(0.0, (when - current).total_seconds())


class HTTP:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float,
        max_retries: int,
        backoff_factor: float,
        max_backoff: float,
        max_retry_after: float,
        verify: bool | str,
        user_agent: str,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url
        parts = urlsplit(base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.max_retries = max_retries
        self.backoff_factor = backoff_factor
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.sleep = sleep
        self.client = httpx.Client(
            base_url=base_url + "/",
            headers={"Authorization": f"Token {token}", "Accept": "application/json", "User-Agent": user_agent},
            timeout=httpx.Timeout(timeout),
            verify=verify,
            follow_redirects=False,
        )

    def close(self) -> None:
        self.client.close()

    # --- URLs --------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """``path`` relative to the server's root (``api/projects/``), or an absolute URL on it."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def same_server(self, absolute: str) -> str:
        """A URL the server built (a ``next`` link) re-based onto the URL we were given, so a proxy that
        rewrites the host does not send the next page's request (with our token) elsewhere."""
        parts = urlsplit(absolute)
        return f"{self.origin}{parts.path}" + (f"?{parts.query}" if parts.query else "")

    # --- requests ----------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        delay = min(self.max_backoff, self.backoff_factor * (2.0**attempt))
        return delay / 2 + random.uniform(0, delay / 2)

    def _retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        """How long to wait before retrying ``response``; ``None`` to give up."""
        if attempt >= self.max_retries:
            return None
        after = parse_retry_after(response.headers.get("Retry-After"))
        if after is None:
            return self._backoff(attempt)
        return after if after <= self.max_retry_after else None

    def _send(self, request: httpx.Request, *, idempotent: bool, stream: bool) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self.client.send(request, stream=stream)
            except httpx.ConnectError as exc:
                if idempotent and attempt < self.max_retries:
                    self.sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                raise NetworkError(f"Cannot reach {self.base_url}: {exc}") from exc
            except httpx.TimeoutException as exc:
                raise RequestTimeoutError(
                    f"{request.method} {request.url.path} timed out ({type(exc).__name__}); "
                    "raise the client's timeout or try again") from exc
            except httpx.TransportError as exc:
                raise NetworkError(f"{request.method} {request.url.path} failed: {exc}") from exc
            if response.status_code in RETRY_STATUSES and idempotent:
                delay = self._retry_delay(response, attempt)
                if delay is not None:
                    response.close()
                    self.sleep(delay)
                    attempt += 1
                    continue
            if response.is_error:
                if stream:
                    response.read()
                    response.close()
                raise self.error(response)
            return response

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json_body: Any = None,
        files: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        method = method.upper()
        request = self.client.build_request(
            method, self.url(path), params=_clean(params), json=json_body, files=files, data=data,
            timeout=httpx.Timeout(timeout) if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
        return self._send(request, idempotent=method in IDEMPOTENT_METHODS if idempotent is None else idempotent,
                          stream=False)

    @contextmanager
    def stream(self, path: str, *, follow_redirects: bool = False, params: Params | None = None,
               timeout: float | None = None) -> Iterator[httpx.Response]:
        """A GET whose body is read in chunks (downloads)."""
        request = self.client.build_request(
            "GET", self.url(path), params=_clean(params),
            timeout=httpx.Timeout(timeout) if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        response = self._send(request, idempotent=True, stream=True)
        try:
            if follow_redirects and response.is_redirect:
                # Media on S3-compatible storage: the app checks access, then redirects to a signed URL.
                # The token is not sent there (httpx drops Authorization when the host changes).
                target = response.url.join(response.headers["Location"])
                response.close()
                signed = self.client.build_request("GET", target)
                if target.netloc != response.url.netloc:
                    del signed.headers["Authorization"]  # the signed URL is the credential
                redirected = self.client.send(signed, stream=True)
                try:
                    if redirected.is_error:
                        redirected.read()
                        raise self.error(redirected)
                    yield redirected
                finally:
                    redirected.close()
                return
            yield response
        finally:
            response.close()

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise APIError(f"The server answered {response.status_code} with a body that is not JSON.",
                           status=response.status_code, body=response.text[:500], method=method.upper(),
                           url=str(response.url.path)) from None

    def get(self, path: str, params: Params | None = None, **kwargs: Any) -> Any:
        return self.json("GET", path, params=params, **kwargs)

    def post(self, path: str, json_body: Any = None, **kwargs: Any) -> Any:
        return self.json("POST", path, json_body=json_body, **kwargs)

    def paginate(self, path: str, params: Params | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a listing, page by page (DRF's ``{"count", "next", "results"}``); a listing
        that is not paginated (a bare JSON list) is yielded as it is."""
        url: str = self.url(path)
        query: Params | None = params
        while True:
            body = self.json("GET", url, params=query)
            if isinstance(body, list):
                yield from body
                return
            yield from body.get("results", [])
            following = body.get("next")
            if not following:
                return
            url, query = self.same_server(following), None

    def count(self, path: str, params: Params | None = None) -> int:
        """The number of items a paginated listing holds, in one small request."""
        body = self.get(path, {**(params or {}), "page_size": 1})
        if isinstance(body, list):
            return len(body)
        return int(body.get("count", 0))

    # --- errors ------------------------------------------------------------------------------

    def error(self, response: httpx.Response) -> APIError:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        message, field, errors = parse_error_body(body, reason=response.reason_phrase)
        cls = error_class(response.status_code)
        retry_after = None
        if cls is RateLimitedError or response.status_code == 503:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return cls(message, status=response.status_code, field=field, errors=errors, body=body,
                   method=response.request.method, url=response.request.url.path, retry_after=retry_after)


def _clean(params: Params | None) -> dict[str, Any] | None:
    """Query parameters without the ``None`` ones; booleans as ``true``/``false``."""
    if params is None:
        return None
    cleaned: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        cleaned[key] = ("true" if value else "false") if isinstance(value, bool) else value
    return cleaned


def dumps_jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
