"""Fine-tunes that continue a saved LoRA (``init_lora``): DPO against the starting adapter, DDPO sampling it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from generation.inference import LORA_WEIGHTS_FILE
from generation.tiny import build_tiny_lora
from rlhf.training.ddim import encode_prompts, sample_with_logprob
from rlhf.training.ddpo import ddpo_scheduler, tiny_ddpo_preset, to_pil, train_ddpo
from rlhf.training.dpo import dpo_batch_loss, tiny_dpo_preset, train_dpo
from rlhf.training.lora import (
    add_lora,
    load_pipeline,
    start_from_adapter,
)
from rlhf.training.synthetic import write_brightness_pairs

hf_logging.disable_progress_bar()
PROMPTS = ("a cat", "a dog", "a red house", "a tree")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tiny_base_dir: Path) -> Path:
    """The session's tiny pipeline (tests/rlhf/conftest.py), read-only here."""
    return tiny_base_dir


@pytest.fixture(scope="module")
def start(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-trivial adapter (both LoRA matrices random): the version a run continues."""
    return build_tiny_lora(base, tmp_path_factory.mktemp("lora") / "start", seed=3)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_brightness_pairs(tmp_path_factory.mktemp("export") / "pairs.parquet", 24, seed=0)


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / LORA_WEIGHTS_FILE)


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


def test_init_lora_is_validated_and_sets_the_adapters_shape(base: Path, start: Path, tmp_path: Path) -> None:
    config = tiny_dpo_preset(str(base), init_lora=str(start))
    assert (config.lora_rank, config.lora_alpha, set(config.lora_targets)) == (
        4, 4, {"to_q", "to_k", "to_v", "to_out.0"},
    )  # fmt: skip
    assert tiny_ddpo_preset(str(base), PROMPTS, init_lora=str(start)).lora_rank == 4
    (tmp_path / "empty").mkdir()
    for init in ("/no/such/adapter", str(tmp_path / "empty")):
        with pytest.raises(ValueError, match="^init_lora"):
            tiny_dpo_preset(str(base), init_lora=init)
        with pytest.raises(ValueError, match="^init_lora"):
            tiny_ddpo_preset(str(base), PROMPTS, init_lora=init)
    for override, field in (({"lora_rank": 8}, "lora_rank"), ({"lora_alpha": 8}, "lora_alpha"),
                            ({"lora_targets": ("to_q",)}, "lora_targets")):
        with pytest.raises(ValueError, match=f"^{field}"):
            tiny_dpo_preset(str(base), init_lora=str(start), **override)
        with pytest.raises(ValueError, match=f"^{field}"):
            tiny_ddpo_preset(str(base), PROMPTS, init_lora=str(start), **override)


def test_dpo_from_a_lora_starts_at_its_weights_against_it_as_the_reference(
    base: Path, start: Path, pairs: Path, tmp_path: Path
) -> None:
    logged: list[dict[str, float]] = []
    config = tiny_dpo_preset(str(base), init_lora=str(start), max_steps=2, batch_size=4, lr=1e-4)
    result = train_dpo(config, pairs, tmp_path / "run", on_log=lambda step, m: logged.append(dict(m)))
    # At the first step the policy is the reference: no margin, loss ln 2, exactly.
    assert logged[0]["reward_margin"] == 0.0 and logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logged[1]["reward_margin"] != 0.0  # then the policy moves and the reference does not
    # The trained adapter is the start adapter, a couple of small steps on; a fresh LoRA is far from it.
    fresh = train_dpo(tiny_dpo_preset(str(base), max_steps=2, batch_size=4, lr=1e-4), pairs, tmp_path / "fresh")
    init = weights(start)
    assert weights(result.lora_dir).keys() == init.keys()  # the reference copy is not saved with it
    assert 0 < distance(weights(result.lora_dir), init) < 0.02 * distance(weights(fresh.lora_dir), init)


def test_the_reference_pass_is_the_start_adapter_not_the_base(base: Path, start: Path) -> None:
    """The same batch through the start adapter: against the base UNet the loss is not ln 2."""
    pipe = load_pipeline(base)
    add_lora(pipe.unet, rank=4, alpha=4)
    reference = start_from_adapter(pipe.unet, start, rank=4, alpha=4, targets=("to_q", "to_k", "to_v", "to_out.0"),
                                   keep_reference=True)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    latents = torch.randn((8, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text = encode_prompts(pipe, list(PROMPTS))

    def loss(adapter: str | None) -> tuple[float, float]:
        out = dpo_batch_loss(pipe.unet, scheduler, latents, text, torch.ones(4), 500.0,
                             torch.Generator().manual_seed(1), reference_adapter=adapter)
        return out.loss.item(), out.margin.item()

    assert loss(reference) == (pytest.approx(math.log(2), abs=1e-6), 0.0)
    against_base, margin = loss(None)
    assert abs(against_base - math.log(2)) > 0.01 and margin != 0.0
    assert loss(reference)[1] == 0.0  # the reference pass left the trained adapter active
    trainable = {n for n, p in pipe.unet.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)  # and the reference frozen


def test_a_resume_with_another_init_lora_is_refused(base: Path, start: Path, pairs: Path, tmp_path: Path) -> None:
    train_dpo(tiny_dpo_preset(str(base), init_lora=str(start), max_steps=2, batch_size=4), pairs,
              tmp_path / "run", should_stop=lambda: True)
    with pytest.raises(ValueError, match="init_lora"):
        train_dpo(tiny_dpo_preset(str(base), max_steps=2, batch_size=4, lora_alpha=4), pairs, tmp_path / "run")


def test_ddpo_from_a_lora_samples_the_adapters_images_first(base: Path, start: Path, tmp_path: Path) -> None:
    config = tiny_ddpo_preset(str(base), PROMPTS, init_lora=str(start), iterations=1, prompts_per_iteration=2,
                              images_per_prompt=2, sample_steps=3, train_batch_size=4, kl_coef=0.1)
    seen: list[np.ndarray] = []

    def reward(images: list, prompts: list[str]) -> list[float]:
        seen.append(np.stack([np.asarray(image, dtype=np.int16) for image in images]))
        return [float(np.asarray(image).mean()) for image in images]

    logged: list[dict[str, float]] = []
    train_ddpo(config, tmp_path / "run", reward_fn=reward, on_log=lambda step, m: logged.append(dict(m)))
    # What the run drew for its first iteration (train_ddpo's own recipe), sampled by the start version
    rng = np.random.default_rng([config.seed, 0])
    prompts = [PROMPTS[i] for i in rng.choice(len(PROMPTS), size=2, replace=True) for _ in range(2)]
    seeds = rng.integers(0, 2**31 - 1, size=len(prompts)).tolist()

    def images(pipe: object) -> np.ndarray:
        traj = sample_with_logprob(
            pipe, ddpo_scheduler(pipe.scheduler.config), prompts, seeds=seeds,  # type: ignore[attr-defined]
            num_steps=3, guidance_scale=config.guidance_scale, eta=config.eta, resolution=config.resolution,
        )  # fmt: skip
        return np.stack([np.asarray(image, dtype=np.int16) for image in to_pil(traj.images)])

    assert np.abs(seen[0] - images(load_pipeline(base, start))).max() <= 1
    assert np.abs(seen[0] - images(load_pipeline(base))).max() > 5
    assert 0 <= logged[0]["kl"] < 1e-3  # the KL is to the start adapter, where the policy begins
