"""What the webhooks page and API read: a project's endpoints with their latest delivery, and one
endpoint's delivery log with every attempt (queries that do not grow with the rows)."""

from __future__ import annotations

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.http import Http404

from projects.models import DeliveryStatus, Project, WebhookDelivery, WebhookEndpoint
from projects.webhooks.events import EVENT_TYPES, PING


def endpoints_for_project(*, project: Project) -> QuerySet[WebhookEndpoint]:
    """The project's endpoints, oldest first, each with ``last_delivery_status``, ``last_delivery_at`` and
    ``pending_count``: one query."""
    latest = WebhookDelivery.objects.filter(endpoint=OuterRef("pk")).order_by("-created_at", "-pk")
    return (WebhookEndpoint.objects.filter(project=project)
            .annotate(last_delivery_status=Subquery(latest.values("status")[:1]),
                      last_delivery_at=Subquery(latest.values("created_at")[:1]),
                      pending_count=Count("deliveries", filter=Q(deliveries__status=DeliveryStatus.PENDING)))
            .order_by("created_at", "pk"))


def endpoints_disabled_automatically(*, project: Project) -> list[WebhookEndpoint]:
    """The project's endpoints that repeated failures disabled (the notice on the project's page)."""
    return list(WebhookEndpoint.objects.filter(project=project, is_active=False, disabled_automatically=True)
                .order_by("disabled_at", "pk"))


def endpoint_of_project(*, project: Project, endpoint_id: object) -> WebhookEndpoint:
    """One of the project's endpoints; ``Http404`` for another project's or an unknown id."""
    try:
        pk = int(str(endpoint_id))
    except ValueError:
        raise Http404("No such webhook endpoint") from None
    endpoint = WebhookEndpoint.objects.filter(project=project, pk=pk).first()
    if endpoint is None:
        raise Http404("No such webhook endpoint")
    endpoint.project = project
    return endpoint


def deliveries_for_endpoint(*, endpoint: WebhookEndpoint, status: str | None = None, event: str | None = None,
                            with_attempts: bool = True) -> QuerySet[WebhookDelivery]:
    """The endpoint's deliveries, newest first, optionally of one status or event, attempts prefetched."""
    queryset = WebhookDelivery.objects.filter(endpoint=endpoint).order_by("-created_at", "-pk")
    if status:
        queryset = queryset.filter(status=status)
    if event:
        queryset = queryset.filter(event_type=event)
    return queryset.prefetch_related("attempt_log") if with_attempts else queryset


def delivery_of_endpoint(*, endpoint: WebhookEndpoint, delivery_id: object) -> WebhookDelivery:
    try:
        pk = int(str(delivery_id))
    except ValueError:
        raise Http404("No such delivery") from None
    delivery = (WebhookDelivery.objects.filter(endpoint=endpoint, pk=pk).prefetch_related("attempt_log")
                .first())
    if delivery is None:
        raise Http404("No such delivery")
    delivery.endpoint = endpoint
    return delivery


def event_catalogue() -> list[dict[str, str]]:
    """Every event an endpoint can subscribe to, with when it is sent (and the Test button's ping)."""
    return [*({"name": name, "description": text} for name, text in EVENT_TYPES.items()),
            {"name": PING, "description": "Sent by an endpoint's Test button only, whatever it subscribes to."}]
