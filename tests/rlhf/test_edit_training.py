"""Training on image-editing rankings: a reward model conditioned on the source image (trained from the product's
edit rankings, registered, scoring with each edit's source and refusing images without one), the missing-source
error, and Diffusion-DPO on edit pairs (the repainted region and the strength, and a run through the product)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from django.core.files.storage import default_storage
from PIL import Image

from core.exceptions import ApplicationError
from generation import services as generation_services
from generation.editing import EditRequest
from generation.models import GeneratedImage, ModelKind
from rlhf.models import FineTuneRun, ImageScore, RewardModelRun, RewardModelVersion, RunStatus
from rlhf.runs import finetune, reward, scoring
from rlhf.runs.paths import export_data_path
from rlhf.training.checkpoint import read_metadata
from rlhf.training.configs import conditions_on_source
from rlhf.training.data import PreferenceDataset, images_without_source, iter_rows
from rlhf.training.dpo import EditArea, PreferencePairs, collate_pairs, edit_timesteps, region_errors
from rlhf.training.reward_base import ImageTransform, MissingSourceError
from rlhf.training.reward_model import load_reward_model, score
from rlhf.training.reward_train import reward_preset, train_reward_model
from rlhf.training.rewards import build_reward
from rlhf.training.synthetic import (
    shapes_edit_examples,
    write_brightness_lists,
    write_brightness_pairs,
    write_shapes_edit_pairs,
)
from tests.annotate.factories_workflow import images_for
from tests.factories import api_client_for
from tests.rlhf.conftest import build_export

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REWARD_FAST = {"condition_on_source": True, "epochs": 1, "max_steps": 4, "batch_size": 8}
DPO_FAST = {"max_steps": 3, "batch_size": 4}


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_edits(project, *, leave_out: int = 0) -> dict[str, Image.Image]:
    """Turn the project's task candidates into inpaintings of one source per task (their rows as the edit worker
    writes them: the source and mask stored under their content keys, the provenance on each image), leaving
    the first ``leave_out`` tasks text to image. Returns {image id: its source}."""
    sources = {}
    for k, task in enumerate(project.tasks.order_by("pk")):
        if k < leave_out:
            continue
        ids = [ti.image_id for ti in task.task_images.order_by("position")]
        version = GeneratedImage.objects.get(pk=ids[0]).model_version
        source = Image.new("RGB", (16, 16), (40 + 20 * k, 128, 200 - 15 * k))
        source.paste((220, 30, 30), (4, 4, 12, 12))
        mask = Image.new("L", (16, 16), 0)
        mask.paste(255, (2, 2, 14, 14))
        prepared = generation_services.edit_validate(
            edit=EditRequest("inpaint", png(source), mask=png(mask), strength=0.75), model_version=version)
        generation_services.edit_files_store(prepared)
        GeneratedImage.objects.filter(pk__in=ids).update(edit=prepared.provenance())
        sources.update({str(pk): source for pk in ids})
    return sources


def test_reward_model_conditioned_on_the_source_trains_on_edit_rankings_and_scores_with_the_source(
    ranked, ml_engineer, model_cache
):
    sources = make_edits(ranked)
    export = build_export(ranked, ml_engineer, format="pickapic")
    assert export.status == RunStatus.SUCCEEDED, export.error
    run = reward.reward_run_create(user=ml_engineer, export=export, preset="tiny", hyperparameters=REWARD_FAST)
    assert run.config["condition_on_source"] is True
    run = reward.reward_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    version = RewardModelVersion.objects.get(run=run)
    assert conditions_on_source(version.path) and "conditioned on the source image" in version.description
    assert read_metadata(Path(version.path))["config"]["condition_on_source"] is True  # the checkpoint records it

    task = ranked.tasks.order_by("pk").first()
    images = list(GeneratedImage.objects.filter(task_images__task=task).order_by("task_images__position"))
    ids = [str(image.pk) for image in images]
    stored = scoring.image_scores_compute(reward_version_id=version.pk, image_ids=ids)
    assert ImageScore.objects.filter(reward_version=version).count() == 4
    model = load_reward_model(version.path)
    pictures = [Image.open(default_storage.open(image.storage_key)).convert("RGB") for image in images]
    by_hand = score(model, [task.prompt.text] * 4, pictures, sources=[sources[i] for i in ids])
    assert [stored[i] for i in ids] == pytest.approx(by_hand, abs=1e-5)
    other = score(model, [task.prompt.text] * 4, pictures, sources=[Image.new("RGB", (16, 16), (0, 0, 0))] * 4)
    assert other != pytest.approx(by_hand, abs=1e-5)  # the source is part of what it scores
    with pytest.raises(MissingSourceError, match="condition_on_source"):
        score(model, [task.prompt.text] * 4, pictures)

    lone = images_for(ranked, 1, prompt="a lone text-to-image picture")[0]  # no source to score it beside
    with pytest.raises(ApplicationError) as refused:
        scoring.image_scores_request(user=ml_engineer, reward_version=version, image_ids=[str(lone.pk)])
    assert refused.value.field == "image_ids" and str(lone.pk) in refused.value.message
    api = api_client_for(ml_engineer)
    answer = api.post(f"/api/reward-models/{version.pk}/score/", {"image_ids": [str(lone.pk)]}, format="json")
    assert answer.status_code == 400 and answer.json()["field"] == "image_ids"
    with pytest.raises(ValueError, match="conditioned on the source image"):  # DDPO and the loop score text to image
        build_reward("reward_model", version.path)


def test_listwise_edit_rankings_train_a_conditioned_reward_model(ranked, ml_engineer, model_cache):
    sources = make_edits(ranked)
    export = build_export(ranked, ml_engineer, format="listwise", split_train=0.8, split_validation=0.1,
                          split_test=0.1)
    rows = list(iter_rows(export_data_path(export)))
    assert rows
    originals = [np.asarray(source) for source in sources.values()]
    for row in rows:  # every image of every ranking carries its stored source
        for i in range(len(row.images)):
            data = row.source_of(i)
            assert data is not None
            decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            assert any(np.array_equal(decoded, original) for original in originals)
    run = reward.reward_run_create(user=ml_engineer, export=export, preset="tiny", hyperparameters=REWARD_FAST)
    assert run.config["loss"] == "plackett_luce" and run.config["condition_on_source"] is True
    run = reward.reward_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert conditions_on_source(RewardModelVersion.objects.get(run=run).path)


def test_condition_on_source_without_sources_is_a_400_naming_the_field(
    ranked, ml_engineer, django_capture_on_commit_callbacks
):
    make_edits(ranked, leave_out=1)  # one task's candidates stay text to image
    export = build_export(ranked, ml_engineer, format="pickapic")
    api = api_client_for(ml_engineer)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        for hyperparameters, says in (({"condition_on_source": True}, "have none"),
                                      ({"condition_on_source": "maybe"}, "wrong type")):
            response = api.post("/api/reward-runs/", {"export": export.pk, "preset": "tiny",
                                                      "hyperparameters": hyperparameters}, format="json")
            assert response.status_code == 400, response.content
            assert response.json()["field"] == "condition_on_source" and says in json.dumps(response.json())
    assert not callbacks and not RewardModelRun.objects.exists()
    # Without the option the same export trains as before (its edits are ordinary candidates).
    assert reward.reward_run_create(user=ml_engineer, export=export, preset="tiny", enqueue=False).pk


def test_shapes_reward_conditioned_on_the_source_learns_a_preference_only_the_source_tells(tmp_path):
    """The shapes VAE preset on simulated inpaintings: the edit that keeps the source's colour wins, and the
    prompt names no colour. Conditioned, it ranks held-out edits well above chance (bench/reward_edit.py has
    the unconditioned and noise-label arms)."""
    data = write_shapes_edit_pairs(tmp_path / "edits.parquet", 60,
                                   split=lambda i, n: "train" if i < 0.85 * n else "validation")
    row = next(iter_rows(data, "train"))
    assert row.source_of(0) == row.source_of(1) and row.edit_of(0)["kind"] == "inpaint"
    config = reward_preset("shapes", condition_on_source=True, epochs=2, seed=0)
    result = train_reward_model(config, data, tmp_path / "run")
    assert read_metadata(result.model_dir)["config"]["condition_on_source"] is True
    model = load_reward_model(result.model_dir)
    held = shapes_edit_examples(40, seed=1_000_003)
    right = total = 0
    for example in held:
        rewards = score(model, [example.caption] * 4, example.edits, sources=[example.source] * 4)
        for i in range(4):
            for j in range(i + 1, 4):
                total += 1
                right += (rewards[i] - rewards[j]) * (example.scores[i] - example.scores[j]) > 0
    assert right / total >= 0.75, right / total
    with pytest.raises(MissingSourceError):
        score(model, [held[0].caption], held[0].edits[:1])


def test_images_without_a_source_are_counted_in_every_layout(tmp_path):
    edits = write_shapes_edit_pairs(tmp_path / "edits.parquet", 3)
    plain = write_brightness_pairs(tmp_path / "plain.parquet", 10)
    lists = write_brightness_lists(tmp_path / "lists.parquet", 5, k=3)
    assert images_without_source(edits) == (0, 3 * 6 * 2)
    assert images_without_source(plain) == (20, 20) and images_without_source(lists) == (15, 15)
    train = sum(1 for _ in iter_rows(plain, "train"))
    assert images_without_source(plain, "train") == (2 * train, 2 * train)


def test_dpo_edit_pairs_train_on_the_repainted_region_below_their_strength(tmp_path):
    data = write_shapes_edit_pairs(tmp_path / "edits.parquet", 4, split=lambda i, n: "train")
    pairs = list(PreferencePairs(PreferenceDataset(data, "train"), "skip"))
    assert len(pairs) == 4 * 6  # every edit pair, none dropped
    transform = ImageTransform(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    batch = collate_pairs(pairs[:2], transform)
    region = batch["region"]
    assert region.shape == (2, 1, 32, 32) and set(region.unique().tolist()) == {0.0, 1.0}
    mask = np.asarray(Image.open(io.BytesIO(pq.read_table(data).column("mask_0")[0].as_py())))
    assert region[0].mean().item() == pytest.approx((mask > 0).mean(), abs=0.05)  # the same region, resized
    assert batch["strength"] is None  # inpaintings at strength 1

    # Errors average over the region's latent cells only; timesteps scale into [0, strength x T).
    pred, target = torch.zeros(4, 4, 4, 4), torch.zeros(4, 4, 4, 4)
    target[:, :, :2, :2] = 2.0  # error 4 in the top-left quarter, 0 elsewhere
    top_left = torch.zeros(2, 1, 32, 32)
    top_left[:, :, :16, :16] = 1
    assert region_errors(pred, target, top_left).tolist() == [4.0] * 4
    assert region_errors(pred, target, None).tolist() == [1.0] * 4
    t = torch.tensor([999, 500])
    assert edit_timesteps(t, torch.tensor([0.5, 1.0])).tolist() == [499, 500]
    assert edit_timesteps(t, None) is t

    outpaint = EditArea(outpaint=(8, 0, 8, 0))  # 8 px added left and right of a 16 px source
    border = np.asarray(outpaint.region((32, 16))) > 0
    assert border[:, :8].all() and border[:, 24:].all() and not border[:, 8:24].any()
    assert EditArea(strength=0.4).whole and not outpaint.whole


def test_dpo_on_edit_rankings_trains_and_registers_a_lora(ranked, ml_engineer, tiny_base, model_cache):
    make_edits(ranked)
    export = build_export(ranked, ml_engineer, format="pickapic")
    run = finetune.finetune_run_create(user=ml_engineer, base_version=tiny_base, method="dpo", export=export,
                                       hyperparameters=DPO_FAST, eval_prompts=["a shape number 1"])
    run = finetune.finetune_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.step == 3 and [p["pairs"] for p in run.history] == [4.0, 4.0, 4.0]  # edit pairs trained, not dropped
    version = FineTuneRun.objects.get(pk=run.pk).result_version
    assert version.kind == ModelKind.LORA and version.parent == tiny_base
    assert (Path(version.lora_path) / "pytorch_lora_weights.safetensors").is_file()
