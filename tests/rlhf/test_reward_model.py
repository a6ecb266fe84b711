"""Reward model: export readers, config validation, checkpoints, resume, cancellation, failure modes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from rlhf.training import reward_train
from rlhf.training.checkpoint import METADATA_FILE, list_checkpoints, read_metadata
from rlhf.training.data import (
    PreferenceDataset,
    RankedList,
    count_rows,
    iter_rows,
    prompt_counts,
    table_layout,
)
from rlhf.training.reward_model import build_tiny_clip, load_reward_model, save_reward_model, score
from rlhf.training.reward_train import RewardModelConfig, tiny_reward_preset, train_reward_model
from rlhf.training.synthetic import write_brightness_lists, write_brightness_pairs

hf_logging.disable_progress_bar()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_brightness_pairs(tmp_path_factory.mktemp("export") / "pairs.parquet", 40, seed=1)


def images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (40, 30), (20 * i, 255 - 20 * i, 9 * i)) for i in range(n)]


# --------------------------------------------------------------------------------------------- data
def test_pairwise_reader_streams_splits_and_maps_labels_to_ranks(pairs: Path) -> None:
    assert table_layout(pairs) == "pairwise"
    train = list(iter_rows(pairs, "train", batch_rows=7))
    assert len(train) == count_rows(pairs, "train") == 28
    assert count_rows(pairs, "validation") + count_rows(pairs, "test") == 12
    for row in train:
        expected = {1.0: [0, 1], 0.0: [1, 0], 0.5: [0, 0]}[row.label_0 or 0.0]
        assert row.ranks == expected
        assert len(row.images) == 2 and row.images[0][:4] == b"\x89PNG"
    assert any(row.is_tie for row in iter_rows(pairs))


def keys(rows: Iterable[RankedList]) -> list[int]:
    return [hash(r.images[0]) for r in rows]


def test_dataset_shuffles_per_epoch_skips_and_weights_per_prompt(pairs: Path) -> None:
    ds = PreferenceDataset(pairs, "train", shuffle_buffer=8, seed=3, per_prompt_weighting=True)
    first = keys(ds)
    assert first == keys(ds) and sorted(first) == sorted(keys(iter_rows(pairs, "train")))
    assert first != keys(iter_rows(pairs, "train"))
    ds.set_epoch(1)
    assert keys(ds) != first
    ds.set_epoch(0, skip=5)
    assert keys(ds) == first[5:]
    counts = prompt_counts(pairs, "train")
    for row in PreferenceDataset(pairs, "train", per_prompt_weighting=True):
        assert row.weight == pytest.approx(1 / counts[row.prompt_id])
    assert all(not r.is_tie for r in PreferenceDataset(pairs, "train", drop_ties=True))


def test_listwise_reader(tmp_path: Path) -> None:
    path = write_brightness_lists(tmp_path / "lists.parquet", 10, k=3, seed=0)
    assert table_layout(path) == "listwise"
    rows = list(iter_rows(path))
    assert len(rows) == 10
    for row in rows:
        assert len(row.images) == 3 and row.ranks == sorted(row.ranks) and row.ranks[0] == 0


def test_unknown_schema_is_rejected(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="match neither"):
        table_layout(tmp_path / "bad.parquet")


# --------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"loss": "hinge"}, "loss"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"ties": "drop"}, "ties"),
        ({"lr": 0.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_steps": 0}, "max_steps"),
        ({"tie_threshold": 2.0}, "tie_threshold"),
        ({"backbone": "/no/such/dir"}, "backbone"),
    ],
)
def test_config_validation_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RewardModelConfig(**overrides)  # type: ignore[arg-type]


def test_non_clip_backbone_fails_before_training(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="backbone.*config.json"):
        RewardModelConfig(backbone=str(tmp_path / "empty"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="backbone.*not a CLIP"):
        RewardModelConfig(backbone=str(tmp_path / "bert"))
    clip_dir = build_tiny_clip(tmp_path / "clip")
    assert RewardModelConfig(backbone=str(clip_dir)).backbone == str(clip_dir)


# --------------------------------------------------------------------------------------------- model
def test_save_load_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    model = load_reward_model(build_tiny_clip(tmp_path / "b", seed=5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    prompts = ["a red ball", "two cats", "the sea", "x"]
    before = score(model, prompts, images(4), batch_size=3)
    save_reward_model(model, tmp_path / "saved")
    loaded = load_reward_model(tmp_path / "saved")
    assert score(loaded, prompts, images(4), batch_size=3) == before
    # batching changes float summation order only
    assert score(loaded, prompts, images(4), batch_size=2) == pytest.approx(before, abs=1e-5)
    assert len(set(before)) == 4


def test_score_checks_lengths(tmp_path: Path) -> None:
    model = load_reward_model(build_tiny_clip(tmp_path / "b"))
    with pytest.raises(ValueError, match="prompts"):
        score(model, ["a"], images(2))


# --------------------------------------------------------------------------------------------- training
def small(**overrides: object) -> RewardModelConfig:
    base: dict[str, object] = {"batch_size": 4, "max_steps": 4, "shuffle_buffer": 8, "export_id": "exp-1"}
    return tiny_reward_preset(**{**base, **overrides})


def test_stop_then_resume_matches_an_uninterrupted_run(pairs: Path, tmp_path: Path) -> None:
    logged: list[tuple[int, dict[str, float]]] = []
    config = small(checkpoint_every=2, seed=7)
    stopped = train_reward_model(
        config,
        pairs,
        tmp_path / "run",
        on_log=lambda s, m: logged.append((s, dict(m))),
        should_stop=lambda: True,
    )
    assert stopped.stopped and stopped.step == 1
    assert {"loss", "accuracy", "lr", "pairs_per_s"} <= set(logged[0][1])
    resumed = train_reward_model(config, pairs, tmp_path / "run")
    straight = train_reward_model(config, pairs, tmp_path / "straight")
    assert resumed.step == straight.step == 4 and not resumed.stopped
    a = load_file(resumed.model_dir / "model.safetensors")
    b = load_file(straight.model_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)

    # checkpoints record config, commit key, export id, seed; the final model records eval results
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-4",
    ]
    meta = read_metadata(resumed.model_dir)
    assert meta["export_id"] == "exp-1" and meta["seed"] == 7 and meta["step"] == 4
    assert "git_commit" in meta and meta["config"]["loss"] == "bradley_terry"
    assert meta["validation"]["pairs"] == 6 and 0 <= meta["tie_threshold"] <= 1
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-4" / METADATA_FILE).is_file()

    # final and last checkpoint hold the same weights, so score identically after loading
    prompts = ["a red ball", "two cats"]
    final_scores = score(load_reward_model(resumed.model_dir), prompts, images(2))
    ckpt_scores = score(
        load_reward_model(tmp_path / "run" / "checkpoints" / "checkpoint-4"), prompts, images(2)
    )
    assert final_scores == ckpt_scores


def test_resume_refuses_a_different_config(pairs: Path, tmp_path: Path) -> None:
    train_reward_model(small(max_steps=1), pairs, tmp_path / "run")
    with pytest.raises(ValueError, match="cannot resume.*seed"):
        train_reward_model(small(max_steps=2, seed=99), pairs, tmp_path / "run")


def test_nan_loss_raises(pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_loss(*args: object, **kwargs: object) -> torch.Tensor:
        return torch.tensor(float("nan"), requires_grad=True)

    monkeypatch.setattr(reward_train, "bradley_terry_loss", nan_loss)
    with pytest.raises(FloatingPointError, match="loss became nan at step 1"):
        train_reward_model(small(), pairs, tmp_path / "run")


@pytest.mark.parametrize("loss", ["plackett_luce", "choose_one", "bradley_terry"])
def test_listwise_losses_train_on_listwise_exports(loss: str, tmp_path: Path) -> None:
    path = write_brightness_lists(tmp_path / "lists.parquet", 12, k=3, seed=2)
    result = train_reward_model(small(loss=loss, max_steps=2), path, tmp_path / "run")  # type: ignore[arg-type]
    assert result.step == 2 and result.last_metrics["loss"] == pytest.approx(result.last_metrics["loss"])
    assert result.test is not None and result.test.pairs == 3 * count_rows(path, "test")  # 3 pairs per list


def test_tiny_backbone_is_built_at_the_configured_image_size(pairs: Path, tmp_path: Path) -> None:
    result = train_reward_model(small(max_steps=1, image_size=48), pairs, tmp_path / "run")
    model = load_reward_model(result.model_dir)
    assert model.transform.image_size == 48
    assert model.clip.config.vision_config.image_size == 48
    assert len(score(model, ["a red square"], images(1))) == 1
