"""Every kind of background job of rlhf survives its worker: SIGKILL a real worker mid-run, and the job's reaper
re-queues it exactly once, a fresh worker retries it and it finishes, with nothing done twice.

The workers run with a 4 s lease and a heartbeat every second, so a dead worker's lease lapses quickly; the
tests call every reaper the way beat does (``core.tasks.run_reapers``).
"""

from __future__ import annotations

import time
import uuid

import pytest
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from annotate.models import Annotation, AnnotationTask
from core.models import JobStatus
from core.tasks import run_reapers
from generation import tasks as generation_tasks
from generation.models import GenerationJob, ModelVersion
from generation.services import model_version_register
from rlhf import tasks
from rlhf.datasets.services import (
    export_directory,
    export_request_parse,
    export_root,
    preference_export_create,
)
from rlhf.loop.arena import arena_setup
from rlhf.loop.rounds import RoundConfig, loop_round_start
from rlhf.models import (
    Arena,
    ArenaComparison,
    ArenaGeneration,
    FineTuneRun,
    LoopRound,
    PreferenceExport,
    RewardModelRun,
    RewardModelVersion,
)
from rlhf.runs import finetune, paths, reward
from tests.rlhf.conftest import TINY_GENERATION, build_export
from tests.rlhf.test_loop_round import ready_to_rank
from tests.workers import KillableWorkers, route_to, wait_for

QUEUE = f"rlhf-kill-{uuid.uuid4().hex[:8]}"  # the session's shared worker never takes these jobs
LEASES = {"JOB_LEASE_SECONDS": "4", "JOB_HEARTBEAT_SECONDS": "1", "GENERATION_LEASE_SECONDS": "4"}
ONE_PROMPT = ["a shape number 1"]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    started = KillableWorkers(tmp_path_factory.mktemp("rlhf-kill") / "worker.log", QUEUE, LEASES)
    yield started
    started.close()


@pytest.fixture(autouse=True)
def _private_queue(monkeypatch):
    route_to(monkeypatch, QUEUE, tasks.export_preferences, tasks.train_reward_model, tasks.finetune_model,
             tasks.finetune_loop_round, tasks.arena_generate_comparisons, generation_tasks.run_generation)


def running(model, pk, workers):
    """The job, asserting it has not ended (a job that failed before the kill fails the test at once)."""
    row = model.objects.get(pk=pk)
    assert not row.is_finished, (row.status, row.error, workers.log_tail())
    return row


def kill_reap_and_retry(workers, model, pk, *, reaper: str, before_retry=None):
    """SIGKILL the worker running job ``pk``; once its lease lapses the reapers re-queue it (exactly once) and
    a fresh worker finishes it. Returns the finished job."""
    workers.kill()
    if before_retry is not None:
        before_retry()
    job = model.objects.get(pk=pk)
    assert job.status == JobStatus.RUNNING and job.attempts == 1, (job.status, job.error, workers.log_tail())
    wait_for(lambda: model.objects.get(pk=pk).lease_expires_at < timezone.now(), 30, "the dead worker's lease")
    reaped = run_reapers()
    assert reaped[reaper] == 1, reaped
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.lease_token is None and job.attempts == 1
    assert run_reapers()[reaper] == 0  # nothing left to reap: it is queued once
    workers.current()
    beat = {"at": time.monotonic()}

    def finished():
        if time.monotonic() - beat["at"] > 2:  # beat's reapers go on running (jobs the dead worker had started)
            beat["at"] = time.monotonic()
            run_reapers()
        row = model.objects.get(pk=pk)
        return row.is_finished and row

    done = wait_for(finished, 300, "the retried job", poll=0.2)
    assert done.status == JobStatus.SUCCEEDED, (done.error, workers.log_tail())
    assert done.attempts == 2  # retried exactly once: the live worker's heartbeats kept the reapers off it
    assert {entry["attempt"] for entry in done.progress_history} == {1, 2}
    return done


def test_a_reward_run_survives_its_worker(workers, ranked, ml_engineer):
    export = build_export(ranked, ml_engineer, format="pickapic")
    workers.current()
    run = reward.reward_run_create(user=ml_engineer, export=export, hyperparameters={
        "max_steps": 40, "epochs": 10, "batch_size": 8, "checkpoint_every": 5})
    wait_for(lambda: running(RewardModelRun, run.pk, workers).step >= 5, 300, "five training steps")
    done = kill_reap_and_retry(workers, RewardModelRun, run.pk, reaper="rlhf.reward_runs")
    steps = [point["step"] for point in done.history if "loss" in point]
    assert steps == sorted(set(steps)) and steps[-1] == 40 == done.step  # every step once, resumed, not redone
    assert RewardModelVersion.objects.filter(run=done).count() == 1
    # The retry worked in a directory of its own, seeded from the dead attempt's checkpoints (now removed).
    assert [path.name for path in paths.reward_run_dir(done).iterdir()] == ["attempt-2"]


def test_a_finetune_run_survives_its_worker(workers, ranked, ml_engineer, tiny_base):
    export = build_export(ranked, ml_engineer, format="pickapic")
    workers.current()
    run = finetune.finetune_run_create(user=ml_engineer, base_version=tiny_base, method="dpo", export=export,
                                       hyperparameters={"max_steps": 12, "batch_size": 4, "checkpoint_every": 4},
                                       eval_prompts=ONE_PROMPT)
    wait_for(lambda: any(grid["label"] == "step-4" for grid in running(FineTuneRun, run.pk, workers).eval_grids),
             300, "checkpoint 4 and its grid")
    done = kill_reap_and_retry(workers, FineTuneRun, run.pk, reaper="rlhf.finetune_runs")
    assert [grid["label"] for grid in done.eval_grids] == ["base", "step-4", "step-8", "final"]
    assert [point["step"] for point in done.history] == list(range(1, 13))
    assert ModelVersion.objects.filter(name__startswith=f"{tiny_base.name}-dpo-{run.pk}").count() == 1
    assert done.result_version.name == f"{tiny_base.name}-dpo-{run.pk}"
    assert [path.name for path in paths.finetune_run_dir(done).iterdir()] == ["attempt-2"]


def test_an_export_survives_its_worker(workers, ranked, ml_engineer):
    workers.current()
    # A second connection holds the rankings' table, so the worker that claims the export stops mid-build
    # (claimed, its heartbeat running, waiting to read the rankings); it is killed there.
    holder = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        holder.set_autocommit(False)
        with holder.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {Annotation._meta.db_table} IN ACCESS EXCLUSIVE MODE")  # noqa: S608
        export = preference_export_create(project=ranked, user=ml_engineer, request=export_request_parse(
            {"format": "pickapic", "split_train": 0.6, "split_validation": 0.2, "split_test": 0.2}))
        wait_for(lambda: running(PreferenceExport, export.pk, workers).status == JobStatus.RUNNING, 120,
                 "the worker to claim the export")
        done = kill_reap_and_retry(workers, PreferenceExport, export.pk, reaper="rlhf.exports",
                                   before_retry=holder.rollback)
    finally:
        holder.close()
    assert done.pairs > 0 and len(done.content_hash) == 64
    directory = export_directory(done)
    assert (directory / "pairs.parquet").is_file() and directory.name == done.content_hash
    assert not list((export_root() / "building").glob(f"{done.pk}-attempt-*"))  # the killed attempt's files too


def test_an_arena_generation_survives_its_worker(workers, project, admin_user, tiny_base, tiny_base_dir):
    other = model_version_register(name="tiny-other", source=str(tiny_base_dir), dtype="float32",
                                   **{**TINY_GENERATION, "guidance": 2.0})
    prompts = [f"a red circle number {n}" for n in range(6)]
    workers.current()
    arena_setup(project=project, user=admin_user, versions=[tiny_base, other], prompts=prompts, seeds=[3, 4])
    arena = Arena.objects.get(project=project)
    generation = ArenaGeneration.objects.get(arena=arena)
    wait_for(lambda: running(ArenaGeneration, generation.pk, workers)
             and ArenaComparison.objects.filter(arena=arena).count() >= 2, 300, "the first prompt's comparisons")
    done = kill_reap_and_retry(workers, ArenaGeneration, generation.pk, reaper="rlhf.arena_generations")
    assert done.prompts_done == len(prompts)
    pairs = list(ArenaComparison.objects.filter(arena=arena).values_list("prompt", "seed"))
    assert sorted(pairs) == sorted((prompt, seed) for prompt in prompts for seed in (3, 4))  # each exactly once
    assert GenerationJob.objects.filter(project=project).count() == 2 * len(prompts)  # no job made twice


def test_a_loop_round_survives_its_worker(workers, project, admin_user, tiny_base):
    ready_to_rank(project, admin_user)
    config = RoundConfig(prompts=3, images_per_prompt=4, annotators=1, preference="brighter", method="dpo",
                         hyperparameters={"max_steps": 6, "batch_size": 4, "checkpoint_every": 2}, eval_prompts=0)
    workers.current()
    loop_round = loop_round_start(project=project, user=admin_user, config=config, start_version=tiny_base)

    def fine_tuning() -> bool:
        row = running(LoopRound, loop_round.pk, workers)
        return row.finetune_run is not None and row.finetune_run.step >= 2

    wait_for(fine_tuning, 300, "the round to fine-tune")
    inner = LoopRound.objects.get(pk=loop_round.pk).finetune_run_id
    done = kill_reap_and_retry(workers, LoopRound, loop_round.pk, reaper="rlhf.loop_rounds")
    assert done.stage == LoopRound.Stage.DONE and done.finetune_run_id == inner  # carried on, not started over
    assert AnnotationTask.objects.filter(project=project).count() == 3  # no caption made a task twice
    assert GenerationJob.objects.filter(project=project).count() == 3
    run = FineTuneRun.objects.get(pk=inner)
    assert run.status == JobStatus.SUCCEEDED and done.output_version == run.result_version
    assert [point["step"] for point in run.history] == list(range(1, 7))
