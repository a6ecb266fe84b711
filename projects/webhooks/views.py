"""The webhooks pages of a project, for its admins: the endpoints (with a notice for any that was disabled
automatically) and a form to add one; an endpoint's page with its settings, Test, Enable/Disable, a new
secret, Remove, and its delivery log with every attempt and a Redeliver button (polled while deliveries
are pending)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from core.exceptions import ApplicationError
from core.htmx import is_htmx, redirect_after_post
from projects.access import project_view
from projects.models import DeliveryStatus, Project, WebhookEndpoint
from projects.webhooks import selectors, services, signing
from projects.webhooks.events import EVENT_TYPES

DELIVERIES_PER_PAGE = 25


def _secret_key(endpoint_id: int) -> str:
    return f"webhook-secret-{endpoint_id}"


def _remember_secret(request: HttpRequest, endpoint: WebhookEndpoint) -> None:
    """Keep the new secret for the next page only: it is shown once."""
    request.session[_secret_key(endpoint.pk)] = endpoint.secret


def _detail_url(endpoint: WebhookEndpoint) -> str:
    return reverse("webhooks:endpoint_detail", args=[endpoint.project_id, endpoint.pk])


def _events_context(chosen: list[str] | None) -> list[dict[str, Any]]:
    return [{"name": name, "description": text, "checked": chosen is None or name in chosen}
            for name, text in EVENT_TYPES.items()]


@require_http_methods(["GET", "POST"])
@project_view("manage")
def endpoint_list(request: HttpRequest, project: Project) -> HttpResponse:
    error: ApplicationError | None = None
    form: dict[str, Any] = {"url": "", "description": "", "events": None}
    if request.method == "POST":
        form = {"url": request.POST.get("url", ""), "description": request.POST.get("description", ""),
                "events": request.POST.getlist("event_types")}
        try:
            endpoint = services.webhook_endpoint_create(project=project, url=form["url"], event_types=form["events"],
                                                        description=form["description"], created_by=request.user)
        except ApplicationError as exc:
            error = exc
        else:
            _remember_secret(request, endpoint)
            return redirect_after_post(request, _detail_url(endpoint))
    endpoints = list(selectors.endpoints_for_project(project=project))
    return render(request, "projects/webhook_list.html", {
        "project": project, "endpoints": endpoints, "error": error, "form": form,
        "events": _events_context(form["events"]),
        "disabled": [e for e in endpoints if e.disabled_automatically and not e.is_active],
    }, status=400 if error else 200)


@require_http_methods(["GET", "POST"])
@project_view("manage")
def endpoint_detail(request: HttpRequest, project: Project, endpoint_id: int) -> HttpResponse:
    endpoint = selectors.endpoint_of_project(project=project, endpoint_id=endpoint_id)
    error: ApplicationError | None = None
    chosen: list[str] = list(endpoint.event_types)
    if request.method == "POST":
        chosen = request.POST.getlist("event_types")
        try:
            endpoint = services.webhook_endpoint_update(
                endpoint=endpoint, url=request.POST.get("url", ""), description=request.POST.get("description", ""),
                event_types=chosen, user=request.user)
        except ApplicationError as exc:
            error = exc
        else:
            messages.success(request, "Saved.")
            return redirect_after_post(request, _detail_url(endpoint))
    deliveries = Paginator(selectors.deliveries_for_endpoint(endpoint=endpoint), DELIVERIES_PER_PAGE)
    page = deliveries.get_page(request.GET.get("page"))
    polling = any(d.status == DeliveryStatus.PENDING for d in page.object_list)
    context = {
        "project": project, "endpoint": endpoint, "error": error, "events": _events_context(chosen),
        "page": page, "polling": polling, "secret_hint": signing.mask(endpoint.secret),
        "poll_url": f"{_detail_url(endpoint)}?page={page.number}",
    }
    if is_htmx(request) and request.method == "GET":
        fragment = render(request, "projects/webhook_detail.html#deliveries", context)
        if polling:
            return fragment
        stop = HttpResponseStopPolling(fragment.content)
        stop["Content-Type"] = fragment["Content-Type"]
        return stop
    context["secret"] = request.session.pop(_secret_key(endpoint.pk), None) if request.method == "GET" else None
    return render(request, "projects/webhook_detail.html", context, status=400 if error else 200)


def _action(request: HttpRequest, project: Project, endpoint_id: int, act: Any, done: str) -> HttpResponse:
    endpoint = selectors.endpoint_of_project(project=project, endpoint_id=endpoint_id)
    try:
        act(endpoint)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, done)
    return redirect_after_post(request, _detail_url(endpoint))


@require_POST
@project_view("manage")
def endpoint_test(request: HttpRequest, project: Project, endpoint_id: int) -> HttpResponse:
    return _action(request, project, endpoint_id,
                   lambda endpoint: services.webhook_endpoint_test(endpoint=endpoint, user=request.user),
                   "A test event is on its way; its delivery is at the top of the log.")


@require_POST
@project_view("manage")
def endpoint_enable(request: HttpRequest, project: Project, endpoint_id: int) -> HttpResponse:
    return _action(request, project, endpoint_id, lambda endpoint: services.webhook_endpoint_enable(endpoint=endpoint),
                   "Enabled: new events go to this endpoint again. Redeliver what failed meanwhile from the log.")


@require_POST
@project_view("manage")
def endpoint_disable(request: HttpRequest, project: Project, endpoint_id: int) -> HttpResponse:
    return _action(request, project, endpoint_id,
                   lambda endpoint: services.webhook_endpoint_disable(endpoint=endpoint, user=request.user),
                   "Disabled: nothing is sent to this endpoint until you enable it.")


@require_POST
@project_view("manage")
def endpoint_secret(request: HttpRequest, project: Project, endpoint_id: int) -> HttpResponse:
    endpoint = selectors.endpoint_of_project(project=project, endpoint_id=endpoint_id)
    keep = request.POST.get("keep_previous") == "on"
    endpoint = services.webhook_endpoint_rotate_secret(endpoint=endpoint, keep_previous=keep)
    _remember_secret(request, endpoint)
    messages.success(request, "A new secret signs from now on"
                     + ("; the old one also signs for 24 hours." if keep else "; the old one no longer does."))
    return redirect_after_post(request, _detail_url(endpoint))


@require_POST
@project_view("manage")
def endpoint_delete(request: HttpRequest, project: Project, endpoint_id: int) -> HttpResponse:
    endpoint = selectors.endpoint_of_project(project=project, endpoint_id=endpoint_id)
    services.webhook_endpoint_delete(endpoint=endpoint)
    messages.success(request, f"Removed the endpoint {endpoint.url} and its delivery log.")
    return redirect_after_post(request, reverse("webhooks:endpoint_list", args=[project.pk]))


@require_POST
@project_view("manage")
def delivery_redeliver(request: HttpRequest, project: Project, endpoint_id: int, delivery_id: int) -> HttpResponse:
    endpoint = selectors.endpoint_of_project(project=project, endpoint_id=endpoint_id)
    delivery = selectors.delivery_of_endpoint(endpoint=endpoint, delivery_id=delivery_id)
    try:
        services.webhook_delivery_redeliver(delivery=delivery)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Sending {delivery.event_type} {delivery.webhook_id} again.")
    return redirect_after_post(request, _detail_url(endpoint))
