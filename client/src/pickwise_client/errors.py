"""The errors the client raises.

Every failed API call raises a subclass of :class:`APIError` chosen by the HTTP status, carrying
the status, the field the server blamed (``field``), its message and every problem it listed
(``errors``), parsed from Django REST framework's error bodies::

    try:
        client.exports.create(project=1, format="parquet")
    except ValidationError as exc:
        print(exc.status, exc.field, exc.message)   # 400 format Unknown format 'parquet' ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "APIError",
    "AuthenticationError",
    "ConfigurationError",
    "FieldError",
    "JobFailedError",
    "NetworkError",
    "NotFoundError",
    "NotLoggedInError",
    "PermissionDeniedError",
    "PickwiseError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServerError",
    "ServiceUnavailableError",
    "ValidationError",
    "WaitTimeoutError",
    "parse_error_body",
]


class PickwiseError(Exception):
    """Base class of everything this package raises."""


class ConfigurationError(PickwiseError):
    """The client cannot be set up: no server URL or token, an unreadable config file, a bad source."""


class NotLoggedInError(ConfigurationError):
    """No server URL or no token: pass them, set PICKWISE_URL/PICKWISE_TOKEN, or run `pickwise login`."""


class NetworkError(PickwiseError):
    """The server could not be reached (connection refused, DNS, TLS)."""


class RequestTimeoutError(NetworkError):
    """The server did not answer within the client's timeout."""


@dataclass(frozen=True)
class FieldError:
    """One problem the server named: where (a field such as ``format``, a dotted path such as
    ``params.steps`` or ``ranking.images``; ``None`` for the request as a whole), what, and for
    prompt files the line."""

    field: str | None
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.field or ""
        if self.line is not None:
            where = f"{where} line {self.line}".strip()
        return f"{where}: {self.message}" if where else self.message


class APIError(PickwiseError):
    """The server answered with an error status.

    ``status`` is the HTTP status, ``message`` the server's first message, ``field`` the field it
    blamed (or ``None``), ``errors`` every problem it listed, ``body`` the decoded body, and
    ``method``/``url`` the request.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        field: str | None = None,
        errors: list[FieldError] | None = None,
        body: Any = None,
        method: str = "",
        url: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field
        self.errors = errors if errors is not None else [FieldError(field, message)]
        self.body = body
        self.method = method
        self.url = url
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method else ""
        what = f"{self.field}: {self.message}" if self.field else self.message
        more = len(self.errors) - 1
        return f"{self.status}{where}: {what}" + (f" (and {more} more)" if more > 0 else "")


class ValidationError(APIError):
    """400: the request was refused; ``field`` and ``errors`` say what is wrong and where."""


class AuthenticationError(APIError):
    """401 (a missing, wrong or revoked token) or a failed login."""


class PermissionDeniedError(APIError):
    """403: you are a member of the project but your role does not allow this."""


class NotFoundError(APIError):
    """404: no such object, or one you may not see (non-members get 404, not 403)."""


class RateLimitedError(APIError):
    """429: too many requests; ``retry_after`` says how many seconds to wait when the server said."""


class ServerError(APIError):
    """5xx: the server failed."""


class ServiceUnavailableError(ServerError):
    """503: the server (or a worker behind it) is busy or down for now."""


class JobFailedError(PickwiseError):
    """An export or a training run ended without succeeding (``status`` failed or cancelled)."""

    def __init__(self, kind: str, obj: dict[str, Any]) -> None:
        self.kind = kind
        self.object = obj
        self.id: int = obj.get("id", 0)
        self.status: str = obj.get("status", "")
        self.error: str = obj.get("error", "") or ""
        reason = f": {self.error}" if self.error else ""
        super().__init__(f"{kind} {self.id} {self.status}{reason}")


class WaitTimeoutError(PickwiseError, TimeoutError):
    """``wait()`` gave up before the export, run or job finished; it keeps going on the server."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def error_class(status: int) -> type[APIError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else APIError


def _flatten(value: Any, prefix: str | None) -> list[FieldError]:
    """DRF serializer errors (``{"field": ["msg"], "nested": {"f": ["msg"]}, "items": [{}, {"f": [..]}]}``)
    as a flat list with dotted field paths; ``non_field_errors`` belong to their parent."""
    if isinstance(value, dict):
        found: list[FieldError] = []
        for key, item in value.items():
            if key in ("non_field_errors", "detail"):
                name = prefix
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            found.extend(_flatten(item, name))
        return found
    if isinstance(value, list):
        found = []
        for index, item in enumerate(value):
            if isinstance(item, dict | list):
                found.extend(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
            else:
                found.append(FieldError(prefix, str(item)))
        return found
    return [FieldError(prefix, str(value))]


def _listed(item: Any, field: str | None) -> FieldError:
    """One entry of an ``errors`` list the server added: ``{"line", "message"}`` (prompt files) or
    ``{"location", "message"}`` (template schemas)."""
    if not isinstance(item, dict):
        return FieldError(field, str(item))
    where = item.get("location") or item.get("field") or field
    line = item.get("line")
    return FieldError(str(where) if where else None, str(item.get("message", item)),
                      line if isinstance(line, int) and line > 0 else None)


def parse_error_body(body: Any, *, reason: str = "") -> tuple[str, str | None, list[FieldError]]:
    """``(message, field, errors)`` of an error body, in any of the shapes the server sends.

    - ``{"detail": "...", "field": "...", "errors": [...]}``: Pickwise's domain errors;
    - ``{"detail": "..."}``: authentication, permission and not-found errors;
    - ``{"field": ["...", ...], ...}`` or ``["...", ...]``: serializer validation errors;
    - anything else (an HTML error page, a proxy's text): the reason phrase and a short excerpt.
    """
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        message = body["detail"]
        field = body.get("field") if isinstance(body.get("field"), str) else None
        listed = body.get("errors")
        if isinstance(listed, list) and listed:
            errors = [_listed(item, field) for item in listed]
        else:
            errors = [FieldError(field, message)]
        return message, field, errors
    if isinstance(body, dict | list) and body:
        errors = _flatten(body, None)
        if errors:
            return errors[0].message, errors[0].field, errors
    if isinstance(body, str) and body.strip():
        excerpt = " ".join(body.split())[:200]
        message = f"{reason}: {excerpt}" if reason else excerpt
        return message, None, [FieldError(None, message)]
    message = reason or "the server answered with an error and no body"
    return message, None, [FieldError(None, message)]
