"""Task imports over the API: upload a table and its images (or name them), check, import, watch, cancel.

``POST /api/projects/<id>/imports/`` (multipart) answers 201 with the finished import when it ran in
the request (up to ``IMPORT_INLINE_MAX_ROWS`` rows and no URL images), or 202 with the queued one,
to poll at ``GET .../imports/<import_id>/`` (status, progress, phase, report). Project admins only.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.models import TaskImport
from annotate.workflow.access import workflow_api
from annotate.workflow.imports import services as import_services
from annotate.workflow.imports.table import FORMATS
from core.api import JobProgressFields
from core.pagination import LargePagination
from core.schema import PAGE_PARAMETERS, page_of
from projects.models import Project


class TaskImportSerializer(JobProgressFields, serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", allow_null=True, read_only=True)

    class Meta:
        model = TaskImport
        fields = ["id", "name", "source_format", "dry_run", "options", "status", "progress", "phase", "phase_label",
                  "step", "total_steps", "eta_seconds", "rows", "report", "error", "prompt_set", "attempts",
                  "created_by", "created_at", "started_at", "finished_at"]
        read_only_fields = fields

    def get_phase_label(self, job: TaskImport) -> str:
        return job.phase_text


class TaskImportRequestSerializer(serializers.Serializer):
    file = serializers.FileField(required=False, help_text=(
        "The table: .csv, .jsonl, .parquet, or a .zip of a Hugging Face dataset folder (save_to_disk or "
        "Parquet files). Columns: prompt (or caption), images (a list) or image_0, image_1, ... (jpg_0, jpg_1, "
        "image_0_url, ... for Pick-a-Pic), optional key, negative_prompt; others become task metadata."))
    path = serializers.CharField(required=False, allow_blank=True, max_length=1000,
                                 help_text="Instead of file: a table or dataset folder under the import root")
    images = serializers.ListField(child=serializers.FileField(), required=False, allow_empty=True,
                                   max_length=10_000, help_text="Image files the table names (by file name)")
    images_zip = serializers.FileField(required=False, help_text="A zip of the image files the table names")
    images_path = serializers.CharField(required=False, allow_blank=True, max_length=1000,
                                        help_text="A folder under the import root the table's image names are in")
    format = serializers.ChoiceField(choices=FORMATS, required=False, help_text="Default: from the file name")
    name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    key_column = serializers.CharField(required=False, allow_blank=True, max_length=100)
    deduplicate = serializers.BooleanField(required=False, default=False,
                                           help_text="Skip rows whose prompt is repeated or already in the project")
    dry_run = serializers.BooleanField(required=False, default=False,
                                       help_text="Check every row and image and report; write nothing")
    background = serializers.BooleanField(required=False, allow_null=True, default=None,
                                          help_text="Force a worker (true) or the request (false); default: by size")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("file" in attrs) == bool(attrs.get("path")):
            raise serializers.ValidationError({"file": "Upload the table as 'file' or name it with 'path'."})
        if len(attrs.get("images") or []) > settings.IMPORT_MAX_FILES:
            raise serializers.ValidationError({"images": f"At most {settings.IMPORT_MAX_FILES} files."})
        return attrs


@extend_schema(methods=["GET"], responses=page_of(TaskImportSerializer), parameters=PAGE_PARAMETERS,
               operation_id="projects_imports_list",
               summary="The project's task imports, newest first")
@extend_schema(
    methods=["POST"], request={"multipart/form-data": TaskImportRequestSerializer},
    responses={201: TaskImportSerializer, 202: TaskImportSerializer},
    summary="Import tasks with their candidate images (project admins)",
    description="201: it ran in the request (its status says how it ended); 202: it runs on a worker, poll it. "
                "A failed import lists every bad row in report.errors as {line, column, message}; nothing of "
                "it is stored.",
)
@api_view(["GET", "POST"])
@parser_classes([MultiPartParser, FormParser])
@workflow_api("manage")
def import_list(request: Request, project: Project) -> Response:
    if request.method == "GET":
        paginator = LargePagination()
        page = paginator.paginate_queryset(
            TaskImport.objects.filter(project=project).select_related("created_by").order_by("-created_at", "-pk"),
            request)
        return paginator.get_paginated_response(TaskImportSerializer(page, many=True).data)
    body = TaskImportRequestSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    task_import = import_services.task_import_create(
        project=project, user=request.user, name=data.get("name", ""), fmt=data.get("format"),
        dry_run=data["dry_run"], table=data.get("file"), table_path=data.get("path", ""),
        images=data.get("images") or [], images_zip=data.get("images_zip"), images_path=data.get("images_path", ""),
        options=import_services.ImportOptions(deduplicate=data["deduplicate"], key_column=data.get("key_column", "")),
    )
    background = data.get("background")
    task_import = import_services.task_import_start(
        task_import=task_import, inline=None if background is None else not background)
    task_import.refresh_from_db()
    code = status.HTTP_201_CREATED if task_import.is_finished else status.HTTP_202_ACCEPTED
    return Response(TaskImportSerializer(task_import).data, status=code)


def _import_of(project: Project, import_id: int) -> TaskImport | None:
    return TaskImport.objects.filter(project=project, pk=import_id).select_related("created_by").first()


@extend_schema(responses=TaskImportSerializer, summary="One task import: status, progress and report")
@api_view(["GET"])
@workflow_api("manage")
def import_detail(request: Request, project: Project, import_id: int) -> Response:
    task_import = _import_of(project, import_id)
    if task_import is None:
        return Response({"detail": "No such import."}, status=status.HTTP_404_NOT_FOUND)
    return Response(TaskImportSerializer(task_import).data)


@extend_schema(request=None, responses=TaskImportSerializer,
               summary="Cancel an import that has not finished; nothing of it is kept")
@api_view(["POST"])
@workflow_api("manage")
def import_cancel(request: Request, project: Project, import_id: int) -> Response:
    task_import = _import_of(project, import_id)
    if task_import is None:
        return Response({"detail": "No such import."}, status=status.HTTP_404_NOT_FOUND)
    task_import = import_services.task_import_cancel(task_import=task_import)
    return Response(TaskImportSerializer(task_import).data)


_p = "projects/<int:project_id>/imports/"
urlpatterns = [
    path(_p, import_list, name="api-import-list"),
    path(_p + "<int:import_id>/", import_detail, name="api-import-detail"),
    path(_p + "<int:import_id>/cancel/", import_cancel, name="api-import-cancel"),
]
