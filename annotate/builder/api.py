"""DRF API for annotation templates and their versions (the same JSON schema the builder stores)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.builder import components as catalogue
from annotate.builder import selectors as template_selectors
from annotate.builder import services as template_services
from annotate.builder.presets import PRESETS
from annotate.models import AnnotationTemplate, AnnotationTemplateVersion
from core.parsing import MAX_INT, query_id, query_int
from core.schema import id_field, id_parameter
from projects import roles
from projects.access import project_get_for_user
from projects.models import Project

SCHEMA_HELP = (
    '{"schema_version": 1, "components": [{"type": ..., "name": ..., "config": {...}}]}; component types: '
    + ", ".join(catalogue.CATALOGUE)
)


class CanManageTemplates(permissions.BasePermission):
    message = "Only project admins may build templates."

    def has_permission(self, request: Request, view: object) -> bool:
        return bool(request.user.has_perm(roles.MANAGE))


class TemplateVersionSerializer(serializers.ModelSerializer):
    schema = serializers.JSONField(help_text=SCHEMA_HELP)

    class Meta:
        model = AnnotationTemplateVersion
        fields = ["id", "template", "number", "status", "schema", "published_at", "created_at", "updated_at"]
        read_only_fields = fields


class TemplateSerializer(serializers.ModelSerializer):
    schema = serializers.JSONField(write_only=True, required=False, help_text="Version 1's schema. " + SCHEMA_HELP)
    latest_version = serializers.SerializerMethodField()
    versions = serializers.SerializerMethodField()

    class Meta:
        model = AnnotationTemplate
        fields = ["id", "project", "name", "description", "schema", "latest_version", "versions", "created_at",
                  "updated_at"]
        read_only_fields = ["id", "latest_version", "versions", "created_at", "updated_at"]

    def _sorted(self, template: AnnotationTemplate) -> list[AnnotationTemplateVersion]:
        return sorted(template.versions.all(), key=lambda v: v.number)

    def get_latest_version(self, template: AnnotationTemplate) -> dict[str, Any] | None:
        versions = self._sorted(template)
        return TemplateVersionSerializer(versions[-1]).data if versions else None

    def get_versions(self, template: AnnotationTemplate) -> list[dict[str, Any]]:
        return [{"id": v.id, "number": v.number, "status": v.status} for v in self._sorted(template)]


class DraftSerializer(serializers.Serializer):
    schema = serializers.JSONField(help_text=SCHEMA_HELP)


class ProjectRefSerializer(serializers.Serializer):
    project = id_field()


class PresetSerializer(ProjectRefSerializer):
    preset = serializers.ChoiceField(choices=list(PRESETS))


class ImportSerializer(ProjectRefSerializer):
    data = serializers.JSONField(help_text="An export (name, description, schema) or a bare schema")


ValidationResult = inline_serializer(
    "TemplateValidationResult",
    {"valid": serializers.BooleanField(), "errors": serializers.ListField(child=serializers.DictField())},
)


def _managed_project(request: Request, project_id: int) -> Project:
    """The project named in the body, when the caller may manage it (404 to non-members, 403 to others)."""
    return project_get_for_user(user=request.user, project_id=project_id, action="manage")


class AnnotationTemplateViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                                mixins.UpdateModelMixin, viewsets.GenericViewSet):
    """Annotation templates of the projects the caller administers.

    Create makes version 1 as a draft. ``PUT draft/`` replaces the draft's schema (a new draft
    numbered one above the newest version when the newest is published); ``publish/`` freezes
    it. Invalid schemas get 400 with ``field`` = ``<component>.<field>`` and every problem in ``errors``.
    """

    serializer_class = TemplateSerializer
    permission_classes = [permissions.IsAuthenticated, CanManageTemplates]

    def get_queryset(self) -> QuerySet[AnnotationTemplate]:
        queryset = template_selectors.templates_for_user(user=self.request.user)
        project = query_id(self.request.query_params, "project")
        if project is not None:
            queryset = queryset.filter(project_id=project)
        return queryset

    @extend_schema(parameters=[id_parameter("project", "Only this project's templates")])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        data = serializer.validated_data
        project = _managed_project(self.request, data["project"].pk)
        template = template_services.template_create(
            project=project, name=data["name"], description=data.get("description", ""),
            schema=data.get("schema"), created_by=self.request.user, strict=True,
        )
        serializer.instance = template_selectors.templates_for_user(user=self.request.user).get(pk=template.pk)

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        template = serializer.instance
        data = serializer.validated_data
        if "project" in data and data["project"].pk != template.project_id:
            raise serializers.ValidationError({"project": "A template cannot move to another project."})
        template_services.template_update(template=template, name=data.get("name", template.name),
                                          description=data.get("description", template.description))
        if "schema" in data:
            template_services.template_version_save_draft(template=template, schema=data["schema"],
                                                          created_by=self.request.user, strict=True)
        serializer.instance = self.get_queryset().get(pk=template.pk)

    @extend_schema(request=DraftSerializer, responses=TemplateVersionSerializer)
    @action(detail=True, methods=["put"])
    def draft(self, request: Request, pk: str | None = None) -> Response:
        """Replace the draft's schema (validated in full)."""
        body = DraftSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        version = template_services.template_version_save_draft(
            template=self.get_object(), schema=body.validated_data["schema"], created_by=request.user, strict=True
        )
        return Response(TemplateVersionSerializer(version).data)

    @extend_schema(request=None, responses=TemplateVersionSerializer)
    @action(detail=True, methods=["post"])
    def publish(self, request: Request, pk: str | None = None) -> Response:
        """Publish the draft; it is immutable from then on."""
        version = template_services.template_version_publish(template=self.get_object(), created_by=request.user)
        return Response(TemplateVersionSerializer(version).data)

    @extend_schema(request=None, responses={201: TemplateSerializer})
    @action(detail=True, methods=["post"])
    def duplicate(self, request: Request, pk: str | None = None) -> Response:
        copy = template_services.template_duplicate(template=self.get_object(), created_by=request.user)
        return Response(self.get_serializer(self.get_queryset().get(pk=copy.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("version", {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                                     description="Version number; the newest by default")],
        responses=inline_serializer("TemplateExport", {
            "format": serializers.CharField(), "name": serializers.CharField(),
            "description": serializers.CharField(), "version": serializers.IntegerField(),
            "status": serializers.CharField(), "schema": serializers.JSONField(),
        }),
    )
    @action(detail=True, methods=["get"])
    def export(self, request: Request, pk: str | None = None) -> Response:
        """The JSON that ``import/`` reads back."""
        template = self.get_object()
        number = query_int(request.query_params, "version", minimum=1, maximum=MAX_INT)
        versions = template.versions.all()
        version = versions.filter(number=number).first() if number is not None else versions.order_by(
            "-number").first()
        if version is None:
            return Response({"detail": "No such version.", "field": "version"}, status=status.HTTP_404_NOT_FOUND)
        return Response(template_services.template_export(version=version))

    @extend_schema(request=ImportSerializer, responses={201: TemplateSerializer})
    @action(detail=False, methods=["post"], url_path="import")
    def import_(self, request: Request) -> Response:
        body = ImportSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        project = _managed_project(request, body.validated_data["project"])
        template = template_services.template_import(project=project, data=body.validated_data["data"],
                                                     created_by=request.user)
        return Response(self.get_serializer(self.get_queryset().get(pk=template.pk)).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=PresetSerializer, responses={201: TemplateSerializer})
    @action(detail=False, methods=["post"])
    def preset(self, request: Request) -> Response:
        """One call, one working template from a preset."""
        body = PresetSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        project = _managed_project(request, body.validated_data["project"])
        template = template_services.template_create_from_preset(
            project=project, preset=body.validated_data["preset"], created_by=request.user
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=template.pk)).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=DraftSerializer, responses=ValidationResult)
    @action(detail=False, methods=["post"])
    def validate(self, request: Request) -> Response:
        """Check a schema without storing it."""
        body = DraftSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        issues = catalogue.validate_schema(body.validated_data["schema"])
        return Response({"valid": not issues, "errors": [issue.as_dict() for issue in issues]})


class AnnotationTemplateVersionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Every version of the caller's templates (read-only: published versions never change)."""

    serializer_class = TemplateVersionSerializer
    permission_classes = [permissions.IsAuthenticated, CanManageTemplates]

    def get_queryset(self) -> QuerySet[AnnotationTemplateVersion]:
        queryset = template_selectors.template_versions_for_user(user=self.request.user)
        template = query_id(self.request.query_params, "template")
        if template is not None:
            queryset = queryset.filter(template_id=template)
        return queryset

    @extend_schema(parameters=[id_parameter("template", "Only this template's versions")])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)
