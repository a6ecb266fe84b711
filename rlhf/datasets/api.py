"""Preference exports over the API: create, list, inspect, cancel and download."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpResponseRedirect
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import HidesServerPaths, JobProgressFields
from core.exceptions import ApplicationError
from core.parsing import MAX_BIGINT, query_id
from core.schema import id_field, id_parameter
from projects.access import project_get_for_user
from projects.models import Project
from rlhf.datasets import selectors
from rlhf.datasets import services as export_services
from rlhf.datasets.archive import export_archive, export_archive_url
from rlhf.exports.pairs import TIE_POLICIES
from rlhf.models import PreferenceExport, RunStatus


class ExportSerializer(HidesServerPaths, JobProgressFields, serializers.ModelSerializer):
    project = serializers.PrimaryKeyRelatedField(read_only=True)
    download_url = serializers.SerializerMethodField()
    data_url = serializers.SerializerMethodField(
        help_text="s3://bucket/prefix/data/<content hash> of a succeeded object-store export; null otherwise")

    class Meta:
        model = PreferenceExport
        fields = [
            "id", "project", "name", "format", "tie_policy", "weight_per_prompt", "include_images", "filters",
            "status", "phase", "phase_label", "eta_seconds", "progress", "counts", "split_counts", "content_hash",
            "error", "attempts", "created_at", "started_at", "finished_at", "download_url", "storage_url",
            "data_url",
        ]
        read_only_fields = fields

    def get_download_url(self, export: PreferenceExport) -> str | None:
        if export.status != RunStatus.SUCCEEDED:
            return None
        return f"/api/exports/{export.pk}/download/"

    def get_data_url(self, export: PreferenceExport) -> str | None:
        return export_services.export_data_url(export) if export.status == RunStatus.SUCCEEDED else None


class ExportCreateSerializer(serializers.Serializer):
    """The fields an export accepts; each is validated by ``export_request_parse`` (400 names the field)."""

    project = id_field()
    format = serializers.ChoiceField(choices=PreferenceExport.Format.choices)
    name = serializers.CharField(required=False, allow_blank=True,
                                 max_length=PreferenceExport._meta.get_field("name").max_length)
    tie_policy = serializers.ChoiceField(choices=list(TIE_POLICIES), required=False)
    weight_per_prompt = serializers.BooleanField(required=False)
    include_images = serializers.BooleanField(required=False)
    template_versions = serializers.ListField(child=id_field(), required=False, max_length=1000,
                                              help_text="Versions of this project's templates")
    model_versions = serializers.ListField(child=id_field(), required=False, max_length=1000)
    annotators = serializers.ListField(child=id_field(), required=False, max_length=1000,
                                       help_text="User ids of this project's annotators")
    date_from = serializers.CharField(required=False, allow_blank=True)
    date_to = serializers.CharField(required=False, allow_blank=True)
    exclude_rejected = serializers.BooleanField(required=False)
    min_agreement = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    gold = serializers.ChoiceField(choices=list(export_services.GOLD_CHOICES), required=False)
    split_train = serializers.FloatField(required=False, min_value=0, max_value=1)
    split_validation = serializers.FloatField(required=False, min_value=0, max_value=1)
    split_test = serializers.FloatField(required=False, min_value=0, max_value=1)
    split_seed = serializers.IntegerField(required=False, min_value=0, max_value=MAX_BIGINT)
    destination = serializers.ChoiceField(
        choices=list(export_services.DESTINATIONS), required=False,
        help_text="server (PICKWISE_EXPORT_DIR, the default) or object_store (the bucket of EXPORT_STORAGE_URL)")


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
        project = query_id(self.request.query_params, "project")
        if project is not None:
            queryset = queryset.filter(project_id=project)
        return queryset

    @extend_schema(
        parameters=[id_parameter("project", "Only this project's exports")],
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
        return Response(ExportSerializer(export, context=self.get_serializer_context()).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ExportSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        export = export_services.preference_export_cancel(export=self.get_object())
        return Response(ExportSerializer(export, context=self.get_serializer_context()).data)

    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY,
                              302: OpenApiResponse(description="An object-store export: a signed, expiring link "
                                                               "to its zip (Location)")})
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> FileResponse | HttpResponseRedirect:
        export = self.get_object()
        if export.status != RunStatus.SUCCEEDED:
            raise Http404("This export has no files (it has not succeeded).")
        if export.storage_url:
            return HttpResponseRedirect(export_archive_url(export))
        archive = export_archive(export)
        return FileResponse(archive.open("rb"), as_attachment=True, filename=f"pickwise-export-{export.pk}.zip")
