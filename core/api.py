"""DRF glue shared by every app: ApplicationError becomes a 400 that names the field; the token view; what a
background job's serializer shows (its phase and ETA) and hides (server paths, from everyone but superusers)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import permissions, serializers, status
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

from core import jobs, redact
from core.exceptions import ApplicationError, PermissionDeniedError
from core.models import LeasedJob


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every 400 names its field: ``{"detail", "field"}`` for an ApplicationError; a serializer's
    validation error keeps DRF's map of fields to messages and gains the first one's ``detail`` and
    ``field`` (dotted and indexed for nested ones: ``hyperparameters.steps``, ``rows[3].prompt``)."""
    if isinstance(exc, PermissionDeniedError):
        return Response(exc.as_dict(), status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, ApplicationError):
        return Response(exc.as_dict(), status=status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if (isinstance(exc, serializers.ValidationError) and response is not None and isinstance(response.data, dict)
            and "detail" not in response.data and "field" not in response.data):
        first = _first_error(response.data)
        if first is not None:
            field, message = first
            response.data = {**response.data, "detail": message, **({"field": field} if field else {})}
    return response


def _first_error(detail: Any, path: str = "") -> tuple[str, str] | None:
    """The path and message of the first error in a DRF error structure (dicts of fields, lists of items)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == api_settings.NON_FIELD_ERRORS_KEY:
                inner = path
            elif isinstance(key, int):  # a list's items, keyed by index (ListField, many=True)
                inner = f"{path}[{key}]"
            else:
                inner = f"{path}.{key}" if path else str(key)
            found = _first_error(value, inner)
            if found is not None:
                return found
        return None
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, dict | list):
                found = _first_error(value, f"{path}[{index}]")
                if found is not None:
                    return found
            elif value:
                return path, str(value)
        return None
    return (path, str(detail)) if detail else None


class HidesServerPaths(serializers.Serializer):
    """A serializer whose output hides server file paths unless the request's user is a superuser
    (:mod:`core.redact`); without a request in its context it hides them."""

    def to_representation(self, instance: Any) -> Any:
        data = super().to_representation(instance)
        request = self.context.get("request")
        return redact.for_user(data, getattr(request, "user", None))


class JobProgressFields(serializers.Serializer):
    """The phase of a background job in words and the seconds left in it (``core.jobs.job_progress``)."""

    phase_label = serializers.SerializerMethodField()
    eta_seconds = serializers.SerializerMethodField()

    def get_phase_label(self, job: LeasedJob) -> str:
        return jobs.phase_label(job)

    def get_eta_seconds(self, job: LeasedJob) -> float | None:
        eta = jobs.eta_seconds(job)
        return None if eta is None else round(eta, 1)


class ApiDocsPermission(permissions.BasePermission):
    """The OpenAPI schema and its docs page: anyone when ``API_DOCS_PUBLIC``, else signed-in users."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(settings.API_DOCS_PUBLIC or (request.user and request.user.is_authenticated))


class ObtainTokenView(ObtainAuthToken):
    """``POST /api/token/`` (username, password) -> ``{"token": ...}``, under the login lockout.

    DRF's view hands its own ``Request`` wrapper to ``authenticate()``; django-axes marks a lockout on
    the object it is given, and its middleware reads the Django request. This view hands over the
    Django request, so a locked-out caller gets the lockout answer (429) here as on ``/login/``.
    """

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "request": self.request._request}

    @extend_schema(
        request=AuthTokenSerializer,
        responses={
            200: inline_serializer("AuthTokenResponse", {"token": serializers.CharField()}),
            400: OpenApiResponse(description="Wrong username or password, or a field missing"),
            429: OpenApiResponse(description="Too many failed logins for this username or address; "
                                             "see Retry-After"),
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)


obtain_token = ObtainTokenView.as_view()
