"""The blind arena: pairs of images of one prompt and seed from two model versions, voted A/B/tie.

Each voter sees a comparison's two images in an order drawn per (comparison, voter) from a keyed hash,
so a reload shows the same order and nobody can tell which side is which version. Results: a
head-to-head win rate with a Wilson 95% interval for every pair of versions, and a Bradley-Terry
(Elo-style) leaderboard across all the versions compared (:mod:`rlhf.loop.stats`).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef

from core import jobs
from core.exceptions import ApplicationError, PermissionDeniedError
from core.models import JobPhase
from core.tasks import enqueue_on_commit
from generation import services as generation_services
from generation import worker
from generation.models import GeneratedImage, ModelVersion
from projects.access import user_can
from projects.models import Project
from rlhf.loop import stats
from rlhf.models import Arena, ArenaComparison, ArenaGeneration, ArenaVote

logger = logging.getLogger(__name__)

ARENA_GENERATE_COMPARISONS = "rlhf.tasks.arena_generate_comparisons"


def _require(user: User, action: str, project: Project) -> None:
    """A 403 for anyone who may not do ``action`` in the project (services are called after the view's check)."""
    if not user_can(user=user, action=action, project=project):
        raise PermissionDeniedError(f"You may not {action} in project {project.name!r}.")


@transaction.atomic
def arena_create(*, project: Project, user: User | None, versions: Sequence[ModelVersion]) -> Arena:
    """Make ``project`` an arena between ``versions`` (``user=None``: trusted code)."""
    if user is not None:
        _require(user, "manage", project)
    if len({v.pk for v in versions}) < 2:
        raise ApplicationError("An arena compares at least two model versions.", field="versions")
    arena, _ = Arena.objects.get_or_create(project=project, defaults={"created_by": user})
    arena.versions.add(*versions)
    return arena


ARENA_MAX_PROMPTS = 500
ARENA_MAX_SEEDS = 8


def arena_setup(*, project: Project, user: User, versions: Sequence[ModelVersion], prompts: Sequence[str],
                seeds: Sequence[int]) -> Arena:
    """Make ``project`` an arena between ``versions`` and queue the rendering of every prompt x seed by every
    version on a gpu worker: an :class:`ArenaGeneration` job (``rlhf.tasks.arena_generate_comparisons``);
    comparisons appear as images land."""
    _require(user, "manage", project)
    if not prompts:
        raise ApplicationError("Give at least one prompt.", field="prompts")
    if len(prompts) > ARENA_MAX_PROMPTS:
        raise ApplicationError(f"At most {ARENA_MAX_PROMPTS} prompts, not {len(prompts)}.", field="prompts")
    for number, prompt in enumerate(prompts, start=1):
        if not prompt.strip() or len(prompt) > 1000:
            raise ApplicationError(f"Prompt {number}: a prompt has 1 to 1000 characters.", field="prompts")
    if not seeds or len(seeds) > ARENA_MAX_SEEDS or len(set(seeds)) != len(seeds):
        raise ApplicationError(f"Give 1 to {ARENA_MAX_SEEDS} different seeds.", field="seeds")
    if any(seed < 0 for seed in seeds):
        raise ApplicationError("Seeds are whole numbers from 0.", field="seeds")
    with transaction.atomic():
        arena = arena_create(project=project, user=user, versions=versions)
        generation = ArenaGeneration.objects.create(
            arena=arena, created_by=user, prompts=[p.strip() for p in prompts], seeds=list(seeds),
            max_attempts=settings.JOB_MAX_ATTEMPTS)
        enqueue_on_commit(ARENA_GENERATE_COMPARISONS, generation.pk)
    return arena


@transaction.atomic
def arena_comparison_add(*, arena: Arena, prompt: str, seed: int, image_a: GeneratedImage,
                         image_b: GeneratedImage) -> ArenaComparison:
    """One comparison of two images of ``prompt`` and ``seed`` by two of the arena's versions."""
    if image_a.model_version_id == image_b.model_version_id:
        raise ApplicationError("The two images must come from two model versions.", field="images")
    for image in (image_a, image_b):
        if image.seed != seed or image.prompt != prompt:
            raise ApplicationError("Both images must be of the comparison's prompt and seed.", field="images")
    if image_a.model_version_id > image_b.model_version_id:
        image_a, image_b = image_b, image_a
    comparison, _ = ArenaComparison.objects.get_or_create(
        arena=arena, prompt=prompt, seed=seed, version_a_id=image_a.model_version_id,
        version_b_id=image_b.model_version_id, defaults={"image_a": image_a, "image_b": image_b},
    )
    return comparison


def _prompt_comparisons(*, arena: Arena, user: User, versions: list[ModelVersion], prompt: str,
                        seeds: Sequence[int], params: dict[str, Any] | None,
                        tick: Callable[[], object] | None = None) -> list[ArenaComparison]:
    """Render ``prompt`` x ``seeds`` with every version (generation jobs with deterministic idempotency keys,
    run here, or waited for while another worker has them) and add a comparison for every pair of versions.
    Running it again adds nothing twice."""
    images: dict[int, dict[int, GeneratedImage]] = {}
    digest = hashlib.sha256(f"{prompt}|{list(seeds)}".encode()).hexdigest()[:40]
    for version in versions:
        job = generation_services.generation_job_create(
            user=user, model_version=version, prompt=prompt, seeds=list(seeds), params=params,
            project=arena.project, idempotency_key=f"arena-{arena.pk}-{version.pk}-{digest}",
        )
        job = worker.run_job_to_end(job.pk, tick=tick)
        if job.status != "succeeded":
            raise ApplicationError(f"Generation job {job.pk} {job.status}: {job.error}", field="generation")
        images[version.pk] = {image.seed: image for image in job.images.all()}
    return [arena_comparison_add(arena=arena, prompt=prompt, seed=seed, image_a=images[first.pk][seed],
                                 image_b=images[second.pk][seed])
            for first, second in itertools.combinations(versions, 2) for seed in seeds]


def arena_comparisons_generate(*, arena: Arena, user: User, prompts: Sequence[str], seeds: Sequence[int],
                               params: dict[str, Any] | None = None) -> list[ArenaComparison]:
    """Render every prompt x seed with every version of the arena (generation jobs run in this process,
    for commands and the bench) and add a comparison for every pair of versions."""
    versions = list(arena.versions.order_by("pk"))
    made: list[ArenaComparison] = []
    for prompt in prompts:
        made += _prompt_comparisons(arena=arena, user=user, versions=versions, prompt=prompt, seeds=seeds,
                                    params=params)
    return made


def arena_generation_execute(*, generation_id: int) -> ArenaGeneration | None:
    """The task body of an arena's rendering: claim the job, render its prompts one by one (what an earlier
    attempt rendered is found, not redone), then finish; a no-op for a job that is not queued."""
    claimed = jobs.job_claim(ArenaGeneration, generation_id, phase=JobPhase.RENDERING)
    if claimed is None:
        return ArenaGeneration.objects.filter(pk=generation_id).first()
    generation, lease = claimed
    generation = ArenaGeneration.objects.select_related("arena__project", "created_by").get(pk=generation.pk)

    def still_ours() -> None:
        if heartbeat.should_stop():
            raise jobs.LeaseLost(f"arena generation {generation_id} was taken back")

    with jobs.JobHeartbeat(lease) as heartbeat:
        try:
            if generation.created_by is None:
                raise ApplicationError("The person who set up the arena no longer exists.", field="created_by")
            versions = list(generation.arena.versions.order_by("pk"))
            total = max(1, len(generation.prompts))
            for number, prompt in enumerate(generation.prompts, start=1):
                still_ours()
                _prompt_comparisons(arena=generation.arena, user=generation.created_by, versions=versions,
                                    prompt=prompt, seeds=generation.seeds, params=generation.params, tick=still_ours)
                heartbeat.set(prompts_done=number, progress=min(0.99, number / total))
        except jobs.LeaseLost:
            return ArenaGeneration.objects.get(pk=generation_id)
        except Exception as exc:
            logger.exception("arena generation %s failed", generation_id)
            jobs.job_fail(lease, exc.message if isinstance(exc, ApplicationError) else f"{type(exc).__name__}: {exc}")
            return ArenaGeneration.objects.get(pk=generation_id)
    jobs.job_finish(lease, prompts_done=len(generation.prompts))
    return ArenaGeneration.objects.get(pk=generation_id)


def arena_generations_reap_expired() -> int:
    """Re-queue arena generations whose worker died (the retry renders only what is missing)."""
    return jobs.jobs_reap(ArenaGeneration, task_name=ARENA_GENERATE_COMPARISONS, what="rendering the arena")


def arena_generation_latest(*, arena: Arena) -> ArenaGeneration | None:
    return arena.generations.order_by("-pk").first()


def a_shown_left(*, comparison_id: int, voter_id: int) -> bool:
    """The blind order: a keyed hash of (comparison, voter), stable across reloads, unguessable."""
    digest = hashlib.sha256(f"{settings.SECRET_KEY}|arena|{comparison_id}|{voter_id}".encode()).digest()
    return digest[0] % 2 == 0


@dataclass(frozen=True)
class Matchup:
    comparison: ArenaComparison
    left: GeneratedImage
    right: GeneratedImage
    a_left: bool


def arena_next(*, arena: Arena, user: User) -> Matchup | None:
    """The next comparison ``user`` has not voted on, with its images in the voter's blind order."""
    _require(user, "annotate", arena.project)
    voted = ArenaVote.objects.filter(comparison=OuterRef("pk"), voter=user.pk)
    comparison = (ArenaComparison.objects.filter(arena=arena).filter(~Exists(voted))
                  .select_related("image_a", "image_b").order_by("pk").first())
    if comparison is None:
        return None
    a_left = a_shown_left(comparison_id=comparison.pk, voter_id=user.pk)
    left, right = (comparison.image_a, comparison.image_b) if a_left else (comparison.image_b, comparison.image_a)
    return Matchup(comparison=comparison, left=left, right=right, a_left=a_left)


@transaction.atomic
def arena_vote(*, arena: Arena, user: User, comparison_id: int, choice: str) -> ArenaVote:
    """Record ``choice`` ("left", "right" or "tie", as the voter saw it); a repeated vote returns the first."""
    _require(user, "annotate", arena.project)
    if choice not in ("left", "right", "tie"):
        raise ApplicationError("Vote left, right or tie.", field="choice")
    comparison = ArenaComparison.objects.filter(arena=arena, pk=comparison_id).first()
    if comparison is None:
        raise ApplicationError("No such comparison in this arena.", field="comparison")
    earlier = ArenaVote.objects.filter(comparison=comparison, voter=user.pk).first()
    if earlier is not None:
        return earlier
    a_left = a_shown_left(comparison_id=comparison.pk, voter_id=user.pk)
    winner = "tie" if choice == "tie" else ("a" if (choice == "left") == a_left else "b")
    try:
        with transaction.atomic():
            return ArenaVote.objects.create(comparison=comparison, voter=user, winner=winner, a_shown_left=a_left)
    except IntegrityError:  # a concurrent double click
        return ArenaVote.objects.get(comparison=comparison, voter=user.pk)


@dataclass(frozen=True)
class ArenaResults:
    leaderboard: list[dict[str, Any]]
    head_to_head: list[dict[str, Any]]
    votes: int


def arena_results(*, arena: Arena) -> ArenaResults:
    """Leaderboard (Bradley-Terry, Elo scale) and head-to-head win rates with Wilson 95% intervals."""
    rows = ArenaVote.objects.filter(comparison__arena=arena).values_list(
        "comparison__version_a_id", "comparison__version_b_id", "winner")
    votes = [stats.Vote(a, b, winner) for a, b, winner in rows]
    names = dict(ModelVersion.objects.filter(arenas=arena).values_list("pk", "name"))
    board = [{"version": names.get(row.version, row.version), "version_id": row.version,
              "rating": row.rating, "strength": row.strength, "wins": row.wins, "losses": row.losses,
              "ties": row.ties, "games": row.games} for row in stats.leaderboard(votes)]
    pairs = sorted({(v.a, v.b) for v in votes})
    h2h = []
    for a, b in pairs:
        rate = stats.head_to_head(votes, b, a)  # the newer version (higher id) against the older
        h2h.append({"version": names.get(b, b), "against": names.get(a, a), **rate.as_dict()})
    return ArenaResults(leaderboard=board, head_to_head=h2h, votes=len(votes))
