"""Preference exports over the API: create, list, inspect, cancel and download."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse, Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from core.exceptions import ApplicationError
from projects.access import project_get_for_user
from projects.models import Project
from rlhf.datasets import selectors
from rlhf.datasets import services as export_services
from rlhf.datasets.archive import export_archive
from rlhf.models import PreferenceExport, RunStatus


class ExportSerializer(serializers.ModelSerializer):
    project = serializers.PrimaryKeyRelatedField(read_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = PreferenceExport
        fields = [
            "id", "project", "name", "format", "tie_policy", "weight_per_prompt", "include_images", "filters",
            "status", "progress", "counts", "split_counts", "content_hash", "error", "created_at",
            "started_at", "finished_at", "download_url",
        ]
        read_only_fields = fields

    def get_download_url(self, export: PreferenceExport) -> str | None:
        if export.status != RunStatus.SUCCEEDED:
            return None
        return f"/api/exports/{export.pk}/download/"


class ExportCreateSerializer(serializers.Serializer):
    """The fields an export accepts; each is validated by ``export_request_parse`` (400 names the field)."""

    project = serializers.IntegerField()
    format = serializers.CharField()
    name = serializers.CharField(required=False, allow_blank=True)
    tie_policy = serializers.CharField(required=False)
    weight_per_prompt = serializers.BooleanField(required=False)
    include_images = serializers.BooleanField(required=False)
    template_versions = serializers.ListField(child=serializers.IntegerField(), required=False)
    model_versions = serializers.ListField(child=serializers.IntegerField(), required=False)
    annotators = serializers.ListField(child=serializers.IntegerField(), required=False)
    date_from = serializers.CharField(required=False, allow_blank=True)
    date_to = serializers.CharField(required=False, allow_blank=True)
    exclude_rejected = serializers.BooleanField(required=False)
    min_agreement = serializers.FloatField(required=False, allow_null=True)
    gold = serializers.CharField(required=False)
    split_train = serializers.FloatField(required=False)
    split_validation = serializers.FloatField(required=False)
    split_test = serializers.FloatField(required=False)
    split_seed = serializers.IntegerField(required=False)


def _exportable_project(request: Request, project_id: int) -> Project:
    """The project named in the body: a 400 on ``project`` for projects the caller does not belong to
    (it is a field of the request), a 403 for members who may not export."""
    try:
        return project_get_for_user(user=request.user, project_id=project_id, action="export")
    except Http404:
        raise ApplicationError(f"No project {project_id} that you belong to.", field="project") from None


class ExportViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Preference exports of the projects the caller may export from."""

    serializer_class = ExportSerializer
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self) -> QuerySet[PreferenceExport]:
        queryset = selectors.exports_for_user(user=self.request.user)
        project = self.request.query_params.get("project")
        if project and project.isdigit():
            queryset = queryset.filter(project_id=int(project))
        return queryset

    @extend_schema(
        parameters=[OpenApiParameter("project", int, description="Only this project's exports")],
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=ExportCreateSerializer, responses={201: ExportSerializer})
    def create(self, request: Request) -> Response:
        payload = ExportCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        project = _exportable_project(request, payload.validated_data["project"])
        export_request = export_services.export_request_parse(dict(payload.validated_data))
        export = export_services.preference_export_create(project=project, user=request.user, request=export_request)
        return Response(ExportSerializer(export).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ExportSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        export = export_services.preference_export_cancel(export=self.get_object())
        return Response(ExportSerializer(export).data)

    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> FileResponse:
        export = self.get_object()
        if export.status != RunStatus.SUCCEEDED:
            raise Http404("This export has no files (it has not succeeded).")
        archive = export_archive(export)
        return FileResponse(archive.open("rb"), as_attachment=True, filename=f"pickwise-export-{export.pk}.zip")
