"""DDIM log-probabilities and DDPO (sampling, reward registry, training)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from transformers.utils import logging as hf_logging

from rlhf.training.checkpoint import read_metadata
from rlhf.training.ddim import (
    ddim_step_mean_std,
    ddim_step_with_logprob,
    encode_prompts,
    guided_noise,
    sample_with_logprob,
)
from rlhf.training.ddpo import (
    DDPOConfig,
    best_worst_pairs,
    ddpo_scheduler,
    tiny_ddpo_preset,
    to_pil,
    train_ddpo,
)
from rlhf.training.lora import eval_images, load_pipeline
from rlhf.training.reward_model import build_tiny_clip
from rlhf.training.rewards import brightness, build_reward, jpeg_compressibility

hf_logging.disable_progress_bar()
PROMPTS = ("a cat", "a dog", "a red house", "a tree")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_base(tiny_pipeline_dir: Path) -> Path:
    """The session's tiny pipeline (tests/conftest.py), read-only here."""
    return tiny_pipeline_dir


def scheduler(steps: int = 10, **overrides: object) -> DDIMScheduler:
    config: dict[str, object] = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }
    s = DDIMScheduler(**{**config, **overrides})
    s.set_timesteps(steps)
    return s


@pytest.mark.parametrize("step_index", [0, 5, 9])
def test_ddim_log_prob_is_the_gaussian_density_of_the_drawn_sample(step_index: int) -> None:
    sched = scheduler()
    t = sched.timesteps[step_index]
    gen = torch.Generator().manual_seed(step_index)
    sample = torch.randn(2, 4, 3, 3, generator=gen)
    eps = torch.randn(2, 4, 3, 3, generator=gen)
    eta = 0.7
    prev, log_prob = ddim_step_with_logprob(
        sched, eps, t, sample, eta, generator=torch.Generator().manual_seed(1)
    )

    # the mean and std by hand from DDIM's eq. 12/16
    a_t = sched.alphas_cumprod[t]
    prev_t = int(t) - 1000 // 10
    a_prev = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod
    x0 = (sample - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    mean = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps
    expected = torch.distributions.Normal(mean, sigma).log_prob(prev).sum(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob, expected, rtol=1e-5, atol=1e-4)

    # the same step as diffusers' own DDIMScheduler.step with the same noise
    noise = (prev - mean) / sigma
    reference = sched.step(eps, t, sample, eta=eta, variance_noise=noise).prev_sample
    torch.testing.assert_close(prev, reference, rtol=1e-5, atol=1e-5)

    # given a sample, the log-prob is recomputed, not redrawn; "mean" averages over the 36 elements
    again, lp = ddim_step_with_logprob(sched, eps, t, sample, eta, prev_sample=prev, reduction="mean")
    assert torch.equal(again, prev)
    torch.testing.assert_close(lp, expected / 36, rtol=1e-5, atol=1e-5)


def test_ddim_step_accepts_per_sample_timesteps() -> None:
    sched = scheduler()
    sample, eps = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    t = sched.timesteps[[1, 4]]
    mean, std = ddim_step_mean_std(sched, eps, t, sample, eta=1.0)
    for i in range(2):
        m_i, s_i = ddim_step_mean_std(sched, eps[i : i + 1], t[i], sample[i : i + 1], eta=1.0)
        torch.testing.assert_close(mean[i : i + 1], m_i)
        torch.testing.assert_close(std[i : i + 1], s_i)


def test_ddim_log_prob_needs_eta_and_variance() -> None:
    sched = scheduler()
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="eta"):
        ddim_step_with_logprob(sched, x, sched.timesteps[0], x, eta=0.0)
    last = scheduler(set_alpha_to_one=True)
    with pytest.raises(ValueError, match="zero variance"):
        ddim_step_with_logprob(last, x, last.timesteps[-1], x, eta=1.0)


@pytest.mark.parametrize("saved", [
    {"timestep_spacing": "linspace", "set_alpha_to_one": True, "steps_offset": 1},  # the shipped shapes model's
    {"timestep_spacing": "leading", "set_alpha_to_one": False, "steps_offset": 1},  # Stable Diffusion 1.x's
])
def test_ddpo_sampler_has_a_density_at_every_step_whatever_the_saved_scheduler(saved: dict) -> None:
    config = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", **saved).config
    sched = ddpo_scheduler(config)
    sched.set_timesteps(12)
    x = torch.randn(1, 4, 2, 2)
    for t in sched.timesteps:  # the last one included: no zero-variance step
        _, std = ddim_step_mean_std(sched, x, t, x, eta=1.0)
        assert float(std.min()) > 0, f"zero variance at t={int(t)}"
    assert sched.config.prediction_type == "v_prediction"


def test_ddpo_sampler_renders_what_the_shipped_shapes_model_renders() -> None:
    """DDPO trains on what it samples: the DDIM sampler must not clip the clean latent (DDIM's default),
    which turned every image of the shapes model (latents scaled beyond [-1, 1]) into a dark smear."""
    from generation.shapes.judge import judge
    from generation.shapes.model import WEIGHTS_DIR
    from generation.shapes.world import prompt_captions

    pipe = load_pipeline(str(WEIGHTS_DIR))
    sched = ddpo_scheduler(pipe.scheduler.config)
    assert sched.config.clip_sample is False
    captions = prompt_captions(24, seed=7, split="train")
    traj = sample_with_logprob(pipe, sched, captions, seeds=list(range(24)), num_steps=12, guidance_scale=2.5,
                               eta=1.0, resolution=64)
    right = [judge(image, caption).overall for image, caption in zip(to_pil(traj.images), captions, strict=True)]
    assert np.mean(right) >= 0.45, f"the judge accepts {np.mean(right):.0%} of DDPO's samples"  # ~70%; 0% clipped


# --------------------------------------------------------------------------------------------- rewards
def test_builtin_rewards() -> None:
    dark, bright = Image.new("RGB", (8, 8), (10, 10, 10)), Image.new("RGB", (8, 8), (250, 250, 250))
    assert list(brightness([dark, bright], ["a", "b"])) == pytest.approx([10 / 255, 250 / 255])
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    flat, busy = jpeg_compressibility([dark, noisy], ["a", "b"])
    assert flat > busy and busy < 0


def test_reward_registry_validates_names_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reward must be one of"):
        build_reward("aesthetic")
    with pytest.raises(ValueError, match="takes no argument"):
        build_reward("brightness", "x")
    with pytest.raises(ValueError, match="needs reward_arg"):
        build_reward("reward_model")
    with pytest.raises(ValueError, match="not a reward-model checkpoint"):
        build_reward("reward_model", str(tmp_path))
    fn = build_reward("reward_model", str(build_tiny_clip(tmp_path / "rm")))
    scores = fn([Image.new("RGB", (32, 32), (200, 0, 0))] * 2, ["a red ball", "two cats"])
    assert len(scores) == 2 and scores[0] != scores[1]


def test_ddpo_config_validation(tiny_base: Path) -> None:
    with pytest.raises(ValueError, match="reward: reward must be one of"):
        tiny_ddpo_preset(str(tiny_base), PROMPTS, reward="nope")
    with pytest.raises(ValueError, match="base_model"):
        tiny_ddpo_preset("/no/such", PROMPTS)
    with pytest.raises(ValueError, match="eta"):
        tiny_ddpo_preset(str(tiny_base), PROMPTS, eta=0.0)
    with pytest.raises(ValueError, match="timestep_fraction"):
        tiny_ddpo_preset(str(tiny_base), PROMPTS, timestep_fraction=1.5)
    with pytest.raises(ValueError, match="prompts"):
        tiny_ddpo_preset(str(tiny_base), ())
    with pytest.raises(ValueError, match="advantage_scale must be one of"):
        tiny_ddpo_preset(str(tiny_base), PROMPTS, advantage_scale="prompt")
    assert tiny_ddpo_preset(str(tiny_base), PROMPTS).reward_id == "brightness"


# --------------------------------------------------------------------------------------------- sampling
def test_sampling_records_trajectories_with_consistent_log_probs(tiny_base: Path) -> None:
    pipe = load_pipeline(tiny_base)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    traj = sample_with_logprob(
        pipe, sched, ["a cat", "a dog"], seeds=[1, 2], num_steps=4, guidance_scale=3.0, eta=1.0, resolution=32
    )
    assert traj.latents.shape == (2, 5, 4, 4, 4) and traj.log_probs.shape == (2, 4)
    assert traj.images.shape == (2, 3, 32, 32)
    # recomputing a step's log-prob from the stored latents gives the recorded value (ratio 1 at the start)
    with torch.no_grad():
        cond = encode_prompts(pipe, ["a cat", "a dog"])
        uncond = encode_prompts(pipe, ["", ""])
        t = traj.timesteps[2]
        eps = guided_noise(pipe.unet, traj.latents[:, 2], t, cond, uncond, 3.0)
        _, lp = ddim_step_with_logprob(
            sched, eps, t, traj.latents[:, 2], 1.0, prev_sample=traj.latents[:, 3], reduction="mean"
        )
    torch.testing.assert_close(lp, traj.log_probs[:, 2], rtol=1e-4, atol=1e-4)
    # a trajectory depends only on its own seed
    alone = sample_with_logprob(
        pipe, sched, ["a dog"], seeds=[2], num_steps=4, guidance_scale=3.0, eta=1.0, resolution=32
    )
    torch.testing.assert_close(alone.latents[0], traj.latents[1], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------- training
def test_ddpo_runs_stops_resumes_and_saves_loadable_lora(tiny_base: Path, tmp_path: Path) -> None:
    config = tiny_ddpo_preset(
        str(tiny_base), PROMPTS, iterations=2, prompts_per_iteration=2, images_per_prompt=2, sample_steps=3,
        kl_coef=0.1, train_batch_size=4,
    )  # fmt: skip
    logged: list[dict[str, float]] = []
    checkpoints: list[tuple[int, str]] = []

    def on_checkpoint(step: int, directory: Path) -> None:
        assert (directory / "pytorch_lora_weights.safetensors").is_file()
        checkpoints.append((step, directory.name))

    first = train_ddpo(
        config, tmp_path / "run", on_log=lambda s, m: logged.append(dict(m)), should_stop=lambda: True,
        on_checkpoint=on_checkpoint,
    )  # fmt: skip
    assert first.stopped and first.step == 1 and checkpoints == [(1, "checkpoint-1")]
    assert {"reward_mean", "loss", "approx_kl", "clip_fraction", "kl"} <= set(logged[0])
    assert logged[0]["kl"] >= 0
    done = train_ddpo(config, tmp_path / "run", on_checkpoint=on_checkpoint)
    assert not done.stopped and done.step == 2
    assert checkpoints == [(1, "checkpoint-1"), (2, "checkpoint-2")]
    meta = read_metadata(done.lora_dir)
    assert (
        meta["reward_id"] == "brightness" and meta["seed"] == 0 and meta["step"] == 2 and "git_commit" in meta
    )
    assert (done.lora_dir / "pytorch_lora_weights.safetensors").is_file()
    pipe = load_pipeline(tiny_base, done.lora_dir)
    assert len(eval_images(pipe, ["a cat"], [0], num_inference_steps=2)) == 1


def test_ddpo_kl_reference_sees_the_model_input_the_policy_sees(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a sampler that scales the UNet's input (as Euler-type schedulers do), the reference of the KL
    penalty must get the same scaled input as the policy: at the start (a fresh LoRA, a learning rate too
    small to move it) policy and reference are one model, so the KL is zero. It used to get the unscaled
    latent, which made the KL a constant push towards nothing."""
    monkeypatch.setattr(DDIMScheduler, "scale_model_input", lambda self, sample, timestep=None: sample * 0.5)
    config = tiny_ddpo_preset(
        str(tiny_base), PROMPTS, iterations=1, prompts_per_iteration=2, images_per_prompt=2, sample_steps=3,
        kl_coef=1.0, lr=1e-12, train_batch_size=4,
    )  # fmt: skip
    logged: list[dict[str, float]] = []
    train_ddpo(config, tmp_path / "run", on_log=lambda s, m: logged.append(dict(m)))
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-12)


def held_out_brightness_gain(base: Path, lora_dir: Path, config: DDPOConfig) -> tuple[float, float]:
    """How much brighter the LoRA renders 32 held-out (prompt, seed) pairs than the base, sampled as the run
    samples: the mean paired gain and its paired t statistic."""
    held_out = [PROMPTS[i % 4] for i in range(32)]
    seeds = list(range(10_000, 10_032))

    def mean_brightness(pipe: object) -> np.ndarray:
        sched = DDIMScheduler.from_config(pipe.scheduler.config)  # type: ignore[attr-defined]
        traj = sample_with_logprob(
            pipe, sched, held_out, seeds=seeds, num_steps=config.sample_steps,
            guidance_scale=config.guidance_scale, eta=config.eta, resolution=config.resolution,
        )  # fmt: skip
        return np.asarray(brightness(to_pil(traj.images), held_out))

    diff = mean_brightness(load_pipeline(base, lora_dir)) - mean_brightness(load_pipeline(base))
    return float(diff.mean()), float(diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff))))


@pytest.mark.slow
@pytest.mark.parametrize("advantage_scale", ["group", "batch"])
def test_ddpo_with_brightness_reward_raises_mean_reward(brightness_base: Path, tmp_path: Path,
                                                       advantage_scale: str) -> None:
    base = brightness_base
    rewards: list[float] = []
    config = tiny_ddpo_preset(str(base), PROMPTS, lr=1e-2, iterations=15, inner_epochs=2,
                              advantage_scale=advantage_scale)
    result = train_ddpo(config, tmp_path / "run", on_log=lambda s, m: rewards.append(m["reward_mean"]))
    assert np.mean(rewards[-4:]) > np.mean(rewards[:4])

    gain, t_stat = held_out_brightness_gain(base, result.lora_dir, config)
    print(f"DDPO brightness gain {gain:.4f} (paired t = {t_stat:.1f}); reward {rewards[0]:.3f} -> {rewards[-1]:.3f}")
    assert gain > 0.03 and t_stat > 3, (gain, t_stat)


def test_group_dpo_pairs_each_groups_best_with_its_worst_where_the_rewards_differ(tiny_base: Path) -> None:
    rewards = np.array([0.1, 0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.2, 0.3, 0.3, 0.1])  # three groups of four
    best, worst = best_worst_pairs(rewards, 4)
    assert best.tolist() == [1, 9] and worst.tolist() == [0, 11]  # the middle group's images all tie: no pair
    best, worst = best_worst_pairs(rewards, 4, min_reward=0.5)
    assert best.tolist() == [1] and worst.tolist() == [0]  # the last group's best (0.3) falls short
    best, worst = best_worst_pairs(rewards, 4, pairs_per_group=2)  # then second best against second worst
    assert best.tolist() == [1, 9, 10] and worst.tolist() == [0, 11, 8]  # the first group's middle pair ties
    with pytest.raises(ValueError, match=r"pairs_per_prompt must be at most images_per_prompt // 2 \(2"):
        tiny_ddpo_preset(str(tiny_base), PROMPTS, objective="group_dpo", images_per_prompt=4, pairs_per_prompt=3)
    with pytest.raises(ValueError, match="images_per_prompt must be >= 2 for group_dpo"):
        tiny_ddpo_preset(str(tiny_base), PROMPTS, objective="group_dpo", images_per_prompt=1)
    with pytest.raises(ValueError, match="objective must be one of"):
        tiny_ddpo_preset(str(tiny_base), PROMPTS, objective="grpo")
    with pytest.raises(ValueError, match="likelihood_anchor applies to objective group_dpo only, not policy_gradient"):
        tiny_ddpo_preset(str(tiny_base), PROMPTS, likelihood_anchor=1.0)


def test_group_dpo_resumes_exactly_as_an_unbroken_run(brightness_base: Path, tmp_path: Path) -> None:
    """A group_dpo run stopped after its second iteration and resumed trains its third on the same replayed
    pairs (kept with the checkpoint) as a run that never stopped: the same metrics, the same LoRA."""
    config = tiny_ddpo_preset(
        str(brightness_base), PROMPTS, objective="group_dpo", iterations=3, prompts_per_iteration=2,
        images_per_prompt=4, sample_steps=3, train_batch_size=2, inner_epochs=2, replay=2,
    )  # fmt: skip
    unbroken: list[dict[str, float]] = []
    whole = train_ddpo(config, tmp_path / "whole", on_log=lambda s, m: unbroken.append(dict(m)))
    assert [m["pairs"] for m in unbroken] == [2.0, 2.0, 2.0]  # every group tells its images apart
    assert [m["replayed_pairs"] for m in unbroken] == [2.0, 4.0, 4.0]  # the replay keeps two iterations
    assert {"reward_mean", "loss", "implicit_accuracy", "reward_margin"} <= set(unbroken[0])

    resumed: list[dict[str, float]] = []
    stops = iter([False, True])
    first = train_ddpo(config, tmp_path / "broken", on_log=lambda s, m: resumed.append(dict(m)),
                       should_stop=lambda: next(stops))
    assert first.stopped and first.step == 2
    done = train_ddpo(config, tmp_path / "broken", on_log=lambda s, m: resumed.append(dict(m)))
    assert done.step == 3 and not done.stopped
    drop = ("s_per_iteration",)
    assert [{k: v for k, v in m.items() if k not in drop} for m in resumed] == [
        {k: v for k, v in m.items() if k not in drop} for m in unbroken
    ]
    from safetensors.torch import load_file

    a, b = (load_file(r.lora_dir / "pytorch_lora_weights.safetensors") for r in (whole, done))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_group_dpo_with_brightness_reward_raises_brightness(brightness_base: Path, tmp_path: Path) -> None:
    """Online DPO on each prompt's brightest image against its darkest makes held-out images brighter."""
    base = brightness_base
    rewards: list[float] = []
    config = tiny_ddpo_preset(str(base), PROMPTS, objective="group_dpo", lr=1e-2, iterations=15, inner_epochs=4,
                              replay=4, dpo_beta=50.0)
    result = train_ddpo(config, tmp_path / "run", on_log=lambda s, m: rewards.append(m["reward_mean"]))
    gain, t_stat = held_out_brightness_gain(base, result.lora_dir, config)
    print(f"group DPO brightness gain {gain:.4f} (paired t = {t_stat:.1f}); "
          f"reward {rewards[0]:.3f} -> {rewards[-1]:.3f}")
    assert gain > 0.03 and t_stat > 3, (gain, t_stat)


def test_shapes_adherence_reward_gives_partial_credit_by_the_judge():
    from generation.shapes.world import parse_caption, render
    from rlhf.training.rewards import build_reward

    reward = build_reward("shapes_adherence")
    caption = "a large red circle at the top left on a white background"
    truth = Image.fromarray(render(parse_caption(caption)))
    blank = Image.new("RGB", truth.size, (255, 255, 255))
    scores = reward([truth, blank], [caption, caption])
    assert scores[0] == pytest.approx(1.0)
    assert 0.0 < scores[1] < 0.5  # only the background is right


def test_shapes_overall_reward_ranks_every_right_image_above_any_partly_right_one():
    from generation.shapes.world import parse_caption, render
    from rlhf.training.rewards import build_reward

    reward = build_reward("shapes_overall")
    caption = "a large red circle at the top left on a white background"
    truth = Image.fromarray(render(parse_caption(caption)))
    wrong_size = Image.fromarray(render(parse_caption("a small red circle at the top left on a white background")))
    blank = Image.new("RGB", truth.size, (255, 255, 255))
    right, almost, nothing = reward([truth, wrong_size, blank], [caption] * 3)
    assert right == pytest.approx(1.25)
    assert 0.0 < nothing < almost < 0.25  # partial credit orders the wrong ones, below any right one
