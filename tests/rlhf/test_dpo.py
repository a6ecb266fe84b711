"""Diffusion-DPO with LoRA: config, LoRA round trips, resume, tie handling, and learning on the tiny pipeline."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from rlhf.training.callbacks import notify_checkpoint
from rlhf.training.checkpoint import list_checkpoints, read_metadata
from rlhf.training.data import PreferenceDataset
from rlhf.training.ddim import sample_with_logprob
from rlhf.training.ddpo import to_pil
from rlhf.training.dpo import PreferencePairs, tiny_dpo_preset, train_dpo
from rlhf.training.lora import add_lora, eval_images, load_pipeline, save_lora
from rlhf.training.synthetic import write_brightness_pairs, write_generated_brightness_pairs

hf_logging.disable_progress_bar()
PROMPTS = ("a cat", "a dog", "a red house", "a tree")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_base(tiny_pipeline_dir: Path) -> Path:
    """The session's tiny pipeline (tests/conftest.py), read-only here."""
    return tiny_pipeline_dir


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_brightness_pairs(tmp_path_factory.mktemp("export") / "pairs.parquet", 24, seed=0)


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_config_validation(tiny_base: Path) -> None:
    for overrides, field in [
        ({"beta": 0.0}, "beta"),
        ({"ties": "drop"}, "ties"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"resolution": 30}, "resolution"),
        ({"dpop_lambda": -1.0}, "dpop_lambda"),
        ({"likelihood_anchor": -1.0}, "likelihood_anchor"),
    ]:
        with pytest.raises(ValueError, match=field):
            tiny_dpo_preset(str(tiny_base), **overrides)
    with pytest.raises(ValueError, match="base_model"):
        tiny_dpo_preset("/no/such/pipeline")


def test_lora_save_load_and_fuse_round_trip_identical_images(tiny_base: Path, tmp_path: Path) -> None:
    pipe = load_pipeline(tiny_base)
    add_lora(pipe.unet, rank=4, alpha=8)  # alpha != rank: the scale must survive the round trip
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora" in name:
                p.add_(0.2 * torch.randn_like(p))
    prompts, seeds = ["a cat", "a red house"], [3, 4]
    trained = pixels(eval_images(pipe, prompts, seeds, num_inference_steps=4))
    save_lora(pipe.unet, tmp_path / "lora")
    loaded = pixels(
        eval_images(load_pipeline(tiny_base, tmp_path / "lora"), prompts, seeds, num_inference_steps=4)
    )
    fused = pixels(
        eval_images(
            load_pipeline(tiny_base, tmp_path / "lora", fuse=True), prompts, seeds, num_inference_steps=4
        )
    )
    base = pixels(eval_images(load_pipeline(tiny_base), prompts, seeds, num_inference_steps=4))
    assert np.array_equal(loaded, trained)
    assert np.abs(fused - trained).max() <= 1  # fusing folds the adapter into the weights: rounding only
    assert np.abs(base - trained).max() > 5  # the adapter does change the images


def test_ties_are_skipped_or_trained_symmetrically(pairs: Path) -> None:
    rows = list(PreferenceDataset(pairs, "train"))
    n_ties = sum(r.is_tie for r in rows)
    assert n_ties > 0
    skipped = list(PreferencePairs(PreferenceDataset(pairs, "train", drop_ties=True), "skip"))
    symmetric = list(PreferencePairs(PreferenceDataset(pairs, "train"), "symmetric"))
    assert len(skipped) == len(rows) - n_ties and all(pair[3] == 1.0 for pair in skipped)
    assert len(symmetric) == len(rows) + n_ties
    assert sum(pair[3] for pair in symmetric) == pytest.approx(len(rows))
    assert all(a.whole and b.whole and a.strength == b.strength == 1.0 for *_, (a, b) in symmetric)  # no edits
    for caption, chosen, rejected, weight, _areas in skipped:  # the chosen image is the winner of its row
        row = next(r for r in rows if r.images[0] in (chosen, rejected) and r.caption == caption)
        assert chosen == row.images[row.ranks.index(0)] and weight == 1.0


def test_dpo_stop_resume_matches_uninterrupted_run(tiny_base: Path, pairs: Path, tmp_path: Path) -> None:
    config = tiny_dpo_preset(
        str(tiny_base), max_steps=3, batch_size=4, checkpoint_every=2, export_id="exp-7", seed=3
    )
    logged: list[dict[str, float]] = []
    calls: list[tuple[str, int]] = []

    def on_checkpoint(step: int, directory: Path) -> None:
        # called once the directory is complete: weights and metadata are there
        assert (directory / "pytorch_lora_weights.safetensors").is_file()
        assert read_metadata(directory)["step"] == step
        calls.append((directory.parent.parent.name, step))
        torch.rand(1000), np.random.rand(1000), random.random()  # must not change training

    first = train_dpo(
        config, pairs, tmp_path / "run", on_log=lambda s, m: logged.append(dict(m)), should_stop=lambda: True,
        on_checkpoint=on_checkpoint,
    )  # fmt: skip
    assert first.stopped and first.step == 1 and calls == [("run", 1)]
    assert {"loss", "implicit_accuracy", "lr", "s_per_step"} <= set(logged[0])
    assert logged[0]["loss"] == pytest.approx(
        np.log(2), abs=1e-3
    )  # LoRA B starts at zero: policy == reference
    assert logged[0]["chosen_error_change"] == 0.0
    with pytest.raises(ValueError, match="dpop_lambda was 0.0, now 1.0"):  # another objective: not this run
        train_dpo(replace(config, dpop_lambda=1.0), pairs, tmp_path / "run")
    resumed = train_dpo(config, pairs, tmp_path / "run", on_checkpoint=on_checkpoint)
    straight = train_dpo(config, pairs, tmp_path / "straight")
    assert resumed.step == straight.step == 3
    assert calls == [("run", 1), ("run", 2), ("run", 3)]  # not for final/, which has the same weights as 3
    a = load_file(resumed.lora_dir / "pytorch_lora_weights.safetensors")
    b = load_file(straight.lora_dir / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
    ]
    meta = read_metadata(resumed.lora_dir)
    assert meta["export_id"] == "exp-7" and meta["seed"] == 3 and meta["step"] == 3 and meta["kind"] == "dpo"
    assert meta["config"]["beta"] == config.beta and "git_commit" in meta


def accumulation_windows(pairs: Path, *, batch_size: int, grad_accum: int, epochs: int) -> list[int]:
    """The pairs of each optimisation step when gradient accumulation ends with each epoch."""
    n = len(list(PreferencePairs(PreferenceDataset(pairs, "train", drop_ties=True), "skip")))
    batches = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    windows = [sum(batches[i : i + grad_accum]) for i in range(0, len(batches), grad_accum)]
    return windows * epochs


def test_dpo_gradient_accumulation_ends_with_each_epoch(tiny_base: Path, pairs: Path, tmp_path: Path) -> None:
    """An epoch whose micro-batches do not divide by grad_accum ends with a shorter step; the step never takes
    micro-batches of the next epoch (the loader is prepared by accelerate, which knows where an epoch ends)."""
    expected = accumulation_windows(pairs, batch_size=3, grad_accum=2, epochs=2)
    assert len(set(expected)) > 1  # the data makes a short last window: the test can tell the cases apart
    config = tiny_dpo_preset(str(tiny_base), max_steps=len(expected), batch_size=3, grad_accum=2, seed=3)
    logged: list[dict[str, float]] = []
    train_dpo(config, pairs, tmp_path / "run", on_log=lambda s, m: logged.append(dict(m)))
    assert [int(m["pairs"]) for m in logged] == expected


@pytest.mark.parametrize("stop_at", [3, 4])  # at an epoch's end (the short step), and inside the next epoch
def test_dpo_with_accumulation_resumes_where_it_stopped(
    tiny_base: Path, pairs: Path, tmp_path: Path, stop_at: int
) -> None:
    expected = accumulation_windows(pairs, batch_size=3, grad_accum=2, epochs=2)
    config = tiny_dpo_preset(str(tiny_base), max_steps=len(expected), batch_size=3, grad_accum=2, seed=3)
    straight = train_dpo(config, pairs, tmp_path / "straight")
    logged: list[dict[str, float]] = []
    first = train_dpo(config, pairs, tmp_path / "run", on_log=lambda s, m: logged.append(dict(m)),
                      should_stop=lambda: len(logged) == stop_at)
    assert first.stopped and first.step == stop_at
    resumed = train_dpo(config, pairs, tmp_path / "run", on_log=lambda s, m: logged.append(dict(m)))
    assert resumed.step == len(expected) and [int(m["pairs"]) for m in logged] == expected
    a = load_file(resumed.lora_dir / "pytorch_lora_weights.safetensors")
    b = load_file(straight.lora_dir / "pytorch_lora_weights.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_checkpoint_callback_leaves_the_global_random_state_as_it_found_it(tmp_path: Path) -> None:
    seen: list[tuple[int, Path]] = []

    def noisy(step: int, directory: Path) -> None:
        seen.append((step, directory))
        torch.manual_seed(99), np.random.seed(99), random.seed(99)

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    notify_checkpoint(noisy, 7, tmp_path)
    notify_checkpoint(None, 8, tmp_path)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert seen == [(7, tmp_path)]
    torch.testing.assert_close(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def brightness_of(pipe: object, prompts: list[str], seeds: list[int]) -> np.ndarray:
    sched = DDIMScheduler.from_config(pipe.scheduler.config)  # type: ignore[attr-defined]
    traj = sample_with_logprob(
        pipe, sched, prompts, seeds=seeds, num_steps=8, guidance_scale=1.0, eta=1.0, resolution=32
    )
    return traj.images.mean(dim=(1, 2, 3)).numpy()


@pytest.mark.slow
def test_dpo_on_brighter_preferences_makes_images_brighter(brightness_base: Path, tmp_path: Path) -> None:
    # The export pairs the base model's own samples (brightness_base's VAE makes brightness follow the
    # latents): brighter wins.
    base = brightness_base
    pipe = load_pipeline(base)
    prompts = [PROMPTS[(i // 2) % 4] for i in range(128)]
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    traj = sample_with_logprob(
        pipe, sched, prompts, seeds=list(range(128)), num_steps=8, guidance_scale=1.0, eta=1.0, resolution=32
    )
    export = write_generated_brightness_pairs(to_pil(traj.images), prompts, tmp_path / "pairs.parquet")

    result = train_dpo(
        tiny_dpo_preset(str(base), lr=2e-3, beta=100.0, max_steps=200), export, tmp_path / "run"
    )

    held_out = [PROMPTS[i % 4] for i in range(32)]
    seeds = list(range(10_000, 10_032))  # never used for the export
    before = brightness_of(pipe, held_out, seeds)
    after = brightness_of(load_pipeline(base, result.lora_dir), held_out, seeds)
    diff = after - before  # paired by prompt and seed, so seed noise cancels
    t_stat = diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff)))
    print(f"DPO brightness gain {diff.mean():.4f} (paired t = {t_stat:.1f})")
    assert diff.mean() > 0.01 and t_stat > 3, (diff.mean(), t_stat)
