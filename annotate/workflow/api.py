"""DRF API of the annotation workflow, so a lab can drive annotation from its own tools.

Everything is scoped to one project in the URL (``/api/projects/<project_id>/...``); a caller
who is not a member gets 404, a member without the right 403 (same rules as the pages).

The annotator loop is one call per annotation after the first, each a fixed handful of SQL statements:
``POST tasks/next/`` (lease the next task: prompt, images, ranking rules, the task's key and metadata),
then ``POST tasks/<id>/submit/`` or ``tasks/by-key/<key>/submit/`` (``ranking`` as tie groups of image
ids, best first, plus an ``idempotency_key``: a retry with the same key stores nothing), which answers
with the next task (or 204 when none is left).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.urls import path
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.builder.components import MAX_IMAGES
from annotate.models import (
    Annotation,
    AnnotationStatus,
    AnnotationTask,
    AnnotationTemplateVersion,
    AssignmentStatus,
    PromptSet,
    TaskAssignment,
    TaskOrder,
)
from annotate.workflow import annotation_export, edit_input, queue
from annotate.workflow import selectors as workflow_selectors
from annotate.workflow import services as workflow_services
from annotate.workflow.access import workflow_api, workflow_of
from annotate.workflow.imports.api import urlpatterns as import_urls
from annotate.workflow.scoring import reward_scores
from annotate.workflow.services import (
    MAX_LEASE_SECONDS,
    MAX_OVERLAP,
    MIN_LEASE_SECONDS,
    OVERLAP_OUT_OF_RANGE,
    Submission,
)
from core.exceptions import ApplicationError
from core.pagination import LargePagination
from core.parsers import JSONParser
from core.parsing import query_bool, query_id
from core.schema import PAGE_PARAMETERS, id_field, id_parameter, page_of
from generation import selectors as generation_selectors
from generation.api import JobStatusSerializer
from generation.selectors import project_model_versions
from generation.services import PARAM_FIELDS, RateLimitedError, edit_limits
from projects.access import user_can
from projects.models import Project
from projects.services import project_set_archived

RANKING_HELP = (
    'Tie groups of image ids, best first: [["<a>"], ["<b>", "<c>"], ["<d>"]] means a beat b and c (tied), '
    "which beat d."
)


# --- serializers -----------------------------------------------------------------------------


class TaskImageSerializer(serializers.Serializer):
    id = serializers.CharField()
    url = serializers.CharField()
    position = serializers.IntegerField()


class RankingRulesSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(choices=["full", "best_of_n", "pairwise"])
    allow_ties = serializers.BooleanField()
    allow_partial = serializers.BooleanField()


class HandoutSerializer(serializers.Serializer):
    assignment_id = serializers.IntegerField()
    task_id = serializers.IntegerField()
    task_key = serializers.CharField(help_text="The task's own key from its import (\"\" when none)")
    task_metadata = serializers.DictField(help_text="The task's metadata columns from its import")
    prompt = serializers.CharField()
    negative_prompt = serializers.CharField()
    is_gold = serializers.BooleanField(help_text="Always false to annotators (gold tasks are blind).")
    images = TaskImageSerializer(many=True)
    template_version = serializers.IntegerField(allow_null=True)
    ranking_rules = RankingRulesSerializer()
    lease_expires_at = serializers.DateTimeField()
    idempotency_key = serializers.CharField(help_text="A key you may reuse when submitting this task.")


class SubmitSerializer(serializers.Serializer):
    ranking = serializers.JSONField(help_text=RANKING_HELP)
    answers = serializers.JSONField(required=False, help_text="Other components' answers by component name.")
    rationale = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    duration_ms = serializers.IntegerField(required=False, min_value=0)
    idempotency_key = serializers.CharField(max_length=100)


class AnnotationSerializer(serializers.ModelSerializer):
    annotator = serializers.CharField(source="annotator.username", read_only=True)

    class Meta:
        model = Annotation
        fields = ["id", "task", "annotator", "status", "ranking", "answers", "rationale", "duration_ms",
                  "template_version", "supersedes", "idempotency_key", "review_note", "created_at"]
        read_only_fields = fields


class SubmitAnnotationSerializer(serializers.ModelSerializer):
    """An annotation as its author sees it (no join to the user table)."""

    class Meta:
        model = Annotation
        fields = ["id", "task", "status", "ranking", "answers", "rationale", "duration_ms", "template_version",
                  "supersedes", "idempotency_key", "created_at"]
        read_only_fields = fields


class TaskSerializer(serializers.ModelSerializer):
    prompt = serializers.CharField(source="prompt.text")
    negative_prompt = serializers.CharField(source="prompt.negative_prompt")
    prompt_set = serializers.IntegerField(source="prompt.prompt_set_id", allow_null=True)
    images = serializers.SerializerMethodField()
    submitted_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = AnnotationTask
        fields = ["id", "external_key", "metadata", "prompt", "negative_prompt", "prompt_set", "position", "is_gold",
                  "gold_ranking", "taken_count", "is_open", "submitted_count", "images", "created_at"]
        read_only_fields = fields

    def get_images(self, task: AnnotationTask) -> list[dict[str, Any]]:
        return [{"id": str(ti.image_id), "url": workflow_selectors.image_url(ti.image_id), "position": ti.position}
                for ti in task.task_images.all()]


class TaskCreateSerializer(serializers.Serializer):
    prompt = serializers.CharField(max_length=2000)
    negative_prompt = serializers.CharField(required=False, allow_blank=True, default="")
    image_ids = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    gold_ranking = serializers.JSONField(required=False, allow_null=True, default=None, help_text=RANKING_HELP)


class PromptSetSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", allow_null=True, read_only=True)

    class Meta:
        model = PromptSet
        fields = ["id", "name", "source_format", "prompt_count", "duplicate_count", "created_by", "created_at"]
        read_only_fields = fields


class SettingsSerializer(serializers.Serializer):
    """A project's workflow settings: the workflow's own, the offered model versions and the pre-sort model."""

    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(read_only=True)
    description = serializers.CharField(required=False, allow_blank=True)
    instructions = serializers.CharField(required=False, allow_blank=True)
    template_version = id_field(allow_null=True, required=False,
                                help_text="A published version of one of this project's templates")
    images_per_task = serializers.IntegerField(required=False, min_value=1, max_value=MAX_IMAGES)
    overlap = serializers.IntegerField(required=False, min_value=1, max_value=MAX_OVERLAP, error_messages={
        "min_value": OVERLAP_OUT_OF_RANGE, "max_value": OVERLAP_OUT_OF_RANGE})
    task_order = serializers.ChoiceField(choices=TaskOrder.choices, required=False)
    gold_rate = serializers.FloatField(required=False, min_value=0, max_value=1)
    lease_seconds = serializers.IntegerField(required=False, min_value=MIN_LEASE_SECONDS, max_value=MAX_LEASE_SECONDS)
    generation_settings = serializers.DictField(
        required=False, help_text="Overrides of the model version's defaults for every Generate in this project: "
                                  f"{', '.join(PARAM_FIELDS)} (the limits of POST /api/generation-jobs/)")
    model_versions = serializers.ListField(child=serializers.IntegerField(), read_only=True)
    model_version_ids = serializers.ListField(child=id_field(), write_only=True, required=False, max_length=1000)
    presort_reward_version = id_field(
        allow_null=True, required=False,
        help_text="A reward model you may use: annotators see each task's images by its stored score, highest "
                  "first; null turns pre-sorting off")
    archived_at = serializers.DateTimeField(read_only=True, allow_null=True)


def settings_data(project: Project) -> dict[str, Any]:
    """``SettingsSerializer``'s fields of ``project`` (three queries: workflow, offered versions, pre-sort)."""
    workflow = workflow_of(project)
    presort = reward_scores().presort_version(project=project)
    offered = project.model_versions.order_by("name").values_list("pk", flat=True)  # type: ignore[attr-defined]
    return {
        "id": project.pk, "name": project.name, "description": project.description,
        "instructions": workflow.instructions, "template_version": workflow.template_version_id,
        "images_per_task": workflow.images_per_task, "overlap": workflow.overlap, "task_order": workflow.task_order,
        "gold_rate": workflow.gold_rate, "lease_seconds": workflow.lease_seconds,
        "generation_settings": workflow.generation_settings, "model_versions": list(offered),
        "presort_reward_version": presort.pk if presort is not None else None, "archived_at": project.archived_at,
    }


def _handout_data(handout: queue.Handout) -> dict[str, Any]:
    assignment, task = handout.assignment, handout.task
    rules = workflow_selectors.ranking_component(assignment.template_version)["config"]
    return {
        "assignment_id": assignment.pk, "task_id": task.pk, "task_key": task.external_key,
        "task_metadata": task.metadata, "prompt": task.prompt.text,
        "negative_prompt": task.prompt.negative_prompt, "is_gold": False,
        "images": handout.images if handout.images is not None else workflow_selectors.task_images(task_id=task.pk),
        "template_version": assignment.template_version_id,
        "ranking_rules": {k: rules[k] for k in ("mode", "allow_ties", "allow_partial")},
        "lease_expires_at": assignment.lease_expires_at, "idempotency_key": f"assignment-{assignment.pk}",
    }


def _own_annotation_data(annotation: Annotation) -> dict[str, Any]:
    """``SubmitAnnotationSerializer``'s fields, built directly (the submit hot path)."""
    return {
        "id": annotation.pk, "task": annotation.task_id, "status": annotation.status,
        "ranking": annotation.ranking, "answers": annotation.answers, "rationale": annotation.rationale,
        "duration_ms": annotation.duration_ms, "template_version": annotation.template_version_id,
        "supersedes": annotation.supersedes_id, "idempotency_key": annotation.idempotency_key,
        "created_at": annotation.created_at,
    }


class _FormatIsAViewParameter(DefaultContentNegotiation):
    """Content negotiation that leaves ``?format=`` to the view (the export's jsonl or json) instead of taking
    it as a renderer name; responses other than the stream (errors) are JSON."""

    def select_renderer(self, request: Request, renderers: list[Any], format_suffix: str | None = None) -> Any:
        renderer = JSONRenderer()
        return renderer, renderer.media_type


def _paginate(request: Request, queryset: QuerySet[Any], serializer_class: type[serializers.BaseSerializer]
              ) -> Response:
    paginator = LargePagination()
    page = paginator.paginate_queryset(queryset, request)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


# --- the annotator loop ---------------------------------------------------------------------


@extend_schema(request=None, responses={200: HandoutSerializer, 204: OpenApiResponse(description="No task left.")},
               summary="Lease the caller's next task (or get their current one back)")
@api_view(["POST"])
@workflow_api("annotate", with_active_lease=True)
def task_next(request: Request, project: Project) -> Response:
    handout = queue.task_next(project=project, user=request.user)
    if handout.task is None:
        return Response(status=status.HTTP_204_NO_CONTENT)
    return Response(_handout_data(handout))  # already JSON-ready: skips serializer field building (hot path)


class SubmitNextSerializer(HandoutSerializer):
    """What submit answers: the caller's next task (as ``tasks/next/`` hands it out), and what was stored."""

    submitted = SubmitAnnotationSerializer(help_text="The annotation this submit stored (or had stored: a retry)")
    submitted_created = serializers.BooleanField(help_text="False when this was a retry of an earlier submit")


SUBMIT_DESCRIPTION = (
    "One round trip per annotation: the answer is the caller's next task, leased as tasks/next/ would, with "
    "`submitted` (the stored annotation) beside it; 204 when no task is left for the caller. Either way the "
    "Location header names the stored annotation. Idempotent by idempotency_key: a retry stores nothing and "
    "answers the same way."
)


def _submit(request: Request, project: Project, task_id: int) -> Response:
    body = SubmitSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    annotation, created = workflow_services.annotation_submit(
        project=project, user=request.user, task_id=task_id,
        submission=Submission(idempotency_key=data["idempotency_key"], ranking=data["ranking"],
                              answers=data.get("answers"), rationale=data.get("rationale"),
                              duration_ms=data.get("duration_ms")),
    )
    handout = queue.task_next(project=project, user=request.user)
    location = {"Location": f"/api/projects/{project.pk}/annotations/{annotation.pk}/"}
    if handout.task is None:
        return Response(status=status.HTTP_204_NO_CONTENT, headers=location)
    return Response({**_handout_data(handout), "submitted": _own_annotation_data(annotation),
                     "submitted_created": created}, headers=location)


@extend_schema(request=SubmitSerializer,
               responses={200: SubmitNextSerializer, 204: OpenApiResponse(description="Stored; no task left.")},
               summary="Submit the ranking of a leased task and get the next one (idempotent by idempotency_key)",
               description=SUBMIT_DESCRIPTION)
@api_view(["POST"])
@workflow_api("annotate")
def task_submit(request: Request, project: Project, task_id: int) -> Response:
    return _submit(request, project, task_id)


@extend_schema(request=SubmitSerializer,
               responses={200: SubmitNextSerializer, 204: OpenApiResponse(description="Stored; no task left.")},
               summary="Submit by the task's own key (from its import) and get the next task",
               description="For clients that keep their own task keys. " + SUBMIT_DESCRIPTION)
@api_view(["POST"])
@workflow_api("annotate")
def task_submit_by_key(request: Request, project: Project, task_key: str) -> Response:
    task_id = AnnotationTask.objects.filter(project=project, external_key=task_key).values_list(
        "pk", flat=True).first() if task_key else None
    if task_id is None:
        return Response({"detail": f"No task with key {task_key!r} in this project.", "field": "task_key"},
                        status=status.HTTP_404_NOT_FOUND)
    return _submit(request, project, task_id)


@extend_schema(request=inline_serializer("SkipRequest", {"reason": serializers.CharField(max_length=500)}),
               responses={200: inline_serializer("SkipResponse", {"task_id": serializers.IntegerField(),
                                                                  "status": serializers.CharField()})},
               summary="Give a leased task back, with a reason")
@api_view(["POST"])
@workflow_api("annotate")
def task_skip(request: Request, project: Project, task_id: int) -> Response:
    assignment = queue.assignment_skip(project=project, user=request.user, task_id=task_id,
                                       reason=str(request.data.get("reason", "")))
    return Response({"task_id": assignment.task_id, "status": assignment.status})


# --- generating a leased task's candidates as edits ----------------------------------------------


EDIT_FIELDS_HELP = (
    "Multipart. `source_from`: `upload` (send `source_image`, a PNG, JPEG or WebP file), `task` (the image the "
    "task's data names; the default when it names one and no file is sent, else `upload`) or "
    "`candidate:<image id>` (a candidate generated earlier in the task), as the template's Source image allows; `mask`: the mask PNG (inpainting; white repaints, the source's size); `strength`: 0 to "
    "1 within the template's Strength range (image-to-image, inpainting); `outpaint_left`, `outpaint_top`, "
    "`outpaint_right`, `outpaint_bottom`: px to add (outpainting; multiples of 8 within the model's limit); "
    "`model_version`: one of the project's offered versions (default: the first). The edit kind is the "
    "template's. Errors are 400 naming the component and field (`field`: `<component>.<field>`) and store "
    "nothing; a body over two images' worth is refused before it is read. Idempotent per lease and inputs: "
    "the same request answers with the same job. Poll it at /api/generation-jobs/<id>/; the images join the "
    "task when it succeeds."
)


class EditGenerateSerializer(serializers.Serializer):
    source_from = serializers.CharField(required=False, help_text=(
        "upload, task or candidate:<image id> (default: task when the task's data names an image and no file "
        "is sent, else upload)"))
    source_image = serializers.FileField(required=False, help_text="The source image (source_from upload)")
    mask = serializers.FileField(required=False, help_text="The mask PNG (inpainting)")
    strength = serializers.CharField(required=False, help_text="0 to 1 (image-to-image, inpainting)")
    outpaint_left = serializers.IntegerField(required=False)
    outpaint_top = serializers.IntegerField(required=False)
    outpaint_right = serializers.IntegerField(required=False)
    outpaint_bottom = serializers.IntegerField(required=False)
    model_version = serializers.IntegerField(required=False)


def _leased_assignment(project: Project, user: Any, task_id: int) -> TaskAssignment | None:
    return (TaskAssignment.objects.select_related("task__prompt", "template_version")
            .filter(project=project, annotator=user.pk, task_id=task_id, status=AssignmentStatus.ACTIVE).first())


def _default_source(assignment: TaskAssignment, plan: Any, files: Any) -> str:
    """As on the page: the task's own image when it has one and no file was sent, else an upload."""
    metadata = assignment.task.metadata
    if ("source_image" not in files and "task" in plan.source["config"]["sources"]
            and isinstance(metadata, dict) and metadata.get("source_image")):
        return "task"
    return "upload"


@extend_schema(
    request={"multipart/form-data": EditGenerateSerializer},
    responses={201: JobStatusSerializer,
               400: OpenApiResponse(description="Bad input: `detail` and `field` name the component and field"),
               404: OpenApiResponse(description="No such task leased to the caller"),
               429: OpenApiResponse(description="Rate limited (Retry-After)")},
    summary="Generate a leased task's candidates as edits of a source image (inpaint, img2img, outpaint)",
    description=EDIT_FIELDS_HELP,
)
@api_view(["POST"])
@parser_classes([MultiPartParser, FormParser])
@workflow_api("annotate")
def task_generate_edit(request: Request, project: Project, task_id: int) -> Response:
    assignment = _leased_assignment(project, request.user, task_id)
    if assignment is None:
        return Response({"detail": "No such task leased to you.", "field": "task_id"},
                        status=status.HTTP_404_NOT_FOUND)
    plan = workflow_services.task_edit_plan(assignment=assignment)
    version = project_model_versions(project=project).first()
    if plan is None or version is None:
        raise ApplicationError("This task has nothing to edit with: its template has no Source image or the "
                               "project no model.", field="source_image")
    limits = edit_limits(version)
    too_large = edit_input.body_too_large(request.META.get("CONTENT_LENGTH") or "", limits=limits, plan=plan)
    if too_large is not None:
        raise too_large
    data, files = request.data, request.FILES
    source_from = str(data.get("source_from", "")).strip() or _default_source(assignment, plan, files)
    upload = (edit_input.read_upload(files.get("source_image"), limits=limits, field="source_image", plan=plan)
              if source_from == "upload" else None)
    mask = (edit_input.read_upload(files.get("mask"), limits=limits, field="mask", plan=plan)
            if plan.kind == "inpaint" else None)
    strength = edit_input.parse_strength(str(data.get("strength", "")), plan=plan)
    box = edit_input.parse_outpaint({side: str(data.get(f"outpaint_{side}", "")) for side in edit_input.SIDES},
                                    plan=plan)
    chosen = str(data.get("model_version", ""))
    try:
        job = workflow_services.task_edit_generation_start(
            project=project, user=request.user, assignment=assignment,
            edit=workflow_services.EditInput(source_from=source_from, upload=upload, mask=mask, strength=strength,
                                             outpaint=box),
            model_version_id=int(chosen) if chosen.isdigit() else None)
    except RateLimitedError as exc:
        return Response(exc.as_dict(), status=status.HTTP_429_TOO_MANY_REQUESTS,
                        headers={"Retry-After": str(exc.retry_after)})
    job = generation_selectors.job_for_user(user=request.user, job_id=job.pk)
    return Response(generation_selectors.job_status(job), status=status.HTTP_201_CREATED,
                    headers={"Location": f"/api/generation-jobs/{job.pk}/"})


# --- tasks and prompt sets ------------------------------------------------------------------


@extend_schema(
    methods=["GET"], responses=page_of(TaskSerializer), operation_id="projects_tasks_list", summary="List the project's tasks (reviewers)",
    parameters=[OpenApiParameter("is_gold", bool), OpenApiParameter("is_open", bool),
                id_parameter("prompt_set", "Only this prompt set's tasks"),
                *PAGE_PARAMETERS],
)
@extend_schema(methods=["POST"], request=TaskCreateSerializer, responses={201: TaskSerializer},
               summary="Create a task with pre-generated images (project admins)")
@api_view(["GET", "POST"])
@workflow_api({"GET": "review", "POST": "manage"})
def task_list(request: Request, project: Project) -> Response:
    if request.method == "POST":
        body = TaskCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        task = workflow_services.task_create(
            project=project, prompt_text=data["prompt"], negative_prompt=data["negative_prompt"],
            image_ids=data["image_ids"], gold_ranking=data["gold_ranking"], created_by=request.user)
        task = workflow_selectors.tasks_for_review(project=project).get(pk=task.pk)
        return Response(TaskSerializer(task).data, status=status.HTTP_201_CREATED)
    queryset = workflow_selectors.tasks_for_review(project=project)
    for name, lookup in (("is_gold", "is_gold"), ("is_open", "is_open")):
        value = query_bool(request.query_params, name)
        if value is not None:
            queryset = queryset.filter(**{lookup: value})
    prompt_set = query_id(request.query_params, "prompt_set")
    if prompt_set is not None:
        queryset = queryset.filter(prompt__prompt_set_id=prompt_set)
    return _paginate(request, queryset, TaskSerializer)


@extend_schema(responses=TaskSerializer, summary="One task: reviewers, or the annotator it was handed to")
@api_view(["GET"])
@workflow_api("annotate")
def task_detail(request: Request, project: Project, task_id: int) -> Response:
    queryset = workflow_selectors.tasks_for_review(project=project).filter(pk=task_id)
    reviewer = user_can(user=request.user, action="review", project=project)
    if not reviewer:
        queryset = queryset.filter(pk__in=TaskAssignment.objects.filter(
            project=project, annotator=request.user).values("task_id"))
    task = queryset.first()
    if task is None:
        return Response({"detail": "No such task."}, status=status.HTTP_404_NOT_FOUND)
    data = TaskSerializer(task).data
    if not reviewer:
        data["gold_ranking"], data["is_gold"] = None, False  # gold stays blind to annotators
    return Response(data)


@extend_schema(
    request=None, responses={200: inline_serializer("TaskImagesResponse", {"images": TaskImageSerializer(many=True)})},
    summary="Replace a task's images (project admins, before any answer)",
)
@api_view(["PUT"])
@workflow_api("manage")
def task_images(request: Request, project: Project, task_id: int) -> Response:
    task = AnnotationTask.objects.filter(project=project, pk=task_id).first()
    if task is None:
        return Response({"detail": "No such task."}, status=status.HTTP_404_NOT_FOUND)
    image_ids = request.data.get("image_ids")
    if not isinstance(image_ids, list):
        raise ApplicationError("image_ids must be a list of image ids.", field="image_ids")
    workflow_services.task_set_images(task=task, image_ids=image_ids)
    return Response({"images": workflow_selectors.task_images(task_id=task.pk)})


@extend_schema(methods=["GET"], responses=page_of(PromptSetSerializer), parameters=PAGE_PARAMETERS,
               operation_id="projects_prompt_sets_list",
               summary="List prompt sets")
@extend_schema(
    methods=["POST"],
    request={"multipart/form-data": inline_serializer("PromptSetUpload", {
        "file": serializers.FileField(), "format": serializers.ChoiceField(["csv", "jsonl", "txt"], required=False),
        "name": serializers.CharField(required=False, max_length=200),
        "deduplicate": serializers.BooleanField(required=False, default=False, help_text=(
            "Skip prompts repeated in the file or already in the project (reported in duplicates); "
            "by default every prompt becomes a task"))})},
    responses={201: inline_serializer("PromptSetImport", {
        "prompt_set": serializers.IntegerField(), "created": serializers.IntegerField(),
        "duplicates": serializers.ListField(child=serializers.DictField())})},
    summary="Upload a CSV, JSONL or text file of prompts; any error imports nothing (400 lists them by line)",
    description="Every prompt becomes a task (repeats too) unless deduplicate is true.",
)
@api_view(["GET", "POST"])
@parser_classes([MultiPartParser, FormParser, JSONParser])
@workflow_api("manage")
def promptset_list(request: Request, project: Project) -> Response:
    if request.method == "GET":
        return _paginate(request, workflow_selectors.prompt_sets(project=project), PromptSetSerializer)
    upload = request.FILES.get("file")
    if upload is None:
        raise ApplicationError("Upload the prompts as a multipart field named 'file'.", field="file")
    data = upload.read(workflow_services.prompt_import.MAX_FILE_BYTES + 1)
    report = workflow_services.prompt_set_import(
        project=project, data=data, filename=upload.name or "", created_by=request.user,
        fmt=request.data.get("format") or None, name=request.data.get("name", ""),
        deduplicate=bool(query_bool(request.data, "deduplicate")))
    return Response(report.as_dict(), status=status.HTTP_201_CREATED)


# --- annotations, review, agreement ---------------------------------------------------------


@extend_schema(
    responses=page_of(AnnotationSerializer), operation_id="projects_annotations_list",
    parameters=[OpenApiParameter("status", str, enum=AnnotationStatus.values),
                id_parameter("task", "Only this task's annotations"),
                OpenApiParameter("annotator", str, description="username (reviewers only)"),
                OpenApiParameter("created_after", OpenApiTypes.DATETIME, description="ISO 8601 date-time"),
                *PAGE_PARAMETERS],
    summary="Annotations: every one for reviewers, the caller's own for annotators",
)
@api_view(["GET"])
@workflow_api("annotate")
def annotation_list(request: Request, project: Project) -> Response:
    queryset = Annotation.objects.filter(project=project).select_related("annotator").order_by("-created_at", "-pk")
    if not user_can(user=request.user, action="review", project=project):
        queryset = queryset.filter(annotator=request.user)
    params = request.query_params
    if "status" in params:
        if params["status"] not in AnnotationStatus.values:
            raise ApplicationError(f"status must be one of {', '.join(AnnotationStatus.values)}.", field="status")
        queryset = queryset.filter(status=params["status"])
    task = query_id(request.query_params, "task")
    if task is not None:
        queryset = queryset.filter(task_id=task)
    if params.get("annotator"):
        queryset = queryset.filter(annotator__username=params["annotator"])
    if "created_after" in params:
        try:
            after = parse_datetime(params["created_after"])
        except ValueError:  # well formed but not a real date-time (month 13)
            after = None
        if after is None:
            raise ApplicationError("created_after must be an ISO 8601 date-time.", field="created_after")
        queryset = queryset.filter(created_at__gt=after)
    return _paginate(request, queryset, AnnotationSerializer)


@extend_schema(
    parameters=[
        OpenApiParameter("format", str, enum=list(annotation_export.FORMATS),
                         description="jsonl (default): one annotation a line; json: an array of tasks with their "
                                     "annotations, for Label Studio-style tools"),
        OpenApiParameter("status", str, description="comma-separated: submitted, superseded, rejected (default: all)"),
        OpenApiParameter("annotator", str, description="username"),
        OpenApiParameter("template_version", int),
        OpenApiParameter("since", str, description="ISO 8601: only annotations changed after it (created, amended, "
                                                   "superseded or rejected)"),
    ],
    responses={(200, "application/x-ndjson"): OpenApiTypes.BINARY, (200, "application/json"): OpenApiTypes.BINARY},
    summary="Every annotation of the project in one streamed download (ML engineers and admins)",
)
@api_view(["GET"])
@workflow_api("export")
def annotation_export_view(request: Request, project: Project) -> StreamingHttpResponse:
    fmt = request.query_params.get("format") or "jsonl"
    if fmt not in annotation_export.FORMATS:
        raise ApplicationError(f"format must be one of {', '.join(annotation_export.FORMATS)}.", field="format")
    filters = annotation_export.filters_parse(request.query_params)
    queryset = annotation_export.annotations_for_export(project=project, filters=filters, by_task=fmt == "json")
    if fmt == "json":
        body, content_type = annotation_export.label_studio_json(queryset), "application/json"
    else:
        body, content_type = annotation_export.jsonl_lines(queryset), "application/x-ndjson"
    response = StreamingHttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="project-{project.pk}-annotations.{fmt}"'
    response["Cache-Control"] = "no-store"
    return response


annotation_export_view.cls.content_negotiation_class = _FormatIsAViewParameter  # type: ignore[attr-defined]


@extend_schema(responses=AnnotationSerializer, summary="One annotation (own, or any for reviewers)")
@api_view(["GET"])
@workflow_api("annotate")
def annotation_detail(request: Request, project: Project, annotation_id: int) -> Response:
    queryset = Annotation.objects.filter(project=project, pk=annotation_id).select_related("annotator")
    if not user_can(user=request.user, action="review", project=project):
        queryset = queryset.filter(annotator=request.user)
    annotation = queryset.first()
    if annotation is None:
        return Response({"detail": "No such annotation."}, status=status.HTTP_404_NOT_FOUND)
    return Response(AnnotationSerializer(annotation).data)


@extend_schema(request=SubmitSerializer, responses={201: SubmitAnnotationSerializer},
               summary="Amend one of the caller's recent annotations (the old one is kept, superseded)")
@api_view(["POST"])
@workflow_api("annotate")
def annotation_amend(request: Request, project: Project, annotation_id: int) -> Response:
    body = SubmitSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    annotation = workflow_services.annotation_amend(
        project=project, user=request.user, annotation_id=annotation_id,
        submission=Submission(idempotency_key=data["idempotency_key"], ranking=data["ranking"],
                              answers=data.get("answers"), rationale=data.get("rationale")),
    )
    return Response(SubmitAnnotationSerializer(annotation).data, status=status.HTTP_201_CREATED)


@extend_schema(request=inline_serializer("RejectRequest", {"note": serializers.CharField(required=False)}),
               responses=AnnotationSerializer, summary="Reject an annotation; its task goes back to the queue")
@api_view(["POST"])
@workflow_api("review")
def annotation_reject(request: Request, project: Project, annotation_id: int) -> Response:
    annotation = workflow_services.annotation_reject(project=project, annotation_id=annotation_id,
                                                     reviewer=request.user, note=str(request.data.get("note", "")))
    return Response(AnnotationSerializer(annotation).data)


@extend_schema(responses=inline_serializer("Agreement", {
    "annotators": serializers.ListField(child=serializers.DictField()),
    "pairwise": serializers.ListField(child=serializers.DictField()),
    "task_w": serializers.ListField(child=serializers.DictField()),
    "mean_pairwise_agreement": serializers.FloatField(allow_null=True),
    "mean_tau": serializers.FloatField(allow_null=True), "mean_w": serializers.FloatField(allow_null=True)}),
    summary="Per-annotator stats and project agreement (pairwise, Kendall's tau, Kendall's W)")
@api_view(["GET"])
@workflow_api("review")
def agreement(request: Request, project: Project) -> Response:
    result = workflow_selectors.project_agreement(project=project)
    annotators = [{k: v for k, v in vars(s).items() if k != "durations"} for s in result.annotators]
    return Response({"annotators": annotators, "pairwise": result.pairwise, "task_w": result.task_w,
                     "mean_pairwise_agreement": result.mean_pairwise_agreement, "mean_tau": result.mean_tau,
                     "mean_w": result.mean_w})


@extend_schema(methods=["GET"], responses=SettingsSerializer, summary="The project's workflow settings")
@extend_schema(methods=["PATCH"], request=SettingsSerializer, responses=SettingsSerializer,
               summary="Change the workflow settings (project admins)")
@api_view(["GET", "PATCH"])
@workflow_api({"GET": "view", "PATCH": "manage"})
def project_settings(request: Request, project: Project) -> Response:
    if request.method == "PATCH":
        body = SettingsSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        if data.get("template_version") is not None:
            # Only this project's versions: another project's answers as one that does not exist.
            version_id = data["template_version"]
            data["template_version"] = (AnnotationTemplateVersion.objects.select_related("template")
                                        .filter(pk=version_id, template__project=project).first())
            if data["template_version"] is None:
                raise ApplicationError(f"No template version {version_id} in this project.",
                                       field="template_version")
        data["template_version"] = data.get("template_version", "unchanged")
        if "presort_reward_version" in data:
            data["presort_reward_version_id"] = data.pop("presort_reward_version")
        project = workflow_services.project_update_settings(project=project, user=request.user, **data)
    return Response(settings_data(project))


@extend_schema(request=None, responses=SettingsSerializer, summary="Archive the project (project admins)")
@api_view(["POST"])
@workflow_api("manage")
def project_archive(request: Request, project: Project) -> Response:
    return Response(settings_data(project_set_archived(project=project, archived=True)))


@extend_schema(request=None, responses=SettingsSerializer, summary="Unarchive the project (project admins)")
@api_view(["POST"])
@workflow_api("manage")
def project_unarchive(request: Request, project: Project) -> Response:
    return Response(settings_data(project_set_archived(project=project, archived=False)))


_p = "projects/<int:project_id>/"
urlpatterns = [
    path(_p + "tasks/next/", task_next, name="api-task-next"),
    path(_p + "tasks/", task_list, name="api-task-list"),
    path(_p + "tasks/<int:task_id>/", task_detail, name="api-task-detail"),
    path(_p + "tasks/<int:task_id>/submit/", task_submit, name="api-task-submit"),
    path(_p + "tasks/by-key/<path:task_key>/submit/", task_submit_by_key, name="api-task-submit-by-key"),
    path(_p + "tasks/<int:task_id>/skip/", task_skip, name="api-task-skip"),
    path(_p + "tasks/<int:task_id>/generate/edit/", task_generate_edit, name="api-task-generate-edit"),
    path(_p + "tasks/<int:task_id>/images/", task_images, name="api-task-images"),
    path(_p + "prompt-sets/", promptset_list, name="api-promptset-list"),
    path(_p + "annotations/", annotation_list, name="api-annotation-list"),
    path(_p + "annotations/export/", annotation_export_view, name="api-annotation-export"),
    path(_p + "annotations/<int:annotation_id>/", annotation_detail, name="api-annotation-detail"),
    path(_p + "annotations/<int:annotation_id>/amend/", annotation_amend, name="api-annotation-amend"),
    path(_p + "annotations/<int:annotation_id>/reject/", annotation_reject, name="api-annotation-reject"),
    path(_p + "agreement/", agreement, name="api-agreement"),
    path(_p + "settings/", project_settings, name="api-project-settings"),
    path(_p + "archive/", project_archive, name="api-project-archive"),
    path(_p + "unarchive/", project_unarchive, name="api-project-unarchive"),
    *import_urls,
]

__all__ = ["urlpatterns"]
