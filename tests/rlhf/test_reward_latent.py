"""The latent reward model: a pipeline's own VAE encoder (frozen) + caption encoder + a small trainable head.

Built from a tiny pipeline made from config, saved, loaded and trained through the same code as the
shipped ``shapes_vae`` backbone; the ceiling helper the bench and the reward-run page use.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from generation.shapes.model import WEIGHTS_DIR
from rlhf.preferences import label_accuracy
from rlhf.training.latent_reward import HeadConfig, LatentRewardModel, build_latent_reward
from rlhf.training.reward_model import (
    BACKBONES,
    load_reward_model,
    register_backbone,
    save_reward_model,
    score,
)
from rlhf.training.reward_train import (
    RewardModelConfig,
    reward_preset,
    shapes_reward_preset,
    train_reward_model,
)
from rlhf.training.rewards import build_reward
from rlhf.training.synthetic import brightness_image, fit_tiny_vae, write_brightness_pairs

hf_logging.disable_progress_bar()

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL_HEAD = HeadConfig(width=8, layers=1, pools=2, pool_dim=4, hidden=16, text_dim=4)


@pytest.fixture(scope="module")
def latent_backbone(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backbone on a tiny pipeline whose VAE was fitted to reconstruct images for a few seconds: a random
    VAE's features barely carry brightness (a ridge fit of pooled features explains ~20% of it, ~97% after)."""
    root = tmp_path_factory.mktemp("latent")
    pipeline = fit_tiny_vae(Path(shutil.copytree(tiny_base_dir, root / "pipeline")), steps=60)
    return build_latent_reward(root / "backbone", pipeline, head=SMALL_HEAD, seed=0)


def images(n: int, size: int = 32) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), (25 * i, 255 - 25 * i, 11 * i)) for i in range(n)]


def encoder_state(model: LatentRewardModel) -> dict[str, torch.Tensor]:
    assert model.vae_encoder is not None
    return {k: v.clone() for k, v in model.vae_encoder.state_dict().items()}


@pytest.mark.parametrize("encoder", ["vae", "conv"])
def test_backbone_from_a_pipeline_saves_and_loads_through_load_reward_model(
    tiny_base_dir: Path, tmp_path: Path, encoder: str
) -> None:
    directory = build_latent_reward(tmp_path / "backbone", tiny_base_dir, encoder=encoder,  # type: ignore[arg-type]
                                    head=SMALL_HEAD, seed=1)
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "pickwise_latent_reward" and config["encoder"] == encoder
    assert config["image_size"] == 32  # the pipeline VAE's sample size
    assert RewardModelConfig(backbone=str(directory)).backbone == str(directory)  # a valid backbone directory

    model = load_reward_model(directory)
    assert isinstance(model, LatentRewardModel) and model.transform.image_size == 32
    trainable = {id(p) for p in model.trainable_parameters()}
    assert all(id(p) not in trainable for p in model.text_encoder.parameters())
    if encoder == "vae":
        # the frozen encoder holds the pipeline's own VAE weights, loaded as the pipeline loads them
        vae = AutoencoderKL.from_pretrained(str(tiny_base_dir / "vae"))
        for key, value in vae.encoder.state_dict().items():
            torch.testing.assert_close(encoder_state(model)[key], value)
        assert all(id(p) not in trainable for p in model.vae_encoder.parameters())  # type: ignore[union-attr]
        assert model.feature_scale.min() > 0 and not torch.equal(model.feature_shift, torch.zeros_like(model.feature_shift))
    else:
        assert all(id(p) in trainable for p in model.tower.parameters())  # type: ignore[union-attr]

    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = ["a red ball", "two cats", "the sea", "x"]
    before = score(model, prompts, images(4), batch_size=3)
    save_reward_model(model, tmp_path / "saved")
    loaded = load_reward_model(tmp_path / "saved")
    assert score(loaded, prompts, images(4), batch_size=3) == before
    assert score(loaded, prompts, images(4), batch_size=2) == pytest.approx(before, abs=1e-5)
    assert len(set(before)) == 4
    # the caption matters once the head has learnt to use it (FiLM and the caption projection)
    assert score(loaded, ["a red ball"] * 4, images(4)) != before


def test_head_learns_a_separable_preference_and_leaves_the_encoders_alone(
    latent_backbone: Path, tmp_path: Path
) -> None:
    export = write_brightness_pairs(tmp_path / "pairs.parquet", 48, seed=0)
    config = shapes_reward_preset(backbone=str(latent_backbone), epochs=8, batch_size=8, export_id="bright")
    result = train_reward_model(config, export, tmp_path / "run")
    assert result.validation is not None and result.test is not None
    model = load_reward_model(result.model_dir)
    assert isinstance(model, LatentRewardModel)

    # fresh pairs never seen in training: the brighter image scores higher
    rng = np.random.default_rng(321)
    wins = 0
    for _ in range(30):
        dark, bright = sorted(rng.uniform(0.15, 0.85, size=2))
        bright = max(bright, min(0.85, dark + 0.15))
        pair = [Image.open(io.BytesIO(brightness_image(rng, level))) for level in (dark, bright)]
        rewards = score(model, ["a green tree"] * 2, pair)
        wins += rewards[1] > rewards[0]
    assert wins >= 27, f"{wins}/30 fresh pairs ordered right (test split {result.test.accuracy:.2f})"

    # only the head trained: the frozen encoders' weights are the backbone's, bit for bit
    before, after = load_file(latent_backbone / "model.safetensors"), load_file(result.model_dir / "model.safetensors")
    assert before.keys() == after.keys()
    frozen = [k for k in before if k.startswith(("vae_encoder.", "quant_conv.", "text_encoder.", "feature_"))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))

    # DDPO's reward function and presort load it by path like a CLIP reward model
    reward = build_reward("reward_model", str(result.model_dir))
    got = reward([Image.open(io.BytesIO(brightness_image(rng, level))) for level in (0.2, 0.8)], ["a"] * 2)
    assert got[1] > got[0]


def test_shapes_vae_backbone_is_the_shipped_models_vae(tmp_path: Path) -> None:
    config = reward_preset("shapes", max_steps=1)
    assert config.backbone == "shapes_vae" and config.lr == 1e-3
    directory = BACKBONES["shapes_vae"](tmp_path / "backbone", seed=0, image_size=None)
    model = load_reward_model(directory)
    assert isinstance(model, LatentRewardModel) and model.transform.image_size == 64
    shipped = AutoencoderKL.from_pretrained(str(WEIGHTS_DIR / "vae")).encoder.state_dict()
    assert all(torch.equal(encoder_state(model)[k], v) for k, v in shipped.items())
    assert len(score(model, ["a small red circle at the top on a white background"] * 2, images(2, 64))) == 2


def test_backbone_and_preset_choices_are_checked_when_the_config_is_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"backbone 'resnet' does not exist \(expected one of \["):
        RewardModelConfig(backbone="resnet")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("shapes_vae", BACKBONES["tiny"])
    with pytest.raises(ValueError, match="preset must be one of"):
        reward_preset("huge")
    with pytest.raises(ValueError, match="pickscore preset needs backbone"):
        reward_preset("pickscore")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text(json.dumps({"model_type": "pickwise_latent_reward"}))
    with pytest.raises(ValueError, match="half.*config.json.*text"):
        load_reward_model(tmp_path / "half")
    (tmp_path / "half" / "config.json").write_text(json.dumps({"model_type": "pickwise_latent_reward", "text": {}}))
    with pytest.raises(ValueError, match="needs the VAE's config"):
        load_reward_model(tmp_path / "half")


def test_label_accuracy_is_the_annotators_ceiling() -> None:
    t = 0.01
    scores = [[0.0, t, 3 * t, 3 * t]]  # pairs: d = t, 3t, 3t, 2t, 2t, and one tie that does not count
    expected = np.mean([1 / (1 + np.exp(-d)) for d in (1, 3, 3, 2, 2)])
    assert label_accuracy(scores, temperature=t) == pytest.approx(expected)
    assert label_accuracy(scores, temperature=0) == 1.0
    simulated = label_accuracy(scores * 400, temperature=t, annotators=3, seed=5)
    assert simulated == pytest.approx(expected, abs=0.02)
    assert math.isnan(label_accuracy([[1.0, 1.0]], temperature=t))  # no pair with different scores


def test_frozen_features_are_memoised_while_training_only(latent_backbone: Path) -> None:
    model = load_reward_model(latent_backbone)
    assert isinstance(model, LatentRewardModel)
    pixels = torch.stack([model.transform(im) for im in images(3)])
    fresh = model.raw_features(pixels)
    assert len(model._feature_cache) == 0  # scoring (eval mode) leaves nothing behind
    model.train()
    torch.testing.assert_close(model.raw_features(pixels), fresh)
    assert len(model._feature_cache) == 3
    torch.testing.assert_close(model.raw_features(pixels[[2, 0]]), fresh[[2, 0]])  # served from the memo
    model.load_state_dict(model.state_dict())
    assert len(model._feature_cache) == 0  # new weights, new features


def test_a_full_memo_serves_a_batch_whose_new_features_evict_its_own_hits(latent_backbone: Path) -> None:
    """More images than the memo holds (a project's third round): the least recently used go, never a hit
    of the batch being read (that was a KeyError that failed the round's reward run)."""
    model = load_reward_model(latent_backbone)
    assert isinstance(model, LatentRewardModel)
    pixels = torch.stack([model.transform(im) for im in images(4)])
    fresh = model.raw_features(pixels)
    model.train()
    model.feature_cache_size = 2
    model.raw_features(pixels[[0, 1]])
    # Image 0 is a hit; images 2 and 3 are new, and storing them pushes the memo past its size.
    torch.testing.assert_close(model.raw_features(pixels[[0, 2, 3]]), fresh[[0, 2, 3]])
    assert len(model._feature_cache) == 2
    torch.testing.assert_close(model.raw_features(pixels[[3, 1]]), fresh[[3, 1]])  # the memo: 3 then 1
    # A hit counts as recently used: reading 3 again while storing 0 evicts 1, not 3 (stored before 1).
    torch.testing.assert_close(model.raw_features(pixels[[3, 0]]), fresh[[3, 0]])
    kept = list(model._feature_cache.values())
    assert [any(torch.allclose(k, fresh[i], atol=1e-5) for k in kept) for i in range(4)] == [True, False, False, True]
