from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.request import Request
from rest_framework.response import Response

from projects import roles


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
