"""Reward-model runs, reward models (with scoring) and fine-tune runs over the API.

Only ML engineers and admins of a run's project may see, start or cancel it, or score with its
reward model: non-members get 404, other members 403. Bad input is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import HidesServerPaths, JobProgressFields
from core.exceptions import ApplicationError
from core.parsing import parse_id, path_id, query_id
from core.schema import id_field, id_parameter
from core.tasks import registered_task
from generation.models import ModelVersion
from projects.access import outcome_for, project_check
from projects.models import Project
from rlhf.models import FineTuneRun, PreferenceExport, RewardModelRun, RewardModelVersion
from rlhf.runs import finetune, reward, scoring
from rlhf.runs import selectors as run_selectors

SCORE_TIMEOUT_S = 60  # the scoring endpoint waits this long for the gpu worker's answer


def _path_id(value: Any) -> int:
    """The ``{id}`` of a run or reward model; anything that is not an id is no such object (404)."""
    number = path_id(value)
    if number is None:
        raise Http404("No such object")
    return number


def _export(request: Request, export_id: Any) -> PreferenceExport | None:
    """The export named in the body. One of a project where the caller may not even view is answered
    as if it did not exist (400 on ``export``); a member who may not train gets 403."""
    if export_id in (None, ""):
        return None
    export = (PreferenceExport.objects.select_related("project")
              .filter(pk=parse_id(export_id, field="export")).first())
    if export is None or outcome_for(user=request.user, project=export.project, action="view") != "ok":
        raise ApplicationError(f"No export {export_id}.", field="export")
    project_check(user=request.user, project=export.project, action="train")
    return export


class RewardRunSerializer(HidesServerPaths, JobProgressFields, serializers.ModelSerializer):
    registered_version = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = RewardModelRun
        fields = ["id", "project", "export", "name", "backbone", "preset", "config", "status", "phase",
                  "phase_label", "eta_seconds", "progress", "step", "total_steps", "history", "last_metrics",
                  "results", "error", "attempts", "registered_version", "created_at", "started_at", "finished_at"]
        read_only_fields = fields


class RewardRunCreateSerializer(serializers.Serializer):
    """Each field is validated by ``reward_run_create`` (a 400 names the field)."""

    export = id_field()
    backbone = serializers.CharField(required=False, allow_blank=True, default="")  # "": the preset's own
    preset = serializers.CharField(required=False, default="tiny")
    hyperparameters = serializers.DictField(required=False, default=dict)
    name = serializers.CharField(required=False, allow_blank=True, default="")


class RewardRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Reward-model training runs of the projects where the caller may train."""

    serializer_class = RewardRunSerializer
    permission_classes = [permissions.IsAuthenticated]
    queryset = RewardModelRun.objects.none()

    def get_queryset(self) -> QuerySet[RewardModelRun]:
        return run_selectors.reward_runs_for_user(user=self.request.user)

    def get_object(self) -> RewardModelRun:
        try:
            run = run_selectors.reward_run_get(run_id=_path_id(self.kwargs["pk"]))
        except RewardModelRun.DoesNotExist:
            raise Http404("No such run") from None
        run_selectors.require_train(user=self.request.user, project=run.project)
        return run

    @extend_schema(request=RewardRunCreateSerializer, responses={201: RewardRunSerializer})
    def create(self, request: Request) -> Response:
        payload = RewardRunCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        run = reward.reward_run_create(
            user=request.user, export=_export(request, data["export"]), backbone=data["backbone"],
            preset=data["preset"], hyperparameters=data["hyperparameters"], name=data["name"],
        )
        return Response(RewardRunSerializer(run, context=self.get_serializer_context()).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=RewardRunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        return Response(RewardRunSerializer(reward.reward_run_cancel(run=self.get_object(), user=request.user),
                                           context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses=RewardRunSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        return Response(RewardRunSerializer(reward.reward_run_retry(run=self.get_object(), user=request.user),
                                           context=self.get_serializer_context()).data)


class RewardVersionSerializer(HidesServerPaths, serializers.ModelSerializer):
    class Meta:
        model = RewardModelVersion
        fields = ["id", "name", "project", "run", "export", "path", "metrics", "description", "created_at"]
        read_only_fields = fields


class ScoreRequestSerializer(serializers.Serializer):
    prompt = serializers.CharField(required=False, allow_blank=True, default="",
                                   help_text="Score every image under this prompt; empty: each image's own prompt")
    image_ids = serializers.ListField(child=serializers.CharField(max_length=100), allow_empty=False, max_length=500)
    background = serializers.BooleanField(required=False, default=False,
                                          help_text="Queue scoring under the images' own prompts and return at once")


class RewardVersionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Registered reward models; ``score`` rates images with one."""

    serializer_class = RewardVersionSerializer
    permission_classes = [permissions.IsAuthenticated]
    queryset = RewardModelVersion.objects.none()

    def get_queryset(self) -> QuerySet[RewardModelVersion]:
        return run_selectors.reward_versions_for_user(user=self.request.user)

    def get_object(self) -> RewardModelVersion:
        try:
            version = run_selectors.reward_version_get(version_id=_path_id(self.kwargs["pk"]))
        except RewardModelVersion.DoesNotExist:
            raise Http404("No such reward model") from None
        run_selectors.require_train(user=self.request.user, project=version.project)
        return version

    @extend_schema(
        request=ScoreRequestSerializer,
        responses={200: inline_serializer("RewardScores", {
            "reward_model": serializers.IntegerField(),
            "scores": serializers.ListField(child=inline_serializer("ImageRewardScore", {
                "image_id": serializers.CharField(), "score": serializers.FloatField()})),
        }), 202: inline_serializer("RewardScoresQueued", {"queued": serializers.ListField(
            child=serializers.CharField())})},
    )
    @action(detail=True, methods=["post"])
    def score(self, request: Request, pk: str | None = None) -> Response:
        """Scores of images the caller may see; computed by the gpu worker (``rlhf.tasks.score_images``)."""
        version = self.get_object()
        payload = ScoreRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        if data["background"]:
            queued = scoring.image_scores_request(user=request.user, reward_version=version,
                                                       image_ids=data["image_ids"])
            return Response({"queued": queued}, status=status.HTTP_202_ACCEPTED)
        images = scoring.images_for_scoring(user=request.user, image_ids=data["image_ids"])
        scoring.check_sources_for(version, images)  # a model conditioned on the source scores image edits only
        ids = [str(image.pk) for image in images]
        pending = registered_task(scoring.SCORE_IMAGES).apply_async(args=[version.pk, ids], kwargs={"prompt": data["prompt"] or None,
                                                                           "store": not data["prompt"]})
        try:
            result = pending.get(timeout=SCORE_TIMEOUT_S)
        except CeleryTimeoutError:
            return Response({"detail": "The scoring worker did not answer in time; try again or use background "
                                       "scoring."}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        scores = result["scores"]
        return Response({"reward_model": version.pk,
                         "scores": [{"image_id": image_id, "score": scores[image_id]} for image_id in ids]})


class FineTuneRunSerializer(HidesServerPaths, JobProgressFields, serializers.ModelSerializer):
    result_version = serializers.SlugRelatedField(slug_field="name", read_only=True)
    base_version = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = FineTuneRun
        fields = ["id", "project", "name", "base_version", "method", "export", "reward_name", "reward_version",
                  "prompt_source", "preset", "config", "eval_prompts", "eval_seeds", "status", "phase", "phase_label",
                  "eta_seconds", "progress", "step", "total_steps", "history", "last_metrics", "eval_grids", "lineage",
                  "result_version", "error", "attempts", "created_at", "started_at", "finished_at"]
        read_only_fields = fields


class FineTuneRunCreateSerializer(serializers.Serializer):
    """Each field is validated by ``finetune_run_create`` (a 400 names the field)."""

    base_version = serializers.CharField(help_text="Model version id or name to start from: a base version (a "
                                                   "fresh LoRA) or an enabled LoRA version on one (trained further)")
    method = serializers.CharField(help_text="dpo or ddpo")
    project = id_field(required=False, allow_null=True, default=None)
    export = id_field(required=False, allow_null=True, default=None)
    reward = serializers.CharField(required=False, allow_blank=True, default="",
                                   help_text="DDPO: a built-in reward (brightness, jpeg_compressibility)")
    reward_version = id_field(required=False, allow_null=True, default=None,
                                              help_text="DDPO: a registered reward model's id")
    prompt_source = serializers.CharField(required=False, allow_blank=True, default="",
                                          help_text="DDPO: project or export")
    preset = serializers.CharField(required=False, default="tiny")
    hyperparameters = serializers.DictField(required=False, default=dict)
    eval_prompts = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    name = serializers.CharField(required=False, allow_blank=True, default="")


def _base_version(value: str) -> ModelVersion:
    value = str(value).strip()
    query = (ModelVersion.objects.filter(pk=parse_id(value, field="base_version"))
             if value.isascii() and value.isdigit() else ModelVersion.objects.filter(name=value))
    version = query.first()
    if version is None:
        raise ApplicationError(f"No model version {value!r}.", field="base_version")
    return version


def _reward_version(request: Request, value: int | None) -> RewardModelVersion | None:
    if value is None:
        return None
    version = (RewardModelVersion.objects.select_related("project")
               .filter(pk=parse_id(value, field="reward_version")).first())
    if version is None or outcome_for(user=request.user, project=version.project, action="view") != "ok":
        raise ApplicationError(f"No reward model {value}.", field="reward_version")
    run_selectors.require_train(user=request.user, project=version.project)
    return version


def _project(request: Request, value: int | None) -> Project | None:
    if value is None:
        return None
    project = Project.objects.filter(pk=parse_id(value, field="project")).first()
    if project is None or outcome_for(user=request.user, project=project, action="view") != "ok":
        raise ApplicationError(f"No project {value}.", field="project")
    project_check(user=request.user, project=project, action="train")
    return project


class FineTuneRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """LoRA fine-tunes (Diffusion-DPO or DDPO) of the projects where the caller may train."""

    serializer_class = FineTuneRunSerializer
    permission_classes = [permissions.IsAuthenticated]
    queryset = FineTuneRun.objects.none()

    def get_queryset(self) -> QuerySet[FineTuneRun]:
        queryset = run_selectors.finetune_runs_for_user(user=self.request.user)
        project = query_id(self.request.query_params, "project")
        return queryset.filter(project_id=project) if project is not None else queryset

    def get_object(self) -> FineTuneRun:
        try:
            run = run_selectors.finetune_run_get(run_id=_path_id(self.kwargs["pk"]))
        except FineTuneRun.DoesNotExist:
            raise Http404("No such run") from None
        run_selectors.require_train(user=self.request.user, project=run.project)
        return run

    @extend_schema(parameters=[id_parameter("project", "Only this project's runs")])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=FineTuneRunCreateSerializer, responses={201: FineTuneRunSerializer})
    def create(self, request: Request) -> Response:
        payload = FineTuneRunCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        project = _project(request, data["project"])
        export = _export(request, data["export"])
        reward_version = _reward_version(request, data["reward_version"])
        run = finetune.finetune_run_create(
            user=request.user, base_version=_base_version(data["base_version"]), method=data["method"],
            project=project, export=export, reward_name=data["reward"], reward_version=reward_version,
            prompt_source=data["prompt_source"], preset=data["preset"], hyperparameters=data["hyperparameters"],
            eval_prompts=data["eval_prompts"], name=data["name"],
        )
        return Response(FineTuneRunSerializer(run, context=self.get_serializer_context()).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=FineTuneRunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        return Response(FineTuneRunSerializer(finetune.finetune_run_cancel(run=self.get_object(), user=request.user),
                                             context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses=FineTuneRunSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        return Response(FineTuneRunSerializer(finetune.finetune_run_retry(run=self.get_object(), user=request.user),
                                             context=self.get_serializer_context()).data)
