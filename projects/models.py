"""Projects, who belongs to them, and where their events go (webhook endpoints and their deliveries).

A ``Project`` has no foreign keys out to other apps: what the higher layers attach to a project
lives on their side (the annotation workflow's settings in ``annotate.ProjectWorkflow``, the model
versions it offers in ``generation.ProjectModelVersion``, its pre-sort reward model in
``rlhf.ProjectPresort``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from core.models import TimeStampedModel
from projects.roles import Role


class Project(TimeStampedModel):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="ProjectMembership", related_name="projects"
    )

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("manage_projects", "Can create projects, edit templates, invite members and review"),
            ("annotate_tasks", "Can work annotation queues"),
            ("export_preferences", "Can export preference datasets"),
            ("train_models", "Can start reward-model and fine-tune runs"),
        ]
        constraints = [
            models.CheckConstraint(condition=~models.Q(name=""), name="project_name_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None


class ProjectMembership(TimeStampedModel):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user_and_project"),
            models.CheckConstraint(condition=models.Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} as {self.get_role_display()}"


# --- webhooks (projects/webhooks/): endpoints a project's admins register, and the outbox of deliveries ---


class WebhookEndpoint(TimeStampedModel):
    """A URL that receives a project's events, signed with its secret (Standard Webhooks).

    ``is_active`` is false exactly when ``disabled_at`` is set: by an admin, or automatically once
    ``WEBHOOK_DISABLE_AFTER_FAILURES`` deliveries in a row failed for good (``disabled_reason`` says which).
    While a secret is being rotated, the previous one also signs until ``previous_secret_expires_at``.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.CharField(max_length=2000)
    description = models.CharField(max_length=200, blank=True)
    event_types = models.JSONField(default=list)  # names from projects.webhooks.events.EVENT_TYPES
    secret = models.CharField(max_length=100)  # "whsec_" + base64 of 32 random bytes
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    consecutive_failures = models.PositiveIntegerField(default=0)  # deliveries failed for good since a success
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.TextField(blank=True)
    disabled_automatically = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["project", "url"], name="webhook_endpoint_url_once_per_project"),
            models.CheckConstraint(condition=~models.Q(url=""), name="webhook_endpoint_url_not_empty"),
            models.CheckConstraint(
                condition=models.Q(is_active=True, disabled_at__isnull=True)
                | models.Q(is_active=False, disabled_at__isnull=False),
                name="webhook_endpoint_disabled_iff_inactive",
            ),
        ]

    def __str__(self) -> str:
        return f"webhook {self.pk} of {self.project_id}: {self.url}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"  # waiting for its first send or its next retry
    SUCCEEDED = "succeeded", "Delivered"
    FAILED = "failed", "Failed"  # every retry failed, the address was refused, or the endpoint was disabled


class WebhookDelivery(TimeStampedModel):
    """One event for one endpoint: the outbox row, written in the transaction that made the event.

    ``webhook_id`` is the Standard Webhooks message id, the same on every attempt (receivers de-duplicate
    on it). A worker sends a pending delivery once ``next_attempt_at`` has come, holding it until
    ``lease_expires_at``; a worker that dies mid-send leaves a lease that expires, and the sweeper queues
    the delivery again. ``queued_at`` says when a Celery message for it was last due, so the sweeper also
    finds deliveries whose message never came.
    """

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_type = models.CharField(max_length=64)
    webhook_id = models.CharField(max_length=64, unique=True)
    payload = models.JSONField()
    status = models.CharField(max_length=20, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    retry_until = models.DateTimeField()  # no retry is scheduled after this (the event, or a redelivery, + the window)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    last_response = models.TextField(blank=True)  # an excerpt of the body
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["endpoint", "-created_at"], name="webhook_delivery_log_idx"),
            models.Index(fields=["next_attempt_at"], condition=models.Q(status="pending"),
                         name="webhook_delivery_due_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=DeliveryStatus.values),
                                   name="webhook_delivery_status_valid"),
            models.CheckConstraint(
                condition=~models.Q(status="pending") | models.Q(next_attempt_at__isnull=False),
                name="webhook_delivery_pending_has_next_attempt",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.webhook_id} ({self.status})"


class WebhookAttempt(models.Model):
    """One HTTP request of a delivery: what came back (or why nothing did) and how long it took."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    succeeded = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_number_once"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"
