"""Runs tell the truth about where they are (phase, step k/N, ETA) on their pages and in the API, starting a run
returns at once (no training library is loaded to validate it), and nobody but a superuser sees server paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta

from django.test import Client
from django.utils import timezone

from core import jobs
from core.models import JobPhase
from rlhf.models import FineTuneRun, PreferenceExport, RewardModelRun, RewardModelVersion
from rlhf.runs import finetune, lifecycle
from tests.conftest import ROOT
from tests.factories import UserFactory, api_client_for

DPO_FAST = {"max_steps": 3, "batch_size": 4, "checkpoint_every": 2}
ONE_PROMPT = ["a shape number 1"]


def dpo(user, base, export):
    return finetune.finetune_run_create(user=user, base_version=base, method="dpo", export=export,
                                        hyperparameters=DPO_FAST, eval_prompts=ONE_PROMPT)


def test_starting_a_run_validates_without_loading_torch():
    """What made "Start training" take 18 s: building the run's config imported torch, transformers and
    diffusers into the web process. The configs are torch-free now; the worker loads the trainers."""
    code = (
        "import json, sys, django; django.setup(); import config.urls\n"
        "from pathlib import Path\n"
        "from rlhf.runs import finetune, reward\n"
        "reward.reward_config_build(backbone='tiny', preset='tiny', hyperparameters={'max_steps': 4},"
        " export_id='1', listwise=False)\n"
        "base = Path('generation/weights/shapes').resolve()\n"
        "finetune.finetune_config_build(method='dpo', preset='tiny', base_dir=base, hyperparameters={'lr': 1e-4},"
        " export_id='1', resolution=64)\n"
        "finetune.finetune_config_build(method='ddpo', preset='tiny', base_dir=base, hyperparameters={},"
        " prompts=('a red circle',), reward='brightness', resolution=64)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'diffusers', 'accelerate', 'peft')"
        " if m in sys.modules)))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,  # noqa: S603
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_a_finetune_run_goes_through_its_phases_and_the_page_follows(pairs_export, ml_engineer, tiny_base,
                                                                     model_cache):
    run = dpo(ml_engineer, tiny_base, pairs_export)
    browser = Client()
    browser.force_login(ml_engineer)
    seen: list[tuple[str, str]] = []

    def look(step, metrics):  # from inside the worker's loop: what the page says mid-run
        fragment = browser.get(f"/ml/finetune-runs/{run.pk}/", HTTP_HX_REQUEST="true").content.decode()
        body = api_client_for(ml_engineer).get(f"/api/finetune-runs/{run.pk}/").json()
        seen.append((body["phase"], body["phase_label"]))
        assert "Training" in fragment and 'data-phase="training"' in fragment

    run = finetune.finetune_run_execute(run_id=run.pk, echo=look)
    assert run.status == "succeeded", run.error
    assert seen and set(seen) == {("training", "Training")}
    phases = [entry["phase"] for entry in run.progress_history]
    assert phases == ["starting", "rendering_base", "loading_model", "training", "rendering_checkpoint",
                      "training", "rendering_final", "registering", "done"]
    assert run.phase == JobPhase.DONE


def test_the_page_and_api_show_step_and_eta_while_a_run_trains(pairs_export, ml_engineer, tiny_base):
    run = dpo(ml_engineer, tiny_base, pairs_export)
    _, lease = lifecycle.run_claim(FineTuneRun, run.pk)
    fragment = Client()
    fragment.force_login(ml_engineer)
    jobs.job_heartbeat(lease, phase=JobPhase.RENDERING_BASE, total_steps=10)
    assert "Rendering base images" in fragment.get(f"/ml/finetune-runs/{run.pk}/").content.decode()
    started = timezone.now() - timedelta(seconds=40)
    jobs.job_heartbeat(lease, phase=JobPhase.TRAINING, step=0)
    FineTuneRun.objects.filter(pk=run.pk).update(progress_history=[
        jobs.history_entry(JobPhase.TRAINING, attempt=1, at=started, step=0)])
    jobs.job_heartbeat(lease, step=4)  # 4 steps in 40 s: 60 s to go
    page = fragment.get(f"/ml/finetune-runs/{run.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert "Training: step 4 of 10" in page and re.search(r"about (1 min 0\d s|5\d s) left", page), page
    body = api_client_for(ml_engineer).get(f"/api/finetune-runs/{run.pk}/").json()
    assert (body["phase"], body["phase_label"], body["step"]) == ("training", "Training", 4)
    assert 55 <= body["eta_seconds"] <= 65


def test_nobody_but_a_superuser_sees_server_paths(pairs_export, ml_engineer, tiny_base, tiny_base_dir, model_cache):
    run = dpo(ml_engineer, tiny_base, pairs_export)
    reward_path = model_cache / "reward-models" / "reward-1"
    reward_run = RewardModelRun.objects.create(project=pairs_export.project, export=pairs_export,
                                               backbone=str(model_cache / "clip"), config={"backbone": str(model_cache)})
    RewardModelVersion.objects.create(name="rm-1", project=pairs_export.project, run=reward_run, export=pairs_export,
                                      path=str(reward_path))
    _, lease = lifecycle.run_claim(RewardModelRun, reward_run.pk)
    jobs.job_fail(lease, f"FileNotFoundError: preference export {model_cache}/pairs.parquet does not exist")
    export = PreferenceExport.objects.get(pk=pairs_export.pk)
    PreferenceExport.objects.filter(pk=export.pk).update(error=f"Could not read {model_cache}/rows")
    server_paths = (str(tiny_base_dir), str(model_cache))
    urls = [f"/ml/finetune-runs/{run.pk}/", f"/ml/reward-runs/{reward_run.pk}/", "/ml/reward-runs/",
            f"/ml/exports/{export.pk}/", f"/api/finetune-runs/{run.pk}/", f"/api/reward-runs/{reward_run.pk}/",
            f"/api/reward-models/{reward_run.registered_version.pk}/", f"/api/exports/{export.pk}/",
            "/api/model-versions/", "/api/finetune-runs/", "/api/reward-models/"]
    api, pages = api_client_for(ml_engineer), Client()
    pages.force_login(ml_engineer)
    for url in urls:
        response = (api if url.startswith("/api/") else pages).get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert not [path for path in server_paths if path in body], url
    assert "[server path]" in api.get(f"/api/finetune-runs/{run.pk}/").content.decode()
    root = UserFactory(username="root-admin", is_superuser=True, is_staff=True)
    shown = api_client_for(root).get(f"/api/finetune-runs/{run.pk}/").json()
    assert shown["config"]["base_model"] == str(tiny_base_dir)  # operators see where things are
    pages.force_login(root)
    assert str(model_cache / "clip") in pages.get(f"/ml/reward-runs/{reward_run.pk}/").content.decode()
