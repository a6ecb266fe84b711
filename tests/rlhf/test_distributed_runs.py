"""Runs with num_processes 2 through the product: a real Celery worker trains a DPO fine-tune with two gloo
ranks to a registered LoRA version; a killed rank fails the run with its reason, a retry resumes from the
last checkpoint and a cancel of that retry stops every rank after a checkpoint; bad distributed settings are
field errors. (Each launch costs its three processes' imports of torch and diffusers, so one run proves
several things.)"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from django.test import Client

from generation.models import ModelKind
from rlhf.models import FineTuneRun, RewardModelRun, RunStatus
from rlhf.runs import finetune, paths, reward
from rlhf.runs.distributed import alive, process_tree
from rlhf.training.checkpoint import latest_checkpoint, read_metadata
from tests.factories import PASSWORD, api_client_for
from tests.rlhf.conftest import build_export
from tests.workers import processes_naming

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TWO_RANKS = {"max_steps": 3, "batch_size": 4, "num_processes": 2}
ONE_PROMPT = ["a shape number 1"]


def wait_for(api, url: str, until, seconds: float = 300):
    deadline = time.monotonic() + seconds
    while not until(body := api.get(url).json()):
        assert time.monotonic() < deadline, body
        time.sleep(0.3)
    return body


def launched_pids(run: FineTuneRun, attempt: int) -> set[int]:
    """torchrun and the ranks of the run's attempt ``attempt`` (their command lines name its launch spec)."""
    return processes_naming(paths.finetune_run_dir(run) / f"attempt-{attempt}" / "launch" / "spec.json")


@pytest.mark.django_db(transaction=True)
def test_two_ranks_on_a_real_worker_register_a_lora(celery_worker_process, ranked, ml_engineer, tiny_base):
    export = build_export(ranked, ml_engineer, format="pickapic", worker=True)
    api = api_client_for(ml_engineer)
    payload = {"base_version": "tiny-base", "method": "dpo", "export": export.pk, "preset": "tiny",
               "hyperparameters": TWO_RANKS, "eval_prompts": ONE_PROMPT}
    created = api.post("/api/finetune-runs/", payload, format="json")
    assert created.status_code == 201, created.content
    body = wait_for(api, f"/api/finetune-runs/{created.json()['id']}/",
                    lambda b: b["status"] not in ("queued", "running"))
    assert body["status"] == "succeeded", body["error"]
    assert [p["step"] for p in body["history"]] == [1, 2, 3] and body["history"][0]["pairs"] == 4.0
    run = FineTuneRun.objects.get(pk=body["id"])
    assert run.config["num_processes"] == 2 and run.lineage["config"]["num_processes"] == 2
    version = run.result_version
    assert version.kind == ModelKind.LORA and version.parent == tiny_base and version.enabled
    assert (Path(version.lora_path) / "pytorch_lora_weights.safetensors").is_file()
    assert [g["label"] for g in run.eval_grids] == ["base", "final"]
    assert not launched_pids(run, 1)  # torchrun and both ranks ended with the run
    browser = Client()
    assert browser.login(username=ml_engineer.username, password=PASSWORD)
    page = browser.get(f"/ml/finetune-runs/{run.pk}/").content.decode()
    assert version.name in page and "<svg" in page  # the run page charts the ranks' metrics


def test_a_killed_rank_fails_the_run_a_retry_resumes_and_a_cancel_stops_every_rank(
    pairs_export, ml_engineer, tiny_base, model_cache
):
    run = finetune.finetune_run_create(
        user=ml_engineer, base_version=tiny_base, method="dpo", export=pairs_export, eval_prompts=ONE_PROMPT,
        hyperparameters={**TWO_RANKS, "max_steps": 200, "checkpoint_every": 2}, enqueue=False,
    )
    killed: list[int] = []

    def kill_rank_1_from_step_3(step, metrics) -> None:
        if step >= 3 and not killed:
            ranks = process_tree(os.getpid())
            victim = next(pid for pid in ranks if b"RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()
                          and b"rlhf.training.launch" in Path(f"/proc/{pid}/cmdline").read_bytes())
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    run = finetune.finetune_run_execute(run_id=run.pk, echo=kill_rank_1_from_step_3)
    assert run.status == RunStatus.FAILED and killed
    assert run.error.startswith("Training process rank 1 was killed by SIGKILL"), run.error
    assert not process_tree(os.getpid()).keys() - {os.getpid()}  # no rank, no torchrun left
    last = int(read_metadata(latest_checkpoint(paths.finetune_run_dir(run) / "attempt-1"))["step"])
    assert 2 <= last < 200 and last % 2 == 0

    # The retry resumes after that checkpoint; cancelled at its first step (as the API's cancel does), SIGTERM
    # reaches every rank, which checkpoint and exit.
    finetune.finetune_run_retry(run=run, user=ml_engineer)
    seen: list[int] = []
    pids: set[int] = set()

    def cancel_at_first_step(step, metrics) -> None:
        seen.append(step)
        if not pids:
            pids.update(launched_pids(run, 2))
            finetune.finetune_run_cancel(run=run, user=ml_engineer)

    run = finetune.finetune_run_execute(run_id=run.pk, echo=cancel_at_first_step)
    assert run.status == RunStatus.CANCELLED and run.attempts == 2, run.error
    assert seen[0] == last + 1 and seen[-1] < 200
    assert len(pids) == 3 and not alive(pids)  # torchrun and two ranks, all ended
    assert not process_tree(os.getpid()).keys() - {os.getpid()}
    stop = latest_checkpoint(paths.finetune_run_dir(run) / "attempt-2")
    assert stop is not None and last + 1 <= read_metadata(stop)["step"] < 200


def test_bad_distributed_settings_are_field_errors_and_store_nothing(
    ranked, ml_engineer, tiny_base, settings, django_capture_on_commit_callbacks
):
    settings.TRAIN_MAX_PROCESSES = 2
    settings.TRAIN_MAIN_PROCESS_IP = ""
    export = build_export(ranked, ml_engineer, format="pickapic")
    dpo = {"base_version": tiny_base.pk, "method": "dpo", "export": export.pk}
    ddpo = {"base_version": tiny_base.pk, "method": "ddpo", "project": ranked.pk, "reward": "brightness",
            "prompt_source": "project"}
    cases = [
        ("/api/finetune-runs/", {**dpo, "hyperparameters": {"num_processes": 4, "batch_size": 8}}, "num_processes",
         "a training worker has 2"),
        ("/api/finetune-runs/", {**dpo, "hyperparameters": {"num_processes": 2, "batch_size": 3}}, "num_processes",
         "does not divide the global batch (batch_size = 3)"),
        ("/api/finetune-runs/", {**dpo, "hyperparameters": {"num_processes": 2, "num_machines": 2}}, "num_machines",
         "TRAIN_MAIN_PROCESS_IP"),
        ("/api/finetune-runs/", {**dpo, "hyperparameters": {"num_processes": 0}}, "num_processes", ">= 1"),
        ("/api/finetune-runs/", {**ddpo, "hyperparameters": {"num_processes": 2, "train_batch_size": 3}},
         "num_processes", "train_batch_size = 3"),
        ("/api/reward-runs/", {"export": export.pk, "preset": "tiny",
                               "hyperparameters": {"num_processes": 2, "batch_size": 5}}, "num_processes",
         "batch_size = 5"),
        ("/api/reward-runs/", {"export": export.pk, "preset": "tiny",
                               "hyperparameters": {"num_processes": 3, "batch_size": 6}}, "num_processes",
         "a training worker has 2"),
    ]
    api = api_client_for(ml_engineer)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        for url, payload, field, words in cases:
            response = api.post(url, payload, format="json")
            assert response.status_code == 400, (payload, response.content)
            assert response.json()["field"] == field, (payload, response.json())
            assert words in response.json()["detail"], (payload, response.json())
    assert not callbacks and not FineTuneRun.objects.exists() and not RewardModelRun.objects.exists()


def test_a_reward_run_on_two_ranks_registers_a_version_with_its_evaluation(pairs_export, ml_engineer, model_cache):
    run = reward.reward_run_create(user=ml_engineer, export=pairs_export, preset="tiny",
                                   hyperparameters={"max_steps": 2, "batch_size": 4, "num_processes": 2},
                                   enqueue=False)
    steps: list[int] = []
    run = reward.reward_run_execute(run_id=run.pk, echo=lambda step, metrics: steps.append(step))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert [p["step"] for p in run.history if "loss" in p] == [1, 2] and steps[:2] == [1, 2]
    assert run.results["step"] == 2 and run.results["validation"]["pairs"] > 0
    version = run.registered_version
    assert version.path.startswith(str(model_cache)) and (Path(version.path) / "model.safetensors").is_file()
    assert not process_tree(os.getpid()).keys() - {os.getpid()}
