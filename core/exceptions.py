"""Domain errors raised by services and shown to users as they are."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied


class ApplicationError(Exception):
    """A rule of the domain was broken; ``message`` is safe to show to the user.

    ``field`` names where the problem is (a form field, a component, a line), and
    ``extra`` carries structured details for API clients.
    """

    def __init__(self, message: str, *, field: str | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra or {}

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"detail": self.message}
        if self.field:
            body["field"] = self.field
        if self.extra:
            body.update(self.extra)
        return body


class PermissionDeniedError(ApplicationError, PermissionDenied):
    """The user may not do this to this object (a 403 in views and in the API)."""
