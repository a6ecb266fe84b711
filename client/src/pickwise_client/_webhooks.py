"""A project's webhooks (``/api/projects/<id>/webhooks/``, project admins): endpoints and their deliveries."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import cast

from pickwise_client._base import Resource, only_given, project_path
from pickwise_client.types import (
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointWithSecret,
    WebhookEvent,
)


class Webhooks(Resource):
    """Endpoints that receive a project's events, signed (Standard Webhooks: verify them with svix's
    ``Webhook(secret).verify(body, headers)``), and the log of what was sent to each."""

    def events(self) -> list[WebhookEvent]:
        """Every event an endpoint can subscribe to, with when it is sent."""
        return cast(list[WebhookEvent], self._http.get("api/webhook-events/"))

    def list(self, project: int) -> Iterator[WebhookEndpoint]:
        return cast(Iterator[WebhookEndpoint], self._http.paginate(project_path(project, "webhooks/")))

    def get(self, project: int, endpoint: int) -> WebhookEndpoint:
        return cast(WebhookEndpoint, self._http.get(project_path(project, f"webhooks/{int(endpoint)}/")))

    def create(self, project: int, url: str, *, events: Sequence[str] | None = None,
               description: str = "") -> WebhookEndpointWithSecret:
        """Register ``url`` for ``events`` (every event when None). The answer holds the signing secret
        (``secret``), shown this once: keep it with your receiver."""
        body: dict[str, object] = {"url": url, "description": description}
        if events is not None:
            body["event_types"] = list(events)
        return cast(WebhookEndpointWithSecret, self._http.post(project_path(project, "webhooks/"), body))

    def update(self, project: int, endpoint: int, *, url: str | None = None, events: Sequence[str] | None = None,
               description: str | None = None, active: bool | None = None) -> WebhookEndpoint:
        """Change what you name; ``active=False`` disables the endpoint, ``active=True`` enables it again."""
        body = only_given(url=url, event_types=list(events) if events is not None else None,
                          description=description, is_active=active)
        return cast(WebhookEndpoint, self._http.json("PATCH", project_path(project, f"webhooks/{int(endpoint)}/"),
                                                     json_body=body))

    def remove(self, project: int, endpoint: int) -> None:
        """Delete the endpoint and its delivery log."""
        self._http.json("DELETE", project_path(project, f"webhooks/{int(endpoint)}/"))

    def rotate_secret(self, project: int, endpoint: int, *, keep_previous: bool = True) -> WebhookEndpointWithSecret:
        """A new secret (in the answer only). The old one also signs for 24 hours unless ``keep_previous`` is
        false (a leaked secret)."""
        return cast(WebhookEndpointWithSecret, self._http.post(
            project_path(project, f"webhooks/{int(endpoint)}/secret/"), {"keep_previous": keep_previous}))

    def test(self, project: int, endpoint: int) -> WebhookDelivery:
        """Send a ``ping`` event now (one attempt); poll :meth:`delivery` for what the endpoint answered."""
        return cast(WebhookDelivery, self._http.post(project_path(project, f"webhooks/{int(endpoint)}/test/")))

    def deliveries(self, project: int, endpoint: int, *, status: str | None = None,
                   event: str | None = None) -> Iterator[WebhookDelivery]:
        """What was sent to the endpoint, newest first: ``status`` pending, succeeded or failed; ``event`` a type."""
        return cast(Iterator[WebhookDelivery], self._http.paginate(
            project_path(project, f"webhooks/{int(endpoint)}/deliveries/"),
            only_given(status=status, event_type=event)))

    def delivery(self, project: int, endpoint: int, delivery: int) -> WebhookDelivery:
        """One delivery with every attempt (``attempt_log``: status code, latency, response excerpt, error)."""
        return cast(WebhookDelivery, self._http.get(
            project_path(project, f"webhooks/{int(endpoint)}/deliveries/{int(delivery)}/")))

    def redeliver(self, project: int, endpoint: int, delivery: int) -> WebhookDelivery:
        """Send a finished delivery again, with the same ``webhook-id`` and body."""
        return cast(WebhookDelivery, self._http.post(
            project_path(project, f"webhooks/{int(endpoint)}/deliveries/{int(delivery)}/redeliver/")))
