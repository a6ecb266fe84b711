from __future__ import annotations

from django.contrib.auth.models import User
from django.urls import path
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from core.audit import EVENTS, audit_entries, entry_data
from core.pagination import PageNumberPagination
from core.schema import page_of
from projects import roles, selectors, services
from projects.access import project_api
from projects.models import Project, ProjectMembership
from projects.roles import Role


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


# --- members (project admins) ------------------------------------------------------------------


class MemberPagination(PageNumberPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 500


class MemberSerializer(serializers.Serializer):
    user_id = serializers.IntegerField(source="user.pk")
    username = serializers.CharField(source="user.username")
    role = serializers.ChoiceField(choices=Role.choices)


class MemberRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices, help_text="admin, annotator or ml_engineer")


@extend_schema(responses=page_of(MemberSerializer), operation_id="projects_members_list",
               parameters=[OpenApiParameter("page", {"type": "integer", "minimum": 1}, description="Page, from 1"),
                           OpenApiParameter("page_size", {"type": "integer", "minimum": 1, "maximum": 500})],
               summary="The project's members and their roles (project admins)")
@api_view(["GET"])
@project_api("manage")
def member_list(request: Request, project: Project) -> Response:
    paginator = MemberPagination()
    page = paginator.paginate_queryset(selectors.project_members(project=project), request)
    return paginator.get_paginated_response(MemberSerializer(page, many=True).data)


def _user_named(username: str) -> User:
    user = User.objects.filter(username=username).first()
    if user is None:
        raise NotFound({"detail": f"No user named {username!r}.", "field": "username"})
    return user


@extend_schema(methods=["PUT"], request=MemberRoleSerializer, responses={200: MemberSerializer, 201: MemberSerializer},
               summary="Add the user to the project in a role, or change their role (project admins); the "
                       "user's global role must allow it, and the last admin cannot be demoted")
@extend_schema(methods=["DELETE"], request=None, responses={204: OpenApiResponse(description="Removed.")},
               summary="Remove the user from the project (project admins); never the last admin")
@api_view(["PUT", "DELETE"])
@project_api("manage")
def member_detail(request: Request, project: Project, username: str) -> Response:
    user = _user_named(username)
    is_member = ProjectMembership.objects.filter(project=project, user=user).exists()
    if request.method == "DELETE":
        if not is_member:
            raise NotFound({"detail": f"{username} is not a member of this project.", "field": "username"})
        services.membership_remove(project=project, user=user, by=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
    body = MemberRoleSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    membership = services.membership_set_role(project=project, user=user, role=body.validated_data["role"],
                                              create=True, by=request.user)
    return Response(MemberSerializer(membership).data,
                    status=status.HTTP_200_OK if is_member else status.HTTP_201_CREATED)


_p = "projects/<int:project_id>/"
urlpatterns = [
    path(_p + "members/", member_list, name="api-member-list"),
    path(_p + "members/<str:username>/", member_detail, name="api-member-detail"),
]
