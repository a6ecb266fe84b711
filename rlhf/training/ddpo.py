"""DDPO (Black et al. 2023) with per-prompt group-normalised advantages (Flow-GRPO style), LoRA only.

Each iteration samples ``prompts_per_iteration x images_per_prompt`` images with DDIM (``eta > 0``) and
classifier-free guidance, recording every latent and step log-probability; scores them with a registered
reward function; normalises rewards within each prompt's group; then runs ``inner_epochs`` passes of the
PPO clipped surrogate over the recorded denoising steps, optionally adding a KL penalty to the starting
policy (the same UNet with adapters disabled). Checkpoint layout as in :mod:`rlhf.training.dpo`, with
``step`` counting iterations.

A run may continue a saved adapter (``init_lora``): the policy then starts as that adapter, so its first
iteration samples what the adapter's version generates, and the KL penalty (if any) is to a frozen copy
of it rather than to the base UNet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.training_utils import cast_training_params
from PIL import Image

from generation.inference import ddim_from_config
from rlhf.training.callbacks import OnCheckpoint, notify_checkpoint
from rlhf.training.checkpoint import (
    STATE_DIR,
    check_resumable,
    checkpoint_dir,
    latest_checkpoint,
    prune_checkpoints,
    read_metadata,
)
from rlhf.training.ddim import ddim_step_full, encode_prompts, guided_noise, sample_with_logprob
from rlhf.training.dpo import FineTuneResult
from rlhf.training.lora import (
    DEFAULT_TARGETS,
    add_lora,
    check_init_lora,
    init_lora_hyperparameters,
    load_pipeline,
    lora_parameters,
    reference_pass,
    register_lora_state_hooks,
    save_lora_checkpoint,
    start_from_adapter,
)
from rlhf.training.losses import (
    AdvantageScale,
    ddpo_clipped_loss,
    gaussian_kl_same_std,
    normalize_advantages_per_prompt,
)
from rlhf.training.rewards import RewardFunction, build_reward

MixedPrecision = Literal["no", "fp16", "bf16"]
OnLog = Callable[[int, Mapping[str, float]], None]
ShouldStop = Callable[[], bool]
_RESUME_KEYS = ("base_model", "reward", "reward_arg", "seed", "lora_rank", "lora_alpha", "init_lora")
_RESUME_ADDED = {"init_lora": ""}  # keys newer than some checkpoints: what those checkpoints ran with


@dataclass(frozen=True)
class DDPOConfig:
    base_model: str  # diffusers StableDiffusionPipeline directory
    prompts: tuple[str, ...]  # the prompt set sampled from each iteration
    reward: str = "brightness"  # a name in rewards.REWARD_FUNCTIONS
    reward_arg: str | None = None  # e.g. the checkpoint path for reward="reward_model"
    iterations: int = 100  # sample-then-train rounds
    prompts_per_iteration: int = 8
    images_per_prompt: int = 4  # group size for per-prompt advantage normalisation
    sample_steps: int = 50  # DDIM steps
    eta: float = 1.0  # DDIM stochasticity (> 0: the policy needs a density)
    guidance_scale: float = 5.0
    resolution: int = 512
    train_batch_size: int = 4  # trajectories per micro-batch
    grad_accum: int = 1  # micro-batches per optimisation step (each already sums over its timesteps)
    inner_epochs: int = 1  # passes over each iteration's samples
    timestep_fraction: float = 1.0  # share of denoising steps trained on per trajectory
    lr: float = 3e-4
    weight_decay: float = 1e-4
    lora_rank: int = 4
    lora_alpha: int | None = None  # None: equal to the rank
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    # A saved adapter directory (save_lora's layout) the policy starts from; "" starts as the base UNet.
    # lora_rank, lora_alpha and lora_targets must be the adapter's (the presets take them from it).
    init_lora: str = ""
    clip_range: float = 1e-4  # PPO ratio clip (log-probs are per-element means, as in ddpo-pytorch)
    adv_clip_max: float = 5.0
    # "group": each prompt's rewards over their own std (Flow-GRPO); "batch": over one std for the whole
    # iteration, so a group the reward barely separates moves the policy less (after Dr. GRPO; for a weak reward model)
    advantage_scale: AdvantageScale = "group"
    kl_coef: float = 0.0  # > 0 adds kl_coef * KL(policy step || base step), Flow-GRPO style
    max_grad_norm: float = 1.0
    mixed_precision: MixedPrecision = "no"
    seed: int = 0
    checkpoint_every: int = 10  # iterations between checkpoints (0: only at the end or on stop)
    keep_last: int = 2
    cpu: bool = False

    def __post_init__(self) -> None:
        if self.mixed_precision not in get_args(MixedPrecision):
            raise ValueError(
                f"mixed_precision must be one of {get_args(MixedPrecision)}, not {self.mixed_precision!r}"
            )
        if self.advantage_scale not in get_args(AdvantageScale):
            raise ValueError(
                f"advantage_scale must be one of {get_args(AdvantageScale)}, not {self.advantage_scale!r}"
            )
        try:
            build_reward(self.reward, self.reward_arg)
        except ValueError as exc:
            raise ValueError(f"reward: {exc}") from exc
        if not (Path(self.base_model) / "model_index.json").is_file():
            raise ValueError(
                f"base_model {self.base_model!r} is not a diffusers pipeline directory (no model_index.json)"
            )
        if not self.prompts:
            raise ValueError("prompts must not be empty")
        positive = (
            "iterations", "prompts_per_iteration", "images_per_prompt", "sample_steps", "eta", "resolution",
            "train_batch_size", "grad_accum", "inner_epochs", "lr", "lora_rank", "clip_range", "adv_clip_max",
            "max_grad_norm",
        )  # fmt: skip
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], not {self.timestep_fraction}")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, not {self.resolution}")
        for name in ("kl_coef", "weight_decay", "checkpoint_every", "keep_last", "guidance_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0 or None, not {self.lora_alpha!r}")
        if self.init_lora:
            check_init_lora(self.init_lora, rank=self.lora_rank, alpha=self.lora_alpha or self.lora_rank,
                            targets=self.lora_targets)

    @property
    def reward_id(self) -> str:
        return self.reward if self.reward_arg is None else f"{self.reward}:{self.reward_arg}"


def sd15_ddpo_preset(base_model: str, prompts: tuple[str, ...], **overrides: Any) -> DDPOConfig:
    """ddpo-pytorch's LoRA settings for SD 1.5: 50 steps, CFG 5, eta 1, lr 3e-4, clip 1e-4, fp16."""
    base: dict[str, Any] = {
        "sample_steps": 50, "guidance_scale": 5.0, "eta": 1.0, "lr": 3e-4, "clip_range": 1e-4,
        "prompts_per_iteration": 8, "images_per_prompt": 16, "train_batch_size": 4, "grad_accum": 8,
        "mixed_precision": "fp16", "resolution": 512,
        **init_lora_hyperparameters(overrides.get("init_lora", "")),
    }  # fmt: skip
    return DDPOConfig(base_model=base_model, prompts=prompts, **{**base, **overrides})


def tiny_ddpo_preset(base_model: str, prompts: tuple[str, ...], **overrides: Any) -> DDPOConfig:
    """For the tiny test pipeline on a CPU."""
    base: dict[str, Any] = {
        "sample_steps": 6, "guidance_scale": 3.0, "resolution": 32, "iterations": 8, "prompts_per_iteration": 4,
        "images_per_prompt": 4, "train_batch_size": 8, "lr": 3e-3, "clip_range": 0.2, "checkpoint_every": 0,
        "weight_decay": 0.0, **init_lora_hyperparameters(overrides.get("init_lora", "")),
    }  # fmt: skip
    return DDPOConfig(base_model=base_model, prompts=prompts, **{**base, **overrides})


def ddpo_scheduler(config: Any) -> Any:  # a DDIMScheduler (diffusers types its mixins loosely)
    """The DDIM sampler DDPO trains through, from any scheduler config of the pipeline.

    Every step must have a density, the last one included: "leading" timestep spacing (the last
    timestep is ``steps_offset`` >= 1, never 0) and the final alpha taken from ``alphas_cumprod[0]``
    rather than 1, as Stable Diffusion 1.x ships them. A pipeline saved with "linspace" spacing or
    ``set_alpha_to_one=True`` would otherwise end on a zero-variance step. Like the worker's DDIM
    (:func:`generation.inference.ddim_from_config`), it clips the predicted clean latent only where the
    pipeline's own scheduler config says so.
    """
    return ddim_from_config(config, timestep_spacing="leading", set_alpha_to_one=False,
                            steps_offset=max(1, int(config.get("steps_offset", 1) or 1)))


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> PIL images (uint8, rounded)."""
    array = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


def train_ddpo(
    config: DDPOConfig,
    output_dir: Path,
    *,
    on_log: OnLog | None = None,
    should_stop: ShouldStop | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    resume: bool = True,
    reward_fn: RewardFunction | None = None,
) -> FineTuneResult:
    """Run DDPO; ``on_log(iteration, metrics)`` after each iteration, ``should_stop()`` polled after each.

    ``on_checkpoint(iteration, checkpoint_dir)`` after every checkpoint under ``checkpoints/`` is written,
    as in :func:`rlhf.training.dpo.train_dpo`. ``reward_fn`` overrides the registry lookup (the config
    still names and validates its reward).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log: OnLog = on_log or (lambda step, metrics: None)
    reward = reward_fn or build_reward(config.reward, config.reward_arg)
    n_train_t = max(1, int(config.sample_steps * config.timestep_fraction))

    # --- setup: accelerator, frozen pipeline + LoRA, DDIM scheduler, optimiser
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum * n_train_t,
        cpu=config.cpu,
    )
    set_seed(config.seed)
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        config.mixed_precision
    ]
    pipe = load_pipeline(config.base_model)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.to(accelerator.device, dtype=weight_dtype)
    add_lora(
        pipe.unet,
        rank=config.lora_rank,
        alpha=config.lora_alpha or config.lora_rank,
        targets=config.lora_targets,
    )
    cast_training_params(pipe.unet, dtype=torch.float32)
    reference = None  # the KL pass disables the adapters: the base UNet, where a fresh LoRA starts
    if config.init_lora:  # the policy starts as the saved adapter; the KL, if any, is to a frozen copy of it
        reference = start_from_adapter(
            pipe.unet, Path(config.init_lora), rank=config.lora_rank, alpha=config.lora_alpha or config.lora_rank,
            targets=config.lora_targets, keep_reference=config.kl_coef > 0,
        )  # fmt: skip
    scheduler = ddpo_scheduler(pipe.scheduler.config)
    optimizer = torch.optim.AdamW(lora_parameters(pipe.unet), lr=config.lr, weight_decay=config.weight_decay)
    register_lora_state_hooks(accelerator, accelerator.unwrap_model)
    unet, optimizer = accelerator.prepare(pipe.unet, optimizer)
    with torch.no_grad():
        uncond_one = encode_prompts(pipe, [""]) if config.guidance_scale > 1 else None

    # --- resume
    iteration = 0
    latest = latest_checkpoint(output_dir) if resume else None
    if latest is not None:
        meta = read_metadata(latest)
        check_resumable(latest, meta, config, _RESUME_KEYS, _RESUME_ADDED)
        accelerator.load_state(str(latest / STATE_DIR))
        iteration = int(meta["step"])

    def checkpoint(directory: Path, with_state: bool, metrics: dict[str, float]) -> None:
        save_lora_checkpoint(
            accelerator, unet, directory, kind="ddpo", config=config, seed=config.seed, step=iteration,
            reward_id=config.reward_id, with_state=with_state, extra={"metrics": metrics},
        )  # fmt: skip

    stopped, last = False, {}
    while iteration < config.iterations and not stopped:
        tick = time.perf_counter()
        rng = np.random.default_rng([config.seed, iteration])

        # --- sample: a group of images per prompt, with latents and log-probs of every step
        chosen = rng.choice(len(config.prompts), size=config.prompts_per_iteration, replace=True)
        prompts = [config.prompts[i] for i in chosen for _ in range(config.images_per_prompt)]
        seeds = rng.integers(0, 2**31 - 1, size=len(prompts)).tolist()
        unet.eval()
        with accelerator.autocast():
            traj = sample_with_logprob(
                pipe, scheduler, prompts, seeds=seeds, num_steps=config.sample_steps,
                guidance_scale=config.guidance_scale, eta=config.eta, resolution=config.resolution,
            )  # fmt: skip
        rewards = np.asarray(reward(to_pil(traj.images), prompts), dtype=np.float64)
        advantages = normalize_advantages_per_prompt(
            torch.from_numpy(rewards), prompts, scale=config.advantage_scale
        ).to(accelerator.device)

        # --- train: clipped surrogate over (a share of) the recorded denoising steps
        unet.train()
        stats: list[list[float]] = []
        n = len(prompts)
        for _ in range(config.inner_epochs):
            order = torch.from_numpy(rng.permutation(n))
            for start in range(0, n, config.train_batch_size):
                idx = order[start : start + config.train_batch_size]
                cond = traj.prompt_embeds[idx]
                uncond = None if uncond_one is None else uncond_one.expand(len(idx), -1, -1)
                for j in rng.permutation(config.sample_steps)[:n_train_t].tolist():
                    t = traj.timesteps[j]
                    with accelerator.accumulate(unet), accelerator.autocast():
                        x_t = traj.latents[idx, j]
                        # The UNet's input at t: the policy and the KL's reference both see exactly this.
                        model_input = scheduler.scale_model_input(x_t, t)
                        eps = guided_noise(unet, model_input, t, cond, uncond, config.guidance_scale)
                        step = ddim_step_full(
                            scheduler,
                            eps,
                            t,
                            x_t,
                            config.eta,
                            prev_sample=traj.latents[idx, j + 1],
                            reduction="mean",
                        )
                        out = ddpo_clipped_loss(
                            step.log_prob,
                            traj.log_probs[idx, j],
                            advantages[idx],
                            config.clip_range,
                            config.adv_clip_max,
                        )
                        loss, kl = out.loss, torch.zeros(())
                        if config.kl_coef > 0:
                            with torch.no_grad():
                                with reference_pass(accelerator.unwrap_model(unet), reference):
                                    ref_eps = guided_noise(unet, model_input, t, cond, uncond, config.guidance_scale)
                                ref = ddim_step_full(
                                    scheduler, ref_eps, t, x_t, config.eta, prev_sample=step.prev_sample
                                )
                            kl = gaussian_kl_same_std(step.mean, ref.mean, step.std).mean()
                            loss = loss + config.kl_coef * kl
                        if not torch.isfinite(loss):
                            raise FloatingPointError(
                                f"DDPO loss became {loss.item()} at iteration {iteration + 1}"
                            )
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            accelerator.clip_grad_norm_(
                                lora_parameters(accelerator.unwrap_model(unet)), config.max_grad_norm
                            )
                        optimizer.step()
                        optimizer.zero_grad()
                    stats.append(
                        [loss.item(), out.approx_kl.item(), out.clip_fraction.item(), float(kl.detach())]
                    )

        # --- log, checkpoint, maybe stop
        iteration += 1
        means = np.mean(stats, axis=0)
        last = {
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()), "loss": float(means[0]),
            "approx_kl": float(means[1]), "clip_fraction": float(means[2]), "kl": float(means[3]),
            "s_per_iteration": time.perf_counter() - tick,
        }  # fmt: skip
        log(iteration, last)
        stopped = bool(should_stop and should_stop())
        due = config.checkpoint_every and iteration % config.checkpoint_every == 0
        if stopped or due or iteration >= config.iterations:
            checkpoint(checkpoint_dir(output_dir, iteration), True, last)
            prune_checkpoints(output_dir, config.keep_last)
            if accelerator.is_main_process:
                notify_checkpoint(on_checkpoint, iteration, checkpoint_dir(output_dir, iteration))

    if stopped:
        return FineTuneResult(checkpoint_dir(output_dir, iteration), iteration, True, last)
    final = output_dir / "final"
    checkpoint(final, False, last)
    return FineTuneResult(final, iteration, False, last)
