from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, serializers, viewsets
from rest_framework.decorators import api_view, permission_classes
from rest_framework.request import Request
from rest_framework.response import Response

from annotate import selectors, services
from annotate.models import Project
from core import roles


class ProjectSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = ["id", "name", "description", "archived_at", "created_at", "role",
                  # workflow settings (issue 4); change them through /api/projects/<id>/settings/
                  "instructions", "template_version", "images_per_task", "overlap", "task_order", "gold_rate",
                  "lease_seconds"]
        read_only_fields = ["id", "archived_at", "created_at", "role", "instructions", "template_version",
                            "images_per_task", "overlap", "task_order", "gold_rate", "lease_seconds"]

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
        return selectors.projects_for_user(user=self.request.user, include_archived=True)

    def get_serializer_context(self) -> dict[str, object]:
        context = super().get_serializer_context()
        if self.request.user.is_authenticated:
            context["roles_by_project"] = dict(
                self.request.user.memberships.values_list("project_id", "role")
            )
        return context

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = services.project_create(created_by=self.request.user, **serializer.validated_data)


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    roles = serializers.ListField(child=serializers.CharField())
    permissions = serializers.DictField(child=serializers.BooleanField())


@extend_schema(responses=MeSerializer)
@api_view(["GET"])
@permission_classes([permissions.IsAuthenticated])
def me(request: Request) -> Response:
    """The caller, their global roles and what those let them do."""
    user = request.user
    group_roles = [role for role, group in roles.GROUP_NAMES.items() if user.groups.filter(name=group).exists()]
    return Response(
        {
            "id": user.pk,
            "username": user.get_username(),
            "roles": group_roles,
            "permissions": {
                "manage": user.has_perm(roles.MANAGE),
                "annotate": user.has_perm(roles.ANNOTATE),
                "export": user.has_perm(roles.EXPORT),
                "train": user.has_perm(roles.TRAIN),
            },
        }
    )
