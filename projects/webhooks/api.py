"""The webhooks API: ``/api/projects/<id>/webhooks/...`` for the project's admins (non-members get 404,
other members 403), and the event catalogue at ``/api/webhook-events/`` for anyone signed in.

The secret is in the answer of ``POST .../webhooks/`` and ``POST .../webhooks/<id>/secret/`` only; other
answers show its first characters (``secret_hint``).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from core.exceptions import ApplicationError
from core.pagination import LargePagination
from core.parsing import parse_bool
from core.schema import PAGE_PARAMETERS, page_of
from projects.access import project_api
from projects.models import DeliveryStatus, Project, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from projects.webhooks import selectors, services, signing
from projects.webhooks.events import EVENT_TYPES, PING, url_for


class EndpointSerializer(serializers.ModelSerializer):
    secret_hint = serializers.SerializerMethodField(help_text="The secret's first characters.")
    deliveries_url = serializers.SerializerMethodField()

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "description", "event_types", "is_active", "disabled_at", "disabled_reason",
                  "disabled_automatically", "consecutive_failures", "last_success_at", "last_failure_at",
                  "secret_hint", "previous_secret_expires_at", "deliveries_url", "created_at", "updated_at"]
        read_only_fields = fields

    def get_secret_hint(self, endpoint: WebhookEndpoint) -> str:
        return signing.mask(endpoint.secret)

    def get_deliveries_url(self, endpoint: WebhookEndpoint) -> str:
        return url_for("api-webhook-deliveries", endpoint.project_id, endpoint.pk)


class EndpointWithSecretSerializer(EndpointSerializer):
    secret = serializers.CharField(read_only=True, help_text="whsec_...: shown in this answer only; keep it.")

    class Meta(EndpointSerializer.Meta):
        fields = [*EndpointSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class EndpointInputSerializer(serializers.Serializer):
    url = serializers.CharField(max_length=2000, help_text="http(s) URL that receives the events (POST)")
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    event_types = serializers.ListField(
        child=serializers.CharField(), required=False,
        help_text=f"Events to receive (every one when left out): {', '.join(EVENT_TYPES)}")
    is_active = serializers.BooleanField(required=False, help_text="false disables it, true enables it again")


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "started_at", "succeeded", "status_code", "latency_ms", "response_excerpt", "error"]
        read_only_fields = fields


class DeliverySerializer(serializers.ModelSerializer):
    endpoint = serializers.IntegerField(source="endpoint_id", read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = ["id", "endpoint", "event_type", "webhook_id", "status", "attempts", "next_attempt_at",
                  "retry_until", "last_status_code", "last_latency_ms", "last_response", "last_error", "payload",
                  "created_at", "delivered_at", "finished_at"]
        read_only_fields = fields


class DeliveryDetailSerializer(DeliverySerializer):
    attempt_log = AttemptSerializer(many=True, read_only=True)

    class Meta(DeliverySerializer.Meta):
        fields = [*DeliverySerializer.Meta.fields, "attempt_log"]
        read_only_fields = fields


def _paginate(request: Request, queryset: QuerySet[Any], serializer: type[serializers.BaseSerializer]) -> Response:
    paginator = LargePagination()
    page = paginator.paginate_queryset(queryset, request)
    return paginator.get_paginated_response(serializer(page, many=True).data)


def _input(request: Request, *, partial: bool) -> dict[str, Any]:
    body = EndpointInputSerializer(data=request.data, partial=partial)
    body.is_valid(raise_exception=True)
    return dict(body.validated_data)


@extend_schema(methods=["GET"], responses=page_of(EndpointSerializer), summary="The project's webhook endpoints",
               parameters=PAGE_PARAMETERS, operation_id="projects_webhooks_list")
@extend_schema(methods=["POST"], request=EndpointInputSerializer, responses={201: EndpointWithSecretSerializer},
               summary="Register an endpoint (the answer holds its secret, shown this once)")
@api_view(["GET", "POST"])
@project_api("manage")
def endpoint_list(request: Request, project: Project) -> Response:
    if request.method == "GET":
        return _paginate(request, selectors.endpoints_for_project(project=project), EndpointSerializer)
    data = _input(request, partial=False)
    if "is_active" in data:
        raise ApplicationError("A new endpoint is active; disable it once it exists.", field="is_active")
    endpoint = services.webhook_endpoint_create(project=project, url=data["url"], event_types=data.get("event_types"),
                                                description=data.get("description", ""), created_by=request.user)
    return Response(EndpointWithSecretSerializer(endpoint).data, status=status.HTTP_201_CREATED)


@extend_schema(methods=["GET"], responses=EndpointSerializer, summary="One webhook endpoint")
@extend_schema(methods=["PATCH"], request=EndpointInputSerializer(partial=True), responses=EndpointSerializer,
               summary="Change an endpoint's URL, description or events, or disable or enable it")
@extend_schema(methods=["DELETE"], responses={204: None}, summary="Remove an endpoint and its delivery log")
@api_view(["GET", "PATCH", "DELETE"])
@project_api("manage")
def endpoint_detail(request: Request, project: Project, endpoint_id: int) -> Response:
    endpoint = selectors.endpoint_of_project(project=project, endpoint_id=endpoint_id)
    if request.method == "DELETE":
        services.webhook_endpoint_delete(endpoint=endpoint)
        return Response(status=status.HTTP_204_NO_CONTENT)
    if request.method == "PATCH":
        data = _input(request, partial=True)
        endpoint = services.webhook_endpoint_update(
            endpoint=endpoint, url=data.get("url"), event_types=data.get("event_types"),
            description=data.get("description"), is_active=data.get("is_active"), user=request.user)
    return Response(EndpointSerializer(endpoint).data)


@extend_schema(
    request=inline_serializer("WebhookSecretRequest", {"keep_previous": serializers.BooleanField(
        required=False, default=True, help_text="The old secret also signs for 24 hours (false: revoke it now)")}),
    responses=EndpointWithSecretSerializer, summary="A new secret (shown in this answer only)")
@api_view(["POST"])
@project_api("manage")
def endpoint_secret(request: Request, project: Project, endpoint_id: int) -> Response:
    endpoint = selectors.endpoint_of_project(project=project, endpoint_id=endpoint_id)
    keep = request.data.get("keep_previous", True) if isinstance(request.data, dict) else True
    try:
        keep = parse_bool(keep) if isinstance(keep, str) else keep
    except ValueError:
        keep = None
    if not isinstance(keep, bool):
        raise ApplicationError("keep_previous is true or false.", field="keep_previous")
    endpoint = services.webhook_endpoint_rotate_secret(endpoint=endpoint, keep_previous=keep)
    return Response(EndpointWithSecretSerializer(endpoint).data)


@extend_schema(request=None, responses={202: DeliverySerializer},
               summary=f"Send a {PING!r} event now (one attempt; also to a disabled endpoint)")
@api_view(["POST"])
@project_api("manage")
def endpoint_test(request: Request, project: Project, endpoint_id: int) -> Response:
    endpoint = selectors.endpoint_of_project(project=project, endpoint_id=endpoint_id)
    delivery = services.webhook_endpoint_test(endpoint=endpoint, user=request.user)
    return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(
    responses=page_of(DeliverySerializer), summary="An endpoint's deliveries, newest first",
    operation_id="projects_webhooks_deliveries_list",
    parameters=[OpenApiParameter("status", str, enum=DeliveryStatus.values),
                OpenApiParameter("event_type", str, enum=[*EVENT_TYPES, PING]), *PAGE_PARAMETERS])
@api_view(["GET"])
@project_api("manage")
def delivery_list(request: Request, project: Project, endpoint_id: int) -> Response:
    endpoint = selectors.endpoint_of_project(project=project, endpoint_id=endpoint_id)
    wanted_status = request.query_params.get("status") or None
    if wanted_status is not None and wanted_status not in DeliveryStatus.values:
        raise ApplicationError(f"status must be one of {', '.join(DeliveryStatus.values)}.", field="status")
    event = request.query_params.get("event_type") or None
    if event is not None and event not in EVENT_TYPES and event != PING:
        raise ApplicationError(f"Unknown event_type {event!r}.", field="event_type")
    deliveries = selectors.deliveries_for_endpoint(endpoint=endpoint, status=wanted_status, event=event,
                                                   with_attempts=False)
    return _paginate(request, deliveries, DeliverySerializer)


@extend_schema(responses=DeliveryDetailSerializer, summary="One delivery with every attempt")
@api_view(["GET"])
@project_api("manage")
def delivery_detail(request: Request, project: Project, endpoint_id: int, delivery_id: int) -> Response:
    endpoint = selectors.endpoint_of_project(project=project, endpoint_id=endpoint_id)
    delivery = selectors.delivery_of_endpoint(endpoint=endpoint, delivery_id=delivery_id)
    return Response(DeliveryDetailSerializer(delivery).data)


@extend_schema(request=None, responses={202: DeliverySerializer},
               summary="Send a finished delivery again (same webhook-id and body)")
@api_view(["POST"])
@project_api("manage")
def delivery_redeliver(request: Request, project: Project, endpoint_id: int, delivery_id: int) -> Response:
    endpoint = selectors.endpoint_of_project(project=project, endpoint_id=endpoint_id)
    delivery = selectors.delivery_of_endpoint(endpoint=endpoint, delivery_id=delivery_id)
    delivery = services.webhook_delivery_redeliver(delivery=delivery)
    return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(responses=inline_serializer("WebhookEvent", {"name": serializers.CharField(),
                                                            "description": serializers.CharField()}, many=True),
               summary="The events webhooks can receive")
@api_view(["GET"])
def event_list(request: Request) -> Response:
    return Response(selectors.event_catalogue())
