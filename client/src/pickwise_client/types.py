"""The shapes of the objects the API returns, as ``TypedDict`` s (plain dicts at run time).

They follow the server's serializers (``/api/schema/``); a newer server may send more keys.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
ExportFormat = Literal["pickapic", "listwise", "jsonl", "hf", "trl"]
EXPORT_FORMATS: tuple[str, ...] = ("pickapic", "listwise", "jsonl", "hf", "trl")

# A ranking: tie groups of image ids, best first. [["a"], ["b", "c"], ["d"]] means a beat b and c
# (tied), which beat d.
Ranking = list[list[str]]


class Me(TypedDict):
    id: int
    username: str
    roles: list[str]
    permissions: dict[str, bool]


class Project(TypedDict):
    id: int
    name: str
    description: str
    archived_at: str | None
    created_at: str
    role: str | None  # your role in the project: admin, annotator or ml_engineer
    instructions: str
    template_version: int | None
    images_per_task: int
    overlap: int
    task_order: str
    gold_rate: float
    lease_seconds: int


class ProjectSettings(TypedDict):
    id: int
    name: str
    description: str
    instructions: str
    template_version: int | None
    images_per_task: int
    overlap: int
    task_order: str
    gold_rate: float
    lease_seconds: int
    generation_settings: dict[str, Any]
    model_versions: list[int]
    presort_reward_version: int | None
    archived_at: str | None


class SettingsChanges(TypedDict, total=False):
    """The settings ``projects.update_settings`` may change; the keys you give are sent."""

    description: str
    instructions: str
    template_version: int | None
    images_per_task: int
    overlap: int
    task_order: Literal["sequential", "random"]
    gold_rate: float
    lease_seconds: int
    generation_settings: dict[str, Any]
    model_version_ids: list[int]
    presort_reward_version: int | None


MemberRole = Literal["admin", "annotator", "ml_engineer"]
MEMBER_ROLES: tuple[str, ...] = ("admin", "annotator", "ml_engineer")


class Member(TypedDict):
    user_id: int
    username: str
    role: MemberRole


class LeaderboardRow(TypedDict):
    model_version: str  # the version's name
    model_version_id: int
    strength: float  # Bradley-Terry strength; the versions' geometric mean is 1
    rating: float  # the strength on the Elo scale: 1000 + 400 log10(strength)
    wins: int
    losses: int
    ties: int


class HeadToHead(TypedDict):
    a: str  # the newer version of the pair
    b: str
    a_wins: int
    b_wins: int
    ties: int
    win_rate: float  # a's, ties counting half
    ci_low: float  # Wilson 95% interval
    ci_high: float
    votes: int


class ArenaResults(TypedDict):
    votes: int
    leaderboard: list[LeaderboardRow]  # best first
    head_to_head: list[HeadToHead]


class PromptSet(TypedDict):
    id: int
    name: str
    source_format: str
    prompt_count: int
    duplicate_count: int
    created_by: str | None
    created_at: str


class Duplicate(TypedDict):
    line: int
    text: str
    first_line: int | None  # the earlier line of the same file; None when the project already had it


class PromptImport(TypedDict):
    prompt_set: int
    created: int
    duplicates: list[Duplicate]


class TaskImage(TypedDict):
    id: str
    url: str
    position: int


class Task(TypedDict):
    id: int
    prompt: str
    negative_prompt: str
    prompt_set: int | None
    position: int
    is_gold: bool
    gold_ranking: Ranking | None
    taken_count: int
    is_open: bool
    submitted_count: int
    images: list[TaskImage]
    created_at: str


class RankingRules(TypedDict):
    mode: Literal["full", "best_of_n", "pairwise"]
    allow_ties: bool
    allow_partial: bool


class Handout(TypedDict):
    """A task leased to you by ``tasks.next`` (or handed out by ``tasks.submit``)."""

    assignment_id: int
    task_id: int
    task_key: str  # the task's own key from its import ("" when none)
    task_metadata: dict[str, Any]  # the task's metadata columns from its import
    prompt: str
    negative_prompt: str
    is_gold: bool
    images: list[TaskImage]
    template_version: int | None
    ranking_rules: RankingRules
    lease_expires_at: str
    idempotency_key: str


class Annotation(TypedDict):
    id: int
    task: int
    annotator: str  # absent from the answer to your own submit
    status: Literal["submitted", "superseded", "rejected"]
    ranking: Ranking
    answers: dict[str, Any]
    rationale: str
    duration_ms: int | None
    template_version: int | None
    supersedes: int | None
    idempotency_key: str
    review_note: str
    created_at: str


class TemplateVersion(TypedDict):
    id: int
    template: int
    number: int
    status: Literal["draft", "published"]
    schema: dict[str, Any]
    published_at: str | None
    created_at: str
    updated_at: str


class VersionRef(TypedDict):
    id: int
    number: int
    status: str


class Template(TypedDict):
    id: int
    project: int
    name: str
    description: str
    latest_version: TemplateVersion | None
    versions: list[VersionRef]
    created_at: str
    updated_at: str


class TemplateValidation(TypedDict):
    valid: bool
    errors: list[dict[str, Any]]


class ModelVersion(TypedDict):
    id: int
    name: str
    description: str
    kind: str
    parent: str | None
    dtype: str
    default_scheduler: str
    default_steps: int
    default_guidance: float
    default_width: int
    default_height: int
    default_negative_prompt: str


class GeneratedImage(TypedDict):
    id: str
    index: int
    url: str
    seed: int
    sha256: str
    width: int
    height: int
    params: dict[str, Any]
    model_version: str
    generation_seconds: float
    batch_size: int
    runtime: dict[str, Any]


class GenerationJob(TypedDict):
    id: int
    status: RunStatus
    finished: bool
    progress: float
    queue_position: int
    attempts: int
    error: str
    prompt: str
    model_version: str
    project: int | None
    num_images: int
    seeds: list[int]
    params: dict[str, Any]
    images: list[GeneratedImage]


class Export(TypedDict):
    id: int
    project: int
    name: str
    format: ExportFormat
    tie_policy: str
    weight_per_prompt: bool
    include_images: bool
    filters: dict[str, Any]
    status: RunStatus
    progress: float  # 0..1
    counts: dict[str, int]
    split_counts: dict[str, int]
    content_hash: str
    error: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    download_url: str | None


class RewardRun(TypedDict):
    id: int
    project: int
    export: int
    name: str
    backbone: str
    preset: str
    config: dict[str, Any]
    status: RunStatus
    progress: float
    step: int
    total_steps: int
    history: list[dict[str, Any]]  # metrics by step ({"step": 3, "loss": ..., ...}), thinned on long runs
    last_metrics: dict[str, Any]
    results: dict[str, Any]
    error: str
    attempts: int
    registered_version: int | None  # the RewardModel registered when the run succeeded
    created_at: str
    started_at: str | None
    finished_at: str | None


class RewardModel(TypedDict):
    id: int
    name: str
    project: int
    run: int | None
    export: int | None
    path: str
    metrics: dict[str, Any]
    description: str
    created_at: str


class ImageScore(TypedDict):
    image_id: str
    score: float


class RewardScores(TypedDict):
    reward_model: int
    scores: list[ImageScore]


class FineTuneRun(TypedDict):
    id: int
    project: int
    name: str
    base_version: str
    method: Literal["dpo", "ddpo"]
    export: int | None
    reward_name: str
    reward_version: int | None
    prompt_source: str
    preset: str
    config: dict[str, Any]
    eval_prompts: list[str]
    eval_seeds: list[int]
    status: RunStatus
    progress: float
    step: int
    total_steps: int
    history: list[dict[str, Any]]
    last_metrics: dict[str, Any]
    eval_grids: list[dict[str, Any]]
    lineage: dict[str, Any]
    result_version: str | None  # the name of the LoRA model version registered when the run succeeded
    error: str
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None


WebhookEventName = Literal[
    "annotation.created", "annotation.amended", "annotation.rejected", "task.completed", "export.finished",
    "export.failed", "run.started", "run.finished", "run.failed", "model_version.registered",
    "loop_round.finished", "loop_round.failed", "ping",
]
DeliveryStatus = Literal["pending", "succeeded", "failed"]


class WebhookEvent(TypedDict):
    name: str
    description: str


class WebhookEndpoint(TypedDict):
    id: int
    url: str
    description: str
    event_types: list[str]
    is_active: bool
    disabled_at: str | None
    disabled_reason: str
    disabled_automatically: bool  # disabled after repeated failed deliveries (not by an admin)
    consecutive_failures: int
    last_success_at: str | None
    last_failure_at: str | None
    secret_hint: str  # the secret's first characters
    previous_secret_expires_at: str | None  # while a replaced secret still signs too
    deliveries_url: str
    created_at: str
    updated_at: str


class WebhookEndpointWithSecret(WebhookEndpoint):
    secret: str  # whsec_...: only in the answer of create and rotate_secret


class WebhookAttempt(TypedDict):
    number: int
    started_at: str
    succeeded: bool
    status_code: int | None
    latency_ms: int | None
    response_excerpt: str
    error: str


class WebhookDelivery(TypedDict):
    id: int
    endpoint: int
    event_type: str
    webhook_id: str  # the same on every attempt: receivers de-duplicate on it
    status: DeliveryStatus
    attempts: int
    next_attempt_at: str | None
    retry_until: str
    last_status_code: int | None
    last_latency_ms: int | None
    last_response: str
    last_error: str
    payload: dict[str, Any]  # {"type", "timestamp", "data"}: the body as sent
    created_at: str
    delivered_at: str | None
    finished_at: str | None
    attempt_log: NotRequired[list[WebhookAttempt]]  # delivery() only


class SubmittedAnnotation(TypedDict):
    """The annotation a submit stored (as its author sees it)."""

    id: int
    task: int
    status: str
    ranking: Ranking
    answers: dict[str, Any]
    rationale: str
    duration_ms: int | None
    template_version: int | None
    supersedes: int | None
    idempotency_key: str
    created_at: str


class SubmitResult(Handout):
    """What ``tasks.submit`` returns: your next task, with the annotation just stored beside it."""

    submitted: SubmittedAnnotation
    submitted_created: bool  # False when the submit was a retry that stored nothing new


class ImportProblem(TypedDict):
    """One bad row of an import: its line (row number for Parquet and datasets), column and what is wrong."""

    line: int
    column: str
    message: str


class TaskImport(TypedDict):
    """A task import (``imports.create``): its status, progress and report (``report["errors"]``)."""

    id: int
    name: str
    source_format: str
    dry_run: bool
    options: dict[str, Any]
    status: str
    progress: float
    phase: str
    rows: int
    report: dict[str, Any]
    error: str
    prompt_set: int | None
    attempts: int
    created_by: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None


class ExportedImage(TypedDict):
    id: str
    url: str
    sha256: str
    origin: str  # "generated" or "external"


class AnnotationRecord(TypedDict):
    """One row of ``annotations.stream``: an annotation with its task's key, metadata, prompt and images."""

    id: int
    task_id: int
    task_key: str
    task_metadata: dict[str, Any]
    prompt: str
    annotator: str
    status: str
    ranking: Ranking
    answers: dict[str, Any]
    rationale: str
    duration_ms: int | None
    template_version: int | None
    supersedes: int | None
    images: list[ExportedImage]
    created_at: str
    updated_at: str
