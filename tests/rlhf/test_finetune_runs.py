"""Fine-tune runs: DPO on a real worker registers a LoRA that generates, DDPO in-process, resume, failures,
validation, permissions, pages."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from generation import services as generation_services
from generation import worker as generation_worker
from generation.models import GeneratedImage, ModelKind, ModelVersion
from generation.selectors import model_versions_enabled
from rlhf.models import FineTuneRun, RunStatus
from rlhf.runs import finetune, grids, lifecycle, paths
from rlhf.runs import selectors as run_selectors
from tests.factories import PASSWORD, api_client_for
from tests.rlhf.conftest import build_export

DPO_FAST = {"max_steps": 3, "batch_size": 4}
ONE_PROMPT = ["a shape number 1"]  # one evaluation prompt x two seeds keeps the grids cheap
DDPO_FAST = {
    "iterations": 2,
    "prompts_per_iteration": 2,
    "images_per_prompt": 2,
    "sample_steps": 3,
    "train_batch_size": 4,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dpo(user, base, export, **kwargs):
    kwargs.setdefault("hyperparameters", DPO_FAST)
    kwargs.setdefault("eval_prompts", ONE_PROMPT)
    return finetune.finetune_run_create(
        user=user, base_version=base, method="dpo", export=export, **kwargs
    )


def generate(user, version, project, seed=7):
    """One image through the generation service and worker (here, or on the real worker if it claims it first)."""
    job = generation_services.generation_job_create(
        user=user, model_version=version, project=project, prompt="a shape number 1", seeds=[seed]
    )
    generation_worker.run_job(job.pk)
    deadline = time.monotonic() + 120
    while not job.is_finished:
        assert time.monotonic() < deadline
        time.sleep(0.2)
        job.refresh_from_db()
    assert job.status == "succeeded", job.error
    return GeneratedImage.objects.get(job=job)


@pytest.mark.django_db(transaction=True)
def test_dpo_on_a_real_worker_registers_a_lora_that_generates(
    celery_worker_process, ranked, ml_engineer, annotator, tiny_base
):
    export = build_export(ranked, ml_engineer, format="pickapic", worker=True)
    api = api_client_for(ml_engineer)
    created = api.post(
        "/api/finetune-runs/",
        {
            "base_version": "tiny-base",
            "method": "dpo",
            "export": export.pk,
            "preset": "tiny",
            "hyperparameters": DPO_FAST,
            "eval_prompts": ONE_PROMPT,
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    url = f"/api/finetune-runs/{created.json()['id']}/"
    deadline = time.monotonic() + 300
    while (body := api.get(url).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, body
        time.sleep(0.5)
    assert body["status"] == "succeeded", body["error"]
    assert body["step"] == 3 and "implicit_accuracy" in body["history"][-1]
    run = FineTuneRun.objects.get(pk=body["id"])
    assert [chart["title"] for chart in run_selectors.finetune_run_charts(run)] == [
        "DPO loss", "Implicit accuracy", "Denoising error on chosen images",
        "Preferred images against the starting model"]
    version = run.result_version
    assert version.kind == ModelKind.LORA and version.parent == tiny_base and version.enabled
    assert version.name == f"tiny-base-dpo-{run.pk}" and f"export {export.pk}" in version.description
    assert (Path(version.lora_path) / "pytorch_lora_weights.safetensors").is_file()
    assert version in model_versions_enabled()  # so it appears in the template's model Select
    assert run.lineage["base_version"]["name"] == "tiny-base" and run.lineage["export"] == export.pk
    assert [g["label"] for g in run.eval_grids] == ["base", "final"]

    base_image, lora_image = generate(ml_engineer, tiny_base, ranked), generate(ml_engineer, version, ranked)
    assert lora_image.model_version == version and base_image.sha256 != lora_image.sha256

    browser = Client()
    assert browser.login(username=ml_engineer.username, password=PASSWORD)
    page = browser.get(f"/ml/finetune-runs/{run.pk}/").content.decode()
    assert version.name in page and page.count("<img") == 2 * len(run.eval_grids[0]["images"])
    picture = browser.get(f"/ml/finetune-runs/{run.pk}/images/final/0.png")
    assert picture.status_code == 200 and picture["Content-Type"] == "image/png"
    assert browser.get(f"/ml/finetune-runs/{run.pk}/images/final/99.png").status_code == 404
    browser.logout()
    assert browser.login(username=annotator.username, password=PASSWORD)
    assert browser.get(f"/ml/finetune-runs/{run.pk}/images/final/0.png").status_code == 403


def test_ddpo_with_the_brightness_reward_in_process(ranked, ml_engineer, tiny_base, model_cache):
    run = finetune.finetune_run_create(
        user=ml_engineer,
        base_version=tiny_base,
        method="ddpo",
        project=ranked,
        reward_name="brightness",
        prompt_source="project",
        hyperparameters={**DDPO_FAST, "iterations": 1},
        eval_prompts=ONE_PROMPT,
    )
    assert len(run.config["prompts"]) == 10
    run = finetune.finetune_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert [p["step"] for p in run.history] == [1] and "reward_mean" in run.history[-1]
    assert run.result_version.parent == tiny_base and "brightness" in run.result_version.description
    assert Path(run.result_version.lora_path).is_relative_to(model_cache)


def test_ddpo_run_with_the_group_dpo_objective_trains_dpo_on_ranked_groups(
    ranked, ml_engineer, tiny_base, model_cache
):
    run = finetune.finetune_run_create(
        user=ml_engineer, base_version=tiny_base, method="ddpo", project=ranked, reward_name="brightness",
        prompt_source="project", hyperparameters={**DDPO_FAST, "objective": "group_dpo", "replay": 2},
        eval_prompts=ONE_PROMPT,
    )  # fmt: skip
    run = finetune.finetune_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert [p["step"] for p in run.history] == [1, 2]
    assert [p["pairs"] for p in run.history] == [2, 2] and [p["replayed_pairs"] for p in run.history] == [2, 4]
    assert all(0 <= p["implicit_accuracy"] <= 1 for p in run.history)
    titles = [chart["title"] for chart in run_selectors.finetune_run_charts(run)]
    assert titles == ["Mean reward", "Implicit accuracy on the replayed pairs", "DPO loss",
                      "Preferred images against the starting model"]
    assert all(math.isfinite(p["chosen_error_change"]) for p in run.history)
    assert run.result_version.parent == tiny_base


class WorkerKilled(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing marks the run failed."""


def count_renders(monkeypatch, die_on=()):
    """Record the label of every grid rendered; the first render of a label in ``die_on`` kills the worker."""
    real, rendered = grids.render_grid, []

    def render(run, base_dir, lora_dir, label, step, **kwargs):
        rendered.append(label)
        if label in die_on and rendered.count(label) == 1:
            raise WorkerKilled
        return real(run, base_dir, lora_dir, label, step, **kwargs)

    monkeypatch.setattr(grids, "render_grid", render)
    return rendered


def grid_steps(run):
    return [(g["label"], g["step"]) for g in run.eval_grids]


def cell_sources(page, run_id):
    """The grid labels of each table row's images, in column order."""
    rows = re.findall(r"<tr><td>.*?</tr>", page, flags=re.S)
    return [re.findall(rf"/ml/finetune-runs/{run_id}/images/([\w-]+)/\d+\.png", row) for row in rows]


def test_a_killed_run_resumes_from_its_last_checkpoint_when_retried(
    pairs_export, ml_engineer, tiny_base, model_cache, django_capture_on_commit_callbacks, monkeypatch
):
    rendered = count_renders(monkeypatch)
    run = dpo(
        ml_engineer,
        tiny_base,
        pairs_export,
        hyperparameters={**DPO_FAST, "max_steps": 4, "checkpoint_every": 2},
    )

    def die_at_step_3(step, metrics):
        if step == 3:
            raise WorkerKilled

    with pytest.raises(WorkerKilled):
        finetune.finetune_run_execute(run_id=run.pk, echo=die_at_step_3)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.attempts == 1
    assert grid_steps(run) == [("base", 0), ("step-2", 2)]  # checkpoint 2's grid, before the worker died
    assert (paths.finetune_run_dir(run) / "attempt-1" / "checkpoints" / "checkpoint-2").is_dir()
    # A redelivered task while the lease is live does not start a second copy; an API retry refuses too.
    assert finetune.finetune_run_execute(run_id=run.pk).attempts == 1
    with django_capture_on_commit_callbacks(execute=False):
        busy = api_client_for(ml_engineer).post(f"/api/finetune-runs/{run.pk}/retry/")
    assert busy.status_code == 400 and busy.json()["field"] == "status"
    FineTuneRun.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now())  # the worker is gone
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        retried = api_client_for(ml_engineer).post(f"/api/finetune-runs/{run.pk}/retry/")
    assert retried.status_code == 200 and len(callbacks) == 1
    seen: list[int] = []
    run = finetune.finetune_run_execute(run_id=run.pk, echo=lambda step, metrics: seen.append(step))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert seen == [3, 4] and run.attempts == 2 and [p["step"] for p in run.history] == [1, 2, 3, 4]
    # each grid rendered once, none duplicated; the last checkpoint (step 4 of 4) is the "final" grid
    assert grid_steps(run) == [("base", 0), ("step-2", 2), ("final", 4)]
    assert rendered == ["base", "step-2", "final"]


def test_a_grid_the_dead_worker_did_not_render_is_rendered_on_resume_once(
    pairs_export, ml_engineer, tiny_base, model_cache, monkeypatch
):
    rendered = count_renders(monkeypatch, die_on=["step-1"])
    hyperparameters = {**DPO_FAST, "max_steps": 2, "checkpoint_every": 1}
    run = dpo(ml_engineer, tiny_base, pairs_export, hyperparameters=hyperparameters)
    with pytest.raises(WorkerKilled):  # checkpoint 1 is on disk; the worker died rendering its grid
        finetune.finetune_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert grid_steps(run) == [("base", 0)]
    assert finetune.finetune_runs_reap_expired() == 0  # the lease is live: nothing to reap
    FineTuneRun.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now())
    assert finetune.finetune_runs_reap_expired() == 1  # re-queued (its task is queued on commit)
    run = finetune.finetune_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert grid_steps(run) == [("base", 0), ("step-1", 1), ("final", 2)]
    assert rendered == ["base", "step-1", "step-1", "final"]  # the killed try, then once on resume


def test_a_checkpoint_grid_that_fails_to_render_is_shown_as_such_and_training_goes_on(
    pairs_export, ml_engineer, tiny_base, model_cache, monkeypatch, client
):
    real = grids.render_grid

    def out_of_memory(run, base_dir, lora_dir, label, step, **kwargs):
        if label == "step-1":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(run, base_dir, lora_dir, label, step, **kwargs)

    monkeypatch.setattr(grids, "render_grid", out_of_memory)
    hyperparameters = {**DPO_FAST, "max_steps": 2, "checkpoint_every": 1}
    run = dpo(ml_engineer, tiny_base, pairs_export, hyperparameters=hyperparameters)
    run = finetune.finetune_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED and run.result_version is not None, run.error
    assert grid_steps(run) == [("base", 0), ("step-1", 1), ("final", 2)]
    failed = run.eval_grids[1]
    assert failed["images"] == [] and failed["error"].startswith("Out of memory")
    assert client.login(username=ml_engineer.username, password=PASSWORD)
    page = client.get(f"/ml/finetune-runs/{run.pk}/").content.decode()
    assert "Not rendered: Out of memory" in page and "/images/step-1/" not in page
    assert page.count("/images/final/") == page.count("/images/base/") == len(ONE_PROMPT) * 2


def test_a_training_error_after_a_checkpoint_grid_still_fails_the_run(
    pairs_export, ml_engineer, tiny_base, model_cache, monkeypatch
):
    """Only rendering is forgiven: a NaN in training (raised right after checkpoint 1's grid) fails the run."""
    run = dpo(ml_engineer, tiny_base, pairs_export, hyperparameters={**DPO_FAST, "checkpoint_every": 1})

    def diverge(step, metrics):
        if step == 2:
            raise FloatingPointError("DPO loss became nan at step 2; lower lr or beta")

    run = finetune.finetune_run_execute(run_id=run.pk, echo=diverge)
    assert run.status == RunStatus.FAILED and "diverged" in run.error and run.result_version is None
    assert grid_steps(run) == [("base", 0), ("step-1", 1)]


def test_checkpoint_grids_appear_on_the_page_while_the_run_trains(
    pairs_export, ml_engineer, tiny_base, model_cache, client
):
    prompts = ["a shape number 1", "a shape number 2"]
    run = dpo(
        ml_engineer,
        tiny_base,
        pairs_export,
        hyperparameters={**DPO_FAST, "max_steps": 3, "checkpoint_every": 1},
        eval_prompts=prompts,
    )
    assert client.login(username=ml_engineer.username, password=PASSWORD)
    url = f"/ml/finetune-runs/{run.pk}/"
    polled: list[str] = []

    def poll(step, metrics):
        if step == 2:  # checkpoint 1 and its grid are written; what the page's htmx poll gets now
            polled.append(client.get(url, HTTP_HX_REQUEST="true").content.decode())

    run = finetune.finetune_run_execute(run_id=run.pk, echo=poll)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert 'hx-trigger="every 2s"' in polled[0] and "<html" not in polled[0]
    assert cell_sources(polled[0], run.pk) == [["base", "step-1"]] * 4
    assert grid_steps(run) == [("base", 0), ("step-1", 1), ("step-2", 2), ("final", 3)]
    labels = ["base", "step-1", "step-2", "final"]
    page = client.get(url).content.decode()
    headers = re.findall(r"<th>([^<]*)", page)
    assert headers == ["Prompt", "Seed", "base", "step 1", "step 2", "final (step 3)"]
    assert cell_sources(page, run.pk) == [labels] * 4  # one row per (prompt, seed), one column per grid
    rows = re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td>", page)
    assert rows == [(p, str(seed)) for p in prompts for seed in finetune.EVAL_SEEDS]
    for grid in run.eval_grids:
        assert [(i["prompt"], str(i["seed"])) for i in grid["images"]] == rows
        for image in grid["images"]:
            served = client.get(f"{url}images/{grid['label']}/{image['index']}.png")
            assert served.status_code == 200 and served["Content-Type"] == "image/png"
            assert b"".join(served.streaming_content).startswith(b"\x89PNG")


def test_nan_fails_the_run_and_registers_nothing(pairs_export, ml_engineer, tiny_base, model_cache, monkeypatch):
    from rlhf.training import dpo as dpo_module

    def diverge(*args, **kwargs):
        raise FloatingPointError("DPO loss became nan at step 2; lower lr or beta")

    monkeypatch.setattr(dpo_module, "train_dpo", diverge)
    run = finetune.finetune_run_execute(run_id=dpo(ml_engineer, tiny_base, pairs_export).pk)
    assert run.status == RunStatus.FAILED and "diverged" in run.error and "lower lr or beta" in run.error
    assert run.result_version is None and ModelVersion.objects.filter(kind=ModelKind.LORA).count() == 0
    assert not paths.finetune_lora_dir(run, 1).exists()


def test_out_of_memory_is_named_as_such():
    import torch

    assert lifecycle.failure_reason(torch.cuda.OutOfMemoryError("CUDA out of memory")).startswith("Out of memory")
    assert lifecycle.failure_reason(RuntimeError("CUDA out of memory. Tried")).startswith("Out of memory")
    assert lifecycle.failure_reason(ValueError("bad")) == "ValueError: bad"


def test_bad_input_is_a_400_naming_the_field_and_queues_nothing(
    ranked, ml_engineer, tiny_base, tmp_path, django_capture_on_commit_callbacks
):
    from generation.tiny import build_tiny_lora

    good = build_export(ranked, ml_engineer, format="pickapic")
    empty = build_export(ranked, ml_engineer, format="pickapic", date_from="2001-01-01", date_to="2001-01-02")
    gone = generation_services.model_version_register(  # a LoRA version whose adapter files are gone
        name="tiny-lora",
        parent=tiny_base,
        lora_path=str(build_tiny_lora(Path(tiny_base.source), tmp_path / "l")),
    )
    (tmp_path / "l" / "pytorch_lora_weights.safetensors").unlink()
    hub = generation_services.model_version_register(name="hub-model", source="nobody/not-a-model")
    no_unet_dir = tmp_path / "no-unet"
    no_unet_dir.mkdir()
    (no_unet_dir / "model_index.json").write_text("{}")
    no_unet = generation_services.model_version_register(name="no-unet", source=str(no_unet_dir))
    base = {"base_version": tiny_base.pk, "method": "dpo", "export": good.pk}
    ddpo = {
        "base_version": tiny_base.pk,
        "method": "ddpo",
        "project": ranked.pk,
        "reward": "brightness",
        "prompt_source": "project",
    }
    cases = [
        ({**base, "base_version": "no-such-version"}, "base_version"),
        ({**base, "base_version": gone.pk}, "base_version"),
        ({**base, "base_version": hub.pk}, "base_version"),
        ({**base, "base_version": no_unet.pk}, "base_version"),
        ({**base, "method": "ppo"}, "method"),
        ({**base, "export": None, "project": ranked.pk}, "export"),
        ({**base, "export": empty.pk}, "export"),
        ({**base, "export": 999999}, "export"),
        ({**base, "preset": "sdxl"}, "preset"),
        ({**base, "hyperparameters": {"lr": -1}}, "lr"),
        ({**base, "hyperparameters": {"resolution": 33}}, "resolution"),
        ({**base, "hyperparameters": {"max_steps": 0}}, "max_steps"),
        ({**base, "hyperparameters": {"base_model": "/tmp"}}, "base_model"),
        ({**base, "hyperparameters": {"dpop_lambda": -1}}, "dpop_lambda"),
        ({**ddpo, "reward": ""}, "reward"),
        ({**ddpo, "reward": "aesthetics"}, "reward"),
        ({**ddpo, "reward": "", "reward_version": 999999}, "reward_version"),
        ({**ddpo, "prompt_source": "dreams"}, "prompt_source"),
        ({**ddpo, "prompt_source": "export"}, "export"),
        ({**ddpo, "hyperparameters": {"iterations": 0}}, "iterations"),
        ({**ddpo, "hyperparameters": {"objective": "grpo"}}, "objective"),
        ({**ddpo, "hyperparameters": {"objective": "group_dpo", "images_per_prompt": 1}}, "images_per_prompt"),
        ({**ddpo, "hyperparameters": {"objective": "group_dpo", "dpo_beta": 0}}, "dpo_beta"),
        ({**ddpo, "hyperparameters": {"objective": "group_dpo", "likelihood_anchor": -0.5}}, "likelihood_anchor"),
        ({**ddpo, "hyperparameters": {"dpop_lambda": 1.0}}, "dpop_lambda"),  # DDPO's policy gradient has no such loss
    ]
    api = api_client_for(ml_engineer)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        for payload, field in cases:
            response = api.post("/api/finetune-runs/", payload, format="json")
            assert response.status_code == 400, (payload, response.content)
            assert response.json()["field"] == field, (payload, response.json())
    assert not callbacks and not FineTuneRun.objects.exists()


def test_permissions_pages_and_cancel(
    pairs_export,
    ml_engineer,
    admin_user,
    annotator,
    outsider,
    tiny_base,
    client,
    model_cache,
    django_capture_on_commit_callbacks,
):
    payload = {
        "base_version": tiny_base.pk,
        "method": "dpo",
        "export": pairs_export.pk,
        "hyperparameters": DPO_FAST,
    }
    with django_capture_on_commit_callbacks(execute=False):
        assert (
            api_client_for(annotator).post("/api/finetune-runs/", payload, format="json").status_code == 403
        )
        refused = api_client_for(outsider).post("/api/finetune-runs/", payload, format="json")  # as if it did not exist
        assert (refused.status_code, refused.json()["field"]) == (400, "export")
        assert (
            api_client_for(admin_user).post("/api/finetune-runs/", payload, format="json").status_code == 201
        )
        run = dpo(ml_engineer, tiny_base, pairs_export)
    for user, expected in ((annotator, 403), (outsider, 404)):
        api = api_client_for(user)
        assert api.get(f"/api/finetune-runs/{run.pk}/").status_code == expected
        assert api.post(f"/api/finetune-runs/{run.pk}/cancel/").status_code == expected
        assert api.post(f"/api/finetune-runs/{run.pk}/retry/").status_code == expected
        assert api.get("/api/finetune-runs/").json()["results"] == []
        browser = Client()
        assert browser.login(username=user.username, password=PASSWORD)
        assert browser.get(f"/ml/finetune-runs/{run.pk}/").status_code == expected
        assert browser.post(f"/ml/finetune-runs/{run.pk}/cancel/").status_code == expected
        assert (
            browser.get(f"/ml/projects/{pairs_export.project_id}/finetune-runs/new/").status_code == expected
        )

    assert client.login(username=ml_engineer.username, password=PASSWORD)
    full = client.get(f"/ml/finetune-runs/{run.pk}/").content.decode()
    assert "<html" in full and 'hx-trigger="every 2s"' in full
    fragment = client.get(f"/ml/finetune-runs/{run.pk}/", HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and "<html" not in fragment.content.decode()
    assert client.post(f"/ml/finetune-runs/{run.pk}/cancel/").status_code == 303
    done = client.get(f"/ml/finetune-runs/{run.pk}/", HTTP_HX_REQUEST="true")
    assert done.status_code == 286 and b"hx-trigger" not in done.content
    assert (
        finetune.finetune_run_execute(run_id=run.pk).status == RunStatus.CANCELLED
    )  # no-op once finished
    url = f"/ml/projects/{pairs_export.project_id}/finetune-runs/new/"
    assert client.get(url).status_code == 200
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        ok = client.post(
            url,
            {
                "base_version": tiny_base.pk,
                "method": "dpo",
                "export": pairs_export.pk,
                "preset": "tiny",
                "hyperparameters": "max_steps = 2",
            },
        )
        bad = client.post(
            url,
            {"base_version": tiny_base.pk, "method": "ddpo", "preset": "tiny", "prompt_source": "project"},
        )
    assert ok.status_code == 303 and len(callbacks) == 1
    assert bad.status_code == 400 and "Unknown reward" in bad.content.decode()
    assert client.get("/ml/finetune-runs/").status_code == 200


def test_management_command_fine_tunes_in_process(ranked, tiny_base, model_cache, capsys):
    from django.core.management import CommandError, call_command

    call_command(
        "finetune",
        "--base",
        "tiny-base",
        "--method",
        "ddpo",
        "--project",
        str(ranked.pk),
        "--reward",
        "brightness",
        "--prompt-source",
        "project",
        "--set",
        "iterations=1",
        "--set",
        "prompts_per_iteration=2",
        "--set",
        "images_per_prompt=2",
        "--set",
        "sample_steps=2",
        "--set",
        "train_batch_size=4",
    )
    assert "succeeded" in capsys.readouterr().out
    assert FineTuneRun.objects.get().result_version.name.startswith("tiny-base-ddpo-")
    ModelVersion.objects.filter(pk=FineTuneRun.objects.get().result_version.pk).update(enabled=False)
    with pytest.raises(CommandError, match="base_version.*disabled"):
        call_command(
            "finetune",
            "--base",
            "tiny-base-ddpo-" + str(FineTuneRun.objects.get().pk),
            "--method",
            "ddpo",
            "--reward",
            "brightness",
            "--prompt-source",
            "project",
            "--project",
            str(ranked.pk),
        )


def test_runs_train_at_the_base_versions_native_size_unless_told_otherwise(pairs_export, ml_engineer, tiny_base_dir,
                                                                          model_cache):
    wide = generation_services.model_version_register(name="tiny-48", source=str(tiny_base_dir), dtype="float32",
                                                      width=48, height=48)
    assert dpo(ml_engineer, wide, pairs_export, hyperparameters={}).config["resolution"] == 48
    assert dpo(ml_engineer, wide, pairs_export, hyperparameters={"resolution": 32}).config["resolution"] == 32
    ddpo = finetune.finetune_run_create(user=ml_engineer, base_version=wide, method="ddpo",
                                            project=pairs_export.project, reward_name="brightness",
                                            prompt_source="project", enqueue=False)
    assert ddpo.config["resolution"] == 48
