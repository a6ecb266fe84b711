"""The client and the CLI driving what real Celery workers do: exports (wait, streamed download, pandas,
datasets, `pickwise export -o out.parquet`), reward runs (cancel, `runs retry`, watch, `runs watch`, score)
and a DPO fine-tune (`train finetune --wait`) whose LoRA then generates images for a new task."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pandas as pd
import pytest
from pickwise_client import JobFailedError, PermissionDeniedError, ValidationError
from pickwise_client.cli import ExitCode, app
from typer.testing import CliRunner

from tests.client.conftest import token_for
from tests.rlhf.conftest import build_export, seed_filling_every_split

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.django_db(transaction=True)]

REWARD_FAST = {"max_steps": 4, "batch_size": 8}


def cli(live_server, user, *args: str):
    env = {"PICKWISE_URL": live_server.url, "PICKWISE_TOKEN": token_for(user)}
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def test_an_export_is_waited_for_downloaded_and_opened(celery_worker_process, live_server, ranked, ml_api,
                                                       annotator_api, ml_engineer, tmp_path):
    with pytest.raises(ValidationError) as invalid:
        ml_api.exports.create(ranked.pk, "parquet")
    assert invalid.value.field == "format"
    with pytest.raises(PermissionDeniedError):
        annotator_api.exports.create(ranked.pk, "pickapic")

    splits = {"split_train": 0.6, "split_validation": 0.2, "split_test": 0.2}
    created = ml_api.exports.create(ranked.pk, "pickapic", tie_policy="soft", **splits,
                                    split_seed=seed_filling_every_split(ranked, splits))
    done = ml_api.exports.wait(created["id"], poll_interval=0.3, timeout=120)
    assert done["status"] == "succeeded" and done["progress"] == 1.0
    pairs = done["counts"]["pairs"]
    assert pairs == 10 * 2 * 6  # ten tasks, two full rankings of four images each, C(4, 2) pairs a ranking

    archive = ml_api.exports.download(done["id"], tmp_path, progress=False)
    assert archive == tmp_path / f"pickwise-export-{done['id']}.zip"
    with zipfile.ZipFile(archive) as bundle:
        assert sorted(name.split("/", 1)[1] for name in bundle.namelist()) == [
            "README.md", "image_strengths.parquet", "pairs.parquet"]

    frame = ml_api.exports.to_pandas(done["id"], progress=False)
    assert len(frame) == pairs and {"caption", "jpg_0", "jpg_1", "label_0", "label_1", "split"} <= set(frame.columns)
    train = ml_api.exports.to_pandas(done["id"], split="train")
    assert len(train) == done["split_counts"]["train"] and set(train["split"]) == {"train"}
    assert len(ml_api.exports.to_pandas(done["id"], table="image_strengths")) == 40
    dataset = ml_api.exports.to_dataset(done["id"], split="test")
    assert len(dataset) == done["split_counts"]["test"] and "caption" in dataset.column_names
    assert [e["id"] for e in ml_api.exports.list(project=ranked.pk)] == [done["id"]]

    out = tmp_path / "out.parquet"
    result = cli(live_server, ml_engineer, "export", "--project", str(ranked.pk), "--format", "pickapic",
                 "-o", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["status"] == "succeeded" and body["output"] == str(out)
    assert len(pd.read_parquet(out)) == body["counts"]["pairs"] == pairs


def test_reward_runs_cancel_retry_watch_and_score(celery_worker_process, live_server, ranked, ml_api,
                                                  ml_engineer):
    export = build_export(ranked, ml_engineer, format="pickapic", worker=True)
    run = ml_api.reward_runs.create(export.pk, hyperparameters=REWARD_FAST, name="from the client")
    assert ml_api.reward_runs.cancel(run["id"])["status"] == "cancelled"
    with pytest.raises(JobFailedError) as stopped:
        ml_api.reward_runs.wait(run["id"], progress=False)
    assert (stopped.value.id, stopped.value.status) == (run["id"], "cancelled")

    ref = f"reward-{run['id']}"
    retried = cli(live_server, ml_engineer, "runs", "retry", ref)
    assert (retried.exit_code, retried.stdout) == (0, f"{ref} queued\n")
    points = list(ml_api.reward_runs.watch(run["id"], poll_interval=0.3, timeout=240))
    assert [p["step"] for p in points] == sorted({p["step"] for p in points}) and points[-1]["step"] == 4
    assert all("loss" in p for p in points)
    finished = ml_api.reward_runs.wait(run["id"], progress=False)
    assert finished["status"] == "succeeded"
    assert [r["id"] for r in ml_api.reward_runs.list(project=ranked.pk)] == [run["id"]]

    watched = cli(live_server, ml_engineer, "runs", "watch", ref)
    last = watched.stdout.splitlines()[-1]
    assert watched.exit_code == 0 and last.startswith("step 4/4  ") and "  loss " in last and "val_accuracy" in last
    assert f"{ref} succeeded." in watched.stderr
    listed = json.loads(cli(live_server, ml_engineer, "runs", "list", "--json").stdout)
    assert [(r["ref"], r["status"]) for r in listed] == [(ref, "succeeded")]
    again = cli(live_server, ml_engineer, "runs", "cancel", str(run["id"]))  # a bare id: the kind that has it
    assert again.exit_code == ExitCode.API_ERROR and "status: " in again.stderr  # it has finished

    model = ml_api.reward_models.get(finished["registered_version"])
    assert model["export"] == export.pk and model["run"] == run["id"]
    assert [m["id"] for m in ml_api.reward_models.list()] == [model["id"]]
    task = ranked.tasks.order_by("pk").first()
    image_ids = [str(i) for i in task.task_images.order_by("position").values_list("image_id", flat=True)]
    scores = ml_api.reward_models.score(model["id"], image_ids, prompt="a red square")
    assert [s["image_id"] for s in scores["scores"]] == image_ids
    assert all(isinstance(s["score"], float) for s in scores["scores"])


def test_a_dpo_finetune_started_from_the_cli_registers_a_lora_that_generates_a_task(
    celery_worker_process, live_server, ranked, ml_api, admin_api, ml_engineer, tiny_base
):
    export = build_export(ranked, ml_engineer, format="pickapic", worker=True)
    trained = cli(live_server, ml_engineer, "train", "finetune", "--base", "tiny-base", "--method", "dpo",
                  "--export", str(export.pk), "--set", "max_steps=3", "--set", "batch_size=4",
                  "--eval-prompt", "a shape number 1", "--wait", "--json")
    assert trained.exit_code == 0, trained.stderr
    done = json.loads(trained.stdout)
    assert done["ref"] == f"finetune-{done['id']}" and done["config"]["max_steps"] == 3
    assert done["result_version"] == f"tiny-base-dpo-{done['id']}" and done["history"][-1]["step"] == 3
    assert ml_api.finetune_runs.get(done["id"])["status"] == "succeeded"
    lora = ml_api.model_versions.get(done["result_version"])
    assert (lora["kind"], lora["parent"]) == ("lora", "tiny-base")

    admin_api.projects.update_settings(ranked.pk, model_version_ids=[lora["id"]])
    job = admin_api.generation.create("a shape number 3", done["result_version"], seeds=[1, 2], project=ranked.pk)
    generated = admin_api.generation.wait(job["id"], timeout=120, progress=False)
    assert [image["seed"] for image in generated["images"]] == [1, 2]
    png = admin_api.images.read(generated["images"][0]["url"])
    assert hashlib.sha256(png).hexdigest() == generated["images"][0]["sha256"]
    task = admin_api.tasks.create(ranked.pk, "a shape number 3", image_ids=[i["id"] for i in generated["images"]])
    assert [image["id"] for image in task["images"]] == [i["id"] for i in generated["images"]]
