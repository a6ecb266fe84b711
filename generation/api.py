"""REST API: enabled model versions; create, poll, list and cancel generation jobs."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import HidesServerPaths
from core.exceptions import ApplicationError
from core.parsing import parse_id
from core.schema import id_field
from generation import selectors, services
from generation.inference import MAX_SEED, SCHEDULERS
from generation.models import GenerationJob, ModelVersion
from projects.access import project_get_for_user
from projects.models import Project


class ModelVersionSerializer(HidesServerPaths, serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True,
                                          help_text="A LoRA version's parent; null for a base version")

    class Meta:
        model = ModelVersion
        fields = [
            "id", "name", "description", "kind", "parent", "dtype", "default_scheduler", "default_steps",
            "default_guidance", "default_width", "default_height", "default_negative_prompt",
        ]


class ParamsSerializer(serializers.Serializer):
    scheduler = serializers.ChoiceField(choices=sorted(SCHEDULERS), required=False)
    steps = serializers.IntegerField(required=False)
    guidance = serializers.FloatField(required=False)
    width = serializers.IntegerField(required=False)
    height = serializers.IntegerField(required=False)
    negative_prompt = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)


class JobCreateSerializer(serializers.Serializer):
    prompt = serializers.CharField(trim_whitespace=True)
    model_version = serializers.CharField(help_text="Model version name or id")
    num_images = serializers.IntegerField(required=False)
    seeds = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=MAX_SEED), required=False, allow_empty=False
    )
    params = ParamsSerializer(required=False)
    project = id_field(required=False, allow_null=True)
    idempotency_key = serializers.CharField(required=False, allow_blank=True, max_length=100)


class ImageSerializer(serializers.Serializer):
    id = serializers.CharField()
    index = serializers.IntegerField()
    url = serializers.CharField()
    seed = serializers.IntegerField()
    sha256 = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    params = serializers.DictField()
    model_version = serializers.CharField()
    generation_seconds = serializers.FloatField()
    batch_size = serializers.IntegerField()
    runtime = serializers.DictField()
    edit = serializers.DictField()


class JobStatusSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    finished = serializers.BooleanField()
    progress = serializers.FloatField()
    queue_position = serializers.IntegerField()
    attempts = serializers.IntegerField()
    error = serializers.CharField()
    prompt = serializers.CharField()
    model_version = serializers.CharField()
    project = serializers.IntegerField(allow_null=True)
    num_images = serializers.IntegerField()
    seeds = serializers.ListField(child=serializers.IntegerField())
    params = serializers.DictField()
    edit_kind = serializers.CharField()
    edit = serializers.DictField()
    images = ImageSerializer(many=True)


def _model_version(value: str) -> ModelVersion:
    queryset = selectors.model_versions_enabled()
    version = (queryset.filter(pk=parse_id(value, field="model_version")).first() if value.isascii() and value.isdigit()
               else queryset.filter(name=value).first())
    if version is None:
        raise ApplicationError(f"No enabled model version {value!r}.", field="model_version")
    return version


def _project(request: Request, project_id: int | None) -> Project | None:
    if project_id is None:
        return None
    return project_get_for_user(user=request.user, project_id=project_id, action="view")


def _job(request: Request, job_id: int) -> GenerationJob:
    try:
        return selectors.job_for_user(user=request.user, job_id=job_id)
    except GenerationJob.DoesNotExist:
        raise NotFound("No such generation job") from None


@extend_schema(responses=ModelVersionSerializer(many=True))
@api_view(["GET"])
def model_version_list(request: Request) -> Response:
    """Enabled model versions and their default parameters."""
    return Response(ModelVersionSerializer(selectors.model_versions_enabled(), many=True).data)


@extend_schema(methods=["POST"], request=JobCreateSerializer, responses={201: JobStatusSerializer})
@extend_schema(methods=["GET"], responses=JobStatusSerializer(many=True))
@api_view(["GET", "POST"])
def job_list_create(request: Request) -> Response:
    """POST queues a generation job (201; 429 with Retry-After when rate limited); GET lists yours."""
    if request.method == "GET":
        jobs = selectors.jobs_for_user(user=request.user).filter(created_by=request.user)[:50]
        return Response([selectors.job_status(job) for job in jobs])
    serializer = JobCreateSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data: dict[str, Any] = serializer.validated_data
    try:
        job = services.generation_job_create(
            user=request.user,
            model_version=_model_version(data["model_version"]),
            prompt=data["prompt"],
            num_images=data.get("num_images"),
            seeds=data.get("seeds"),
            params=dict(data.get("params") or {}),
            project=_project(request, data.get("project")),
            idempotency_key=data.get("idempotency_key", ""),
        )
    except services.RateLimitedError as exc:
        return Response(exc.as_dict(), status=status.HTTP_429_TOO_MANY_REQUESTS,
                        headers={"Retry-After": str(exc.retry_after)})
    job = selectors.job_for_user(user=request.user, job_id=job.pk)
    return Response(selectors.job_status(job), status=status.HTTP_201_CREATED)


@extend_schema(responses=JobStatusSerializer)
@api_view(["GET"])
def job_detail(request: Request, job_id: int) -> Response:
    """Status, progress, queue position, error and (when done) the images with their provenance."""
    return Response(selectors.job_status(_job(request, job_id)))


@extend_schema(request=None, responses=JobStatusSerializer)
@api_view(["POST"])
def job_cancel(request: Request, job_id: int) -> Response:
    job = services.generation_job_cancel(job=_job(request, job_id), user=request.user)
    return Response(selectors.job_status(selectors.job_for_user(user=request.user, job_id=job.pk)))
