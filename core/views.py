from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.views import defaults
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from drf_spectacular.views import SpectacularSwaggerSplitView

from core.health import check_broker, check_database

logger = logging.getLogger(__name__)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and the broker are reachable, 503 otherwise.

    The probe is public (load balancers call it), so each dependency reads only ``ok`` or ``failed``;
    why one failed (the exception, which may name the database host and user) goes to the log.
    """
    checks = {"database": check_database(), "broker": check_broker()}
    body = {name: ("ok" if error is None else "failed") for name, error in checks.items()}
    for name, error in checks.items():
        if error is not None:
            logger.error("healthz: %s unreachable: %s", name, error)
    healthy = all(error is None for error in checks.values())
    body["status"] = "ok" if healthy else "unavailable"
    return JsonResponse(body, status=200 if healthy else 503)


_swagger = SpectacularSwaggerSplitView.as_view(url_name="api-schema", template_name="core/api_docs.html")


def api_docs(request: HttpRequest) -> HttpResponseBase:
    """The browsable API docs (Swagger UI, its start-up script a static-like file, so no inline code).

    When ``API_DOCS_PUBLIC`` is off, anonymous visitors are sent to the login page first.
    """
    if not settings.API_DOCS_PUBLIC and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    return _swagger(request)



def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponseBase:
    """404 for a URL no pattern matches (``handler404``): JSON under ``/api/``, as every API answer is."""
    if _is_api(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponseBase:
    """500 (``handler500``): JSON under ``/api/``, the HTML page elsewhere; the exception is logged."""
    if _is_api(request):
        return JsonResponse({"detail": "Server error."}, status=500)
    return defaults.server_error(request)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponseBase:
    """400 Django raises before a view runs (``handler400``: a suspicious or oversized request body)."""
    if _is_api(request):
        return JsonResponse({"detail": "Bad request: the request could not be read."}, status=400)
    return defaults.bad_request(request, exception)  # type: ignore[arg-type]


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponseBase:
    """403 Django raises outside DRF (``handler403``): JSON under ``/api/``."""
    if _is_api(request):
        return JsonResponse({"detail": "You do not have permission to perform this action."}, status=403)
    return defaults.permission_denied(request, exception)  # type: ignore[arg-type]
