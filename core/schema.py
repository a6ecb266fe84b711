"""What the OpenAPI schema says beyond each view's own annotations (drf-spectacular).

- Every operation documents the errors it can answer, with one error body: 400 (a bad body or query
  parameter), 404 (no such object, a page past the last), 401 and 403 where it needs a caller with a role,
  415 where it reads a body.
- :func:`page_of` describes a page of a function view that paginates (``count``, ``next``, ``previous``,
  ``results``), so such endpoints are documented as pages, not arrays; :data:`PAGE_PARAMETERS` are the
  query parameters of a view that pages with :class:`core.pagination.LargePagination`.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import permissions, serializers

from core.pagination import LargePagination
from core.parsing import MAX_ID


class ErrorSerializer(serializers.Serializer):
    """An error: ``detail`` says what is wrong and ``field`` where; a serializer's validation error also
    maps each field to its messages (``detail`` and ``field`` then give the first of them)."""

    detail = serializers.CharField(required=False)
    field = serializers.CharField(required=False)

    class Meta:
        ref_name = "Error"


ERROR_SCHEMA_EXTENSIONS = {"additionalProperties": True}

_ERROR_DESCRIPTIONS = {
    "400": "Bad input: the body or a query parameter is invalid (``field`` names it)",
    "401": "No credentials, or a token or session that is not valid",
    "403": "Your role, or your role in this project, does not allow it",
    "404": "No such object, or not one you may see (a project you are not a member of)",
    "415": "The body's Content-Type is not one this operation reads",
}


def _has_permission_check(view: Any) -> bool:
    return not all(issubclass(cls, permissions.AllowAny) for cls in getattr(view, "permission_classes", []))


class AutoSchema(openapi.AutoSchema):
    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        codes = ["400", "404"]
        if _has_permission_check(self.view):
            codes += ["401", "403"]
        if self.method in ("POST", "PUT", "PATCH"):
            codes.append("415")
        for code in codes:
            if code in responses and "content" in responses[code]:
                continue
            body = self._get_response_for_code(ErrorSerializer, code)
            body["description"] = responses.get(code, {}).get("description") or _ERROR_DESCRIPTIONS[code]
            responses[code] = body
        return dict(sorted(responses.items()))


def id_field(**kwargs: Any) -> serializers.IntegerField:
    """A serializer field holding a database id (1 to 2**63 - 1), documented with those bounds."""
    return serializers.IntegerField(min_value=1, max_value=MAX_ID, **kwargs)


def id_parameter(name: str, description: str) -> OpenApiParameter:
    """A query parameter holding an id (an empty or non-id value is a 400 naming it)."""
    return OpenApiParameter(name, {"type": "integer", "minimum": 1, "maximum": MAX_ID}, description=description)


def page_of(serializer_class: type[serializers.BaseSerializer]) -> serializers.Serializer:
    """The schema of one page of ``serializer_class`` objects, as ``core.pagination`` answers it."""
    name = serializer_class.__name__.removesuffix("Serializer")
    return inline_serializer(f"Paginated{name}List", {
        "count": serializers.IntegerField(min_value=0),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": serializer_class(many=True),
    })


PAGE_PARAMETERS = [
    OpenApiParameter("page", int, description="Page number, from 1"),
    OpenApiParameter("page_size", int, description=f"Objects a page, 1 to {LargePagination.max_page_size}"),
]
