from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import mixins, permissions, serializers, viewsets
from rest_framework.request import Request

from annotate.models import TaskOrder
from annotate.workflow.access import workflow_of
from projects import roles, services
from projects.access import projects_for_user
from projects.models import Project


class ProjectSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()
    # The workflow settings (read-only here; change them through /api/projects/<id>/settings/).
    instructions = serializers.CharField(source="workflow.instructions", read_only=True)
    template_version = serializers.IntegerField(source="workflow.template_version_id", read_only=True,
                                                allow_null=True)
    images_per_task = serializers.IntegerField(source="workflow.images_per_task", read_only=True)
    overlap = serializers.IntegerField(source="workflow.overlap", read_only=True)
    task_order = serializers.ChoiceField(source="workflow.task_order", choices=TaskOrder.choices, read_only=True)
    gold_rate = serializers.FloatField(source="workflow.gold_rate", read_only=True)
    lease_seconds = serializers.IntegerField(source="workflow.lease_seconds", read_only=True)

    class Meta:
        model = Project
        fields = ["id", "name", "description", "archived_at", "created_at", "role",
                  "instructions", "template_version", "images_per_task", "overlap", "task_order", "gold_rate",
                  "lease_seconds"]
        read_only_fields = ["id", "archived_at", "created_at", "role"]

    def to_representation(self, instance: Project) -> dict[str, Any]:
        workflow_of(instance)  # a project without a workflow row yet shows the defaults
        return super().to_representation(instance)

    def get_role(self, project: Project) -> str | None:
        roles_by_project = self.context.get("roles_by_project", {})
        return roles_by_project.get(project.pk)


class CanCreateProjects(permissions.BasePermission):
    message = "Only project admins may create projects."

    def has_permission(self, request: Request, view: object) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return bool(request.user.has_perm(roles.MANAGE))


class ProjectViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                     viewsets.GenericViewSet):
    """Projects the caller belongs to. Creating one needs the project-admin role."""

    serializer_class = ProjectSerializer
    permission_classes = [permissions.IsAuthenticated, CanCreateProjects]

    def get_queryset(self) -> QuerySet[Project]:
        return projects_for_user(user=self.request.user, include_archived=True).select_related("workflow")

    def get_serializer_context(self) -> dict[str, object]:
        context = super().get_serializer_context()
        if self.request.user.is_authenticated:
            context["roles_by_project"] = dict(
                self.request.user.memberships.values_list("project_id", "role")
            )
        return context

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = services.project_create(created_by=self.request.user, **serializer.validated_data)
