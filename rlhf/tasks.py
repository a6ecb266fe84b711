"""Celery tasks of the rlhf app, one service call each. Names starting ``train_``/``finetune_`` route to
``gpu-train``, ``training_node_`` to ``TRAIN_NODE_QUEUE``, ``score_``/``arena_`` to ``gpu``, the rest to ``default`` (``config/celery.py``).

Each task re-fetches its row, claims it under a lease (:mod:`core.jobs`) and returns early when it is not
queued. The services queue them by name (``core.tasks.enqueue_on_commit``); ``RlhfConfig.ready()`` imports
this module so the names and each kind's reaper (run by beat through ``core.tasks.run_reapers``) are
registered in every process.
"""

from __future__ import annotations

from django.conf import settings

from core.tasks import pickwise_task, register_reaper
from rlhf.datasets.services import preference_export_build, preference_exports_reap_expired
from rlhf.loop.arena import arena_generation_execute, arena_generations_reap_expired
from rlhf.loop.rounds import loop_round_execute, loop_rounds_reap_expired
from rlhf.runs.distributed import training_node_execute, training_nodes_reap_expired
from rlhf.runs.finetune import finetune_run_execute, finetune_runs_reap_expired
from rlhf.runs.reward import reward_run_execute, reward_runs_reap_expired
from rlhf.runs.scoring import image_scores_compute


@pickwise_task(name="rlhf.tasks.export_preferences")
def export_preferences(export_id: int) -> dict[str, object]:
    export = preference_export_build(export_id=export_id)
    if export is None:
        return {"export": export_id, "status": "missing"}
    return {"export": export.pk, "status": export.status, "pairs": export.pairs}


_TRAIN_LIMITS = {"time_limit": settings.CELERY_TRAIN_TIME_LIMIT,
                 "soft_time_limit": max(1, settings.CELERY_TRAIN_TIME_LIMIT - 60)}


@pickwise_task(name="rlhf.tasks.train_reward_model", **_TRAIN_LIMITS)
def train_reward_model(run_id: int) -> dict[str, object]:
    run = reward_run_execute(run_id=run_id)
    return {"run": run_id, "status": run.status if run else "missing"}


@pickwise_task(name="rlhf.tasks.finetune_model", **_TRAIN_LIMITS)
def finetune_model(run_id: int) -> dict[str, object]:
    run = finetune_run_execute(run_id=run_id)
    return {"run": run_id, "status": run.status if run else "missing"}


@pickwise_task(name="rlhf.tasks.training_node_run", **_TRAIN_LIMITS)
def training_node_run(node_id: int) -> dict[str, object]:
    """Another machine's part of a run over several machines (queue TRAIN_NODE_QUEUE, a node worker there)."""
    node = training_node_execute(node_id=node_id)
    return {"node": node_id, "status": node.status if node else "missing"}


@pickwise_task(name="rlhf.tasks.score_images")
def score_images(reward_version_id: int, image_ids: list[str], prompt: str | None = None,
                 store: bool = True) -> dict[str, object]:
    scores = image_scores_compute(reward_version_id=reward_version_id, image_ids=image_ids, prompt=prompt,
                                  store=store)
    return {"reward_version": reward_version_id, "scores": scores}


@pickwise_task(name="rlhf.tasks.finetune_loop_round", **_TRAIN_LIMITS)
def finetune_loop_round(round_id: int) -> dict[str, object]:
    """A round started from the timeline: generation, simulated annotation, export, training, evaluation."""
    loop_round = loop_round_execute(round_id=round_id)
    return {"round": round_id, "status": loop_round.status if loop_round else "missing"}


@pickwise_task(name="rlhf.tasks.arena_generate_comparisons")
def arena_generate_comparisons(generation_id: int) -> dict[str, object]:
    """Render an arena's prompts x seeds with each of its versions and add the comparisons (idempotent)."""
    generation = arena_generation_execute(generation_id=generation_id)
    return {"generation": generation_id, "status": generation.status if generation else "missing"}


# One reaper per kind of job: beat runs them all (core.tasks.run_reapers) every REAPER_INTERVAL_SECONDS.
register_reaper("rlhf.exports")(preference_exports_reap_expired)
register_reaper("rlhf.reward_runs")(reward_runs_reap_expired)
register_reaper("rlhf.finetune_runs")(finetune_runs_reap_expired)
register_reaper("rlhf.arena_generations")(arena_generations_reap_expired)
register_reaper("rlhf.loop_rounds")(loop_rounds_reap_expired)
register_reaper("rlhf.training_nodes")(training_nodes_reap_expired)
