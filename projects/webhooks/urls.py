"""Pages under ``/projects/`` (namespace ``webhooks``) and API routes under ``/api/`` (``api_urlpatterns``)."""

from __future__ import annotations

from django.urls import path

from projects.webhooks import api, views

app_name = "webhooks"

_e = "<int:project_id>/webhooks/<int:endpoint_id>/"

urlpatterns = [
    path("<int:project_id>/webhooks/", views.endpoint_list, name="endpoint_list"),
    path(_e, views.endpoint_detail, name="endpoint_detail"),
    path(_e + "test/", views.endpoint_test, name="endpoint_test"),
    path(_e + "secret/", views.endpoint_secret, name="endpoint_secret"),
    path(_e + "enable/", views.endpoint_enable, name="endpoint_enable"),
    path(_e + "disable/", views.endpoint_disable, name="endpoint_disable"),
    path(_e + "delete/", views.endpoint_delete, name="endpoint_delete"),
    path(_e + "deliveries/<int:delivery_id>/redeliver/", views.delivery_redeliver, name="delivery_redeliver"),
]

_a = "projects/<int:project_id>/webhooks/"

api_urlpatterns = [
    path("webhook-events/", api.event_list, name="api-webhook-events"),
    path(_a, api.endpoint_list, name="api-webhooks"),
    path(_a + "<int:endpoint_id>/", api.endpoint_detail, name="api-webhook"),
    path(_a + "<int:endpoint_id>/secret/", api.endpoint_secret, name="api-webhook-secret"),
    path(_a + "<int:endpoint_id>/test/", api.endpoint_test, name="api-webhook-test"),
    path(_a + "<int:endpoint_id>/deliveries/", api.delivery_list, name="api-webhook-deliveries"),
    path(_a + "<int:endpoint_id>/deliveries/<int:delivery_id>/", api.delivery_detail, name="api-webhook-delivery"),
    path(_a + "<int:endpoint_id>/deliveries/<int:delivery_id>/redeliver/", api.delivery_redeliver,
         name="api-webhook-redeliver"),
]
