from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions, serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.request import Request
from rest_framework.response import Response

from core.audit import EVENTS, audit_entries, entry_data
from core.pagination import PageNumberPagination
from core.schema import page_of
from projects import roles
from projects.access import project_api
from projects.models import Project


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
    group_names = set(user.groups.values_list("name", flat=True))
    return Response(
        {
            "id": user.pk,
            "username": user.get_username(),
            "roles": [role for role, group in roles.GROUP_NAMES.items() if group in group_names],
            "permissions": {
                "manage": user.has_perm(roles.MANAGE),
                "annotate": user.has_perm(roles.ANNOTATE),
                "export": user.has_perm(roles.EXPORT),
                "train": user.has_perm(roles.TRAIN),
            },
        }
    )


class AuditEntrySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    timestamp = serializers.DateTimeField()
    event = serializers.ChoiceField(choices=list(EVENTS))
    summary = serializers.CharField()
    actor = serializers.CharField(allow_null=True, help_text="Username; null for the system")
    object_type = serializers.CharField()
    object_id = serializers.CharField()
    object_repr = serializers.CharField()
    changes = serializers.DictField(help_text="field -> [old, new]")
    details = serializers.DictField()


@extend_schema(responses=page_of(AuditEntrySerializer), operation_id="projects_audit_list",
               parameters=[OpenApiParameter("page", {"type": "integer", "minimum": 1}, description="Page, from 1")],
               summary="The project's audit trail, newest first (project admins)")
@api_view(["GET"])
@permission_classes([permissions.IsAuthenticated])
@project_api("manage")
def project_audit(request: Request, project: Project) -> Response:
    paginator = PageNumberPagination()
    page = paginator.paginate_queryset(audit_entries(project_id=project.pk), request)
    return paginator.get_paginated_response([entry_data(entry) for entry in page or []])
