"""Projects and who belongs to them.

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
