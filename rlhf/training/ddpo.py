"""DDPO (Black et al. 2023) with per-prompt group-normalised advantages (Flow-GRPO style), LoRA only.

Each iteration samples ``prompts_per_iteration x images_per_prompt`` images with DDIM (``eta > 0``) and
classifier-free guidance, recording every latent and step log-probability; scores them with a registered
reward function; normalises rewards within each prompt's group; then runs ``inner_epochs`` passes of the
PPO clipped surrogate over the recorded denoising steps, optionally adding a KL penalty to the starting
policy (the same UNet with adapters disabled). Checkpoint layout as in :mod:`rlhf.training.dpo`, with
``step`` counting iterations.

``objective="group_dpo"`` trains differently on the same samples: each prompt's best-rewarded image against its
worst (with ``pairs_per_prompt`` k > 1, also its i-th best against its i-th worst for i <= k) with the
Diffusion-DPO loss (:func:`rlhf.training.dpo.dpo_batch_loss`), the starting model as the reference, over the
pairs of the last ``replay`` iterations (kept with each checkpoint, so a resumed run goes on as an unbroken one
would). Online DPO from whole ranked images: the reward ranks a group; nothing depends
on the per-step log-probabilities, whose ratios DDPO's noisy per-image rewards hardly move.

A run may continue a saved adapter (``init_lora``): the policy then starts as that adapter, so its first
iteration samples what the adapter's version generates, and the KL penalty (if any) is to a frozen copy
of it rather than to the base UNet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
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
from rlhf.training.configs import DDPOConfig as DDPOConfig
from rlhf.training.configs import MixedPrecision as MixedPrecision
from rlhf.training.configs import sd15_ddpo_preset as sd15_ddpo_preset
from rlhf.training.configs import tiny_ddpo_preset as tiny_ddpo_preset
from rlhf.training.ddim import Trajectory, ddim_step_full, encode_prompts, guided_noise, sample_with_logprob
from rlhf.training.dpo import FineTuneResult, dpo_batch_loss
from rlhf.training.lora import (
    add_lora,
    load_pipeline,
    lora_parameters,
    reference_pass,
    register_lora_state_hooks,
    save_lora_checkpoint,
    start_from_adapter,
)
from rlhf.training.losses import (
    ddpo_clipped_loss,
    gaussian_kl_same_std,
    normalize_advantages_per_prompt,
)
from rlhf.training.rewards import RewardFunction, build_reward

OnLog = Callable[[int, Mapping[str, float]], None]
ShouldStop = Callable[[], bool]
OnPhase = Callable[[str], None]  # "loading_model", "training", ... (where the trainer is)
_RESUME_KEYS = ("base_model", "reward", "reward_arg", "seed", "lora_rank", "lora_alpha", "init_lora", "objective",
                "dpop_lambda", "likelihood_anchor")
# keys newer than some checkpoints: what those checkpoints ran with
_RESUME_ADDED = {"init_lora": "", "objective": "policy_gradient", "dpop_lambda": 0.0, "likelihood_anchor": 0.0}
REPLAY_FILE = "group_dpo_replay.pt"  # group_dpo's replayed pairs, in a checkpoint's state directory
Pairs = tuple[torch.Tensor, torch.Tensor]  # ((2, n, C, h, w) best then worst clean latents, (n, L, D) embeddings)


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


def gather_trajectory(accelerator: Any, traj: Trajectory) -> Trajectory:
    """Every process's share of an iteration's trajectories (latents, log-probs, prompt embeddings) in
    process order, which is the order of one process; the images stay each process's own."""
    return Trajectory(
        latents=accelerator.gather(traj.latents.contiguous()), log_probs=accelerator.gather(traj.log_probs),
        timesteps=traj.timesteps, prompt_embeds=accelerator.gather(traj.prompt_embeds.contiguous()),
        images=traj.images,  # this process's own: scored already, not needed again
    )


def best_worst_pairs(
    rewards: np.ndarray, group_size: int, min_reward: float | None = None, pairs_per_group: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the chosen and rejected image of each group's pairs (groups are consecutive runs of
    ``group_size``): its best against its worst, then (``pairs_per_group`` > 1) its second best against its
    second worst, and so on, each pair kept where its rewards differ and, with ``min_reward``, where its chosen
    image reaches it. Ties go to the first. Pairs come group by group, best pair first."""
    grouped = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    offsets = np.arange(len(grouped))[:, None] * group_size
    depth = slice(0, pairs_per_group)
    chosen = np.argsort(-grouped, axis=1, kind="stable")[:, depth]  # each group's best, second best, ...
    rejected = np.argsort(grouped, axis=1, kind="stable")[:, depth]  # ... against its worst, second worst, ...
    keep = np.take_along_axis(grouped, chosen, 1) > np.take_along_axis(grouped, rejected, 1)
    if min_reward is not None:
        keep &= np.take_along_axis(grouped, chosen, 1) >= min_reward
    return (chosen + offsets)[keep], (rejected + offsets)[keep]


def train_ddpo(
    config: DDPOConfig,
    output_dir: Path,
    *,
    on_log: OnLog | None = None,
    should_stop: ShouldStop | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    resume: bool = True,
    on_phase: OnPhase | None = None,
    reward_fn: RewardFunction | None = None,
) -> FineTuneResult:
    """Run DDPO; ``on_log(iteration, metrics)`` after each iteration, ``should_stop()`` polled after each.

    ``on_checkpoint(iteration, checkpoint_dir)`` after every checkpoint under ``checkpoints/`` is written,
    as in :func:`rlhf.training.dpo.train_dpo`. ``reward_fn`` overrides the registry lookup (the config
    still names and validates its reward). ``on_phase(name)`` hears where it is: "loading_model", then
    "training".
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log: OnLog = on_log or (lambda step, metrics: None)
    phase: OnPhase = on_phase or (lambda name: None)
    reward = reward_fn or build_reward(config.reward, config.reward_arg)
    group_dpo = config.objective == "group_dpo"
    n_train_t = max(1, int(config.sample_steps * config.timestep_fraction))

    phase("loading_model")
    # --- setup: accelerator, frozen pipeline + LoRA, DDIM scheduler, optimiser
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum * (1 if group_dpo else n_train_t),
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
            targets=config.lora_targets, keep_reference=config.kl_coef > 0 or group_dpo,
        )  # fmt: skip
    scheduler = ddpo_scheduler(pipe.scheduler.config)
    # group_dpo trains the diffusion loss's noise schedule, as DPO does
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config) if group_dpo else None
    optimizer = torch.optim.AdamW(lora_parameters(pipe.unet), lr=config.lr, weight_decay=config.weight_decay)
    register_lora_state_hooks(accelerator, accelerator.unwrap_model)
    unet, optimizer = accelerator.prepare(pipe.unet, optimizer)
    with torch.no_grad():
        uncond_one = encode_prompts(pipe, [""]) if config.guidance_scale > 1 else None

    # --- resume
    iteration = 0
    replay: list[Pairs] = []
    latest = latest_checkpoint(output_dir) if resume else None
    if latest is not None:
        meta = read_metadata(latest)
        check_resumable(latest, meta, config, _RESUME_KEYS, _RESUME_ADDED)
        accelerator.load_state(str(latest / STATE_DIR))
        iteration = int(meta["step"])
        if group_dpo and (latest / STATE_DIR / REPLAY_FILE).is_file():
            saved = torch.load(latest / STATE_DIR / REPLAY_FILE, map_location=accelerator.device)
            replay = [(pair["latents"], pair["embeds"]) for pair in saved]

    def checkpoint(directory: Path, with_state: bool, metrics: dict[str, float]) -> None:
        save_lora_checkpoint(
            accelerator, unet, directory, kind="ddpo", config=config, seed=config.seed, step=iteration,
            reward_id=config.reward_id, with_state=with_state, extra={"metrics": metrics},
        )  # fmt: skip
        if group_dpo and with_state and accelerator.is_main_process:
            pairs = [{"latents": latents.cpu(), "embeds": embeds.cpu()} for latents, embeds in replay]
            torch.save(pairs, directory / STATE_DIR / REPLAY_FILE)

    processes, rank = accelerator.num_processes, accelerator.process_index
    n = config.prompts_per_iteration * config.images_per_prompt
    if n % processes or config.train_batch_size % processes:
        raise ValueError(f"{processes} processes do not divide the {n} samples per iteration and "
                         f"train_batch_size {config.train_batch_size}")

    phase("training")
    stopped, last = False, {}
    while iteration < config.iterations and not stopped:
        tick = time.perf_counter()
        rng = np.random.default_rng([config.seed, iteration])

        # --- sample: a group of images per prompt, with latents and log-probs of every step
        chosen = rng.choice(len(config.prompts), size=config.prompts_per_iteration, replace=True)
        prompts = [config.prompts[i] for i in chosen for _ in range(config.images_per_prompt)]
        seeds = rng.integers(0, 2**31 - 1, size=len(prompts)).tolist()
        # Each process samples and scores its share (every image from its own seed, as in one process),
        # then the shares are gathered: advantages are normalised over the whole iteration.
        mine = slice(rank * n // processes, (rank + 1) * n // processes)
        unet.eval()
        with accelerator.autocast():
            traj = sample_with_logprob(
                pipe, scheduler, prompts[mine], seeds=seeds[mine], num_steps=config.sample_steps,
                guidance_scale=config.guidance_scale, eta=config.eta, resolution=config.resolution,
            )  # fmt: skip
        rewards = np.asarray(reward(to_pil(traj.images), prompts[mine]), dtype=np.float64)
        if processes > 1:
            rewards = accelerator.gather(torch.from_numpy(rewards).to(accelerator.device)).cpu().numpy()
            traj = gather_trajectory(accelerator, traj)

        # --- train: DPO on the groups' best and worst samples, or DDPO's clipped surrogate over their steps
        unet.train()
        if group_dpo:
            assert noise_scheduler is not None
            best, worst = best_worst_pairs(rewards, config.images_per_prompt, config.pair_min_reward,
                                           config.pairs_per_prompt)
            final = traj.latents[:, -1]  # x_0 of every image: what DPO trains on, as it would on encoded images
            replay.append((torch.stack([final[best], final[worst]]).detach(), traj.prompt_embeds[best].detach()))
            replay = replay[-config.replay :]
            metrics = _group_dpo_train(
                accelerator, unet, optimizer, noise_scheduler, replay, config, rng, reference, iteration
            )
            metrics["pairs"] = float(len(best))
        else:
            metrics = _policy_gradient_train(
                accelerator, unet, optimizer, scheduler, traj, rewards, prompts, config, rng, reference,
                uncond_one, n_train_t, iteration,
            )  # fmt: skip

        # --- log, checkpoint, maybe stop
        iteration += 1
        last = {
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()), **metrics,
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
    final_dir = output_dir / "final"
    checkpoint(final_dir, False, last)
    return FineTuneResult(final_dir, iteration, False, last)


def _policy_gradient_train(
    accelerator: Any, unet: Any, optimizer: Any, scheduler: Any, traj: Trajectory, rewards: np.ndarray,
    prompts: list[str], config: DDPOConfig, rng: np.random.Generator, reference: str | None,
    uncond_one: torch.Tensor | None, n_train_t: int, iteration: int,
) -> dict[str, float]:
    """DDPO's update on one iteration's samples: the clipped surrogate over (a share of) the recorded
    denoising steps, plus the KL to the reference when ``kl_coef`` > 0. Returns the iteration's mean loss,
    approximate KL, clipped fraction and KL over every process."""
    processes, rank, n = accelerator.num_processes, accelerator.process_index, len(prompts)
    advantages = normalize_advantages_per_prompt(
        torch.from_numpy(rewards), prompts, scale=config.advantage_scale
    ).to(accelerator.device)
    stats: list[list[float]] = []
    for _ in range(config.inner_epochs):
        order = torch.from_numpy(rng.permutation(n))
        for start in range(0, n, config.train_batch_size):
            batch = order[start : start + config.train_batch_size]  # the global micro-batch: this
            share = len(batch) // processes  # process trains its share, gradients are averaged
            idx = batch[rank * share : (rank + 1) * share]
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
                        scheduler, eps, t, x_t, config.eta, prev_sample=traj.latents[idx, j + 1], reduction="mean"
                    )
                    out = ddpo_clipped_loss(
                        step.log_prob, traj.log_probs[idx, j], advantages[idx], config.clip_range, config.adv_clip_max
                    )
                    loss, kl = out.loss, torch.zeros(())
                    if config.kl_coef > 0:
                        with torch.no_grad():
                            with reference_pass(accelerator.unwrap_model(unet), reference):
                                ref_eps = guided_noise(unet, model_input, t, cond, uncond, config.guidance_scale)
                            ref = ddim_step_full(scheduler, ref_eps, t, x_t, config.eta, prev_sample=step.prev_sample)
                        kl = gaussian_kl_same_std(step.mean, ref.mean, step.std).mean()
                        loss = loss + config.kl_coef * kl
                    _optimise(accelerator, unet, optimizer, loss, config, iteration)
                stats.append([loss.item(), out.approx_kl.item(), out.clip_fraction.item(), float(kl.detach())])
    means = _mean_over_processes(accelerator, stats)
    return {"loss": means[0], "approx_kl": means[1], "clip_fraction": means[2], "kl": means[3]}


def _group_dpo_train(
    accelerator: Any, unet: Any, optimizer: Any, noise_scheduler: Any, replay: list[Pairs], config: DDPOConfig,
    rng: np.random.Generator, reference: str | None, iteration: int,
) -> dict[str, float]:
    """group_dpo's update: ``inner_epochs`` passes over the replayed pairs in global micro-batches of
    ``train_batch_size`` pairs (the last one filled from the next pass's order, so every process always
    takes an equal share), Diffusion-DPO against the reference (DPO-Positive with ``dpop_lambda`` > 0, the
    likelihood anchored with ``likelihood_anchor`` > 0). Returns the mean loss, implicit accuracy, reward margin
    (0 while the policy is the reference), change in the denoising error on the chosen images, and the pairs
    replayed."""
    chosen = torch.cat([latents[0] for latents, _ in replay])
    rejected = torch.cat([latents[1] for latents, _ in replay])
    embeds = torch.cat([e for _, e in replay])
    size, batch_size = len(embeds), config.train_batch_size
    if not size:  # no group has told its images apart yet: nothing to learn from, nothing to report
        return {"replayed_pairs": 0.0}
    processes, rank = accelerator.num_processes, accelerator.process_index
    steps = config.inner_epochs * math.ceil(size / batch_size)
    passes = math.ceil(steps * batch_size / size)
    order = np.concatenate([rng.permutation(size) for _ in range(passes)])
    share = batch_size // processes
    stats: list[list[float]] = []
    for step in range(steps):
        batch = order[step * batch_size : (step + 1) * batch_size]
        idx = torch.from_numpy(batch[rank * share : (rank + 1) * share]).to(chosen.device)
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))  # the same on every process
        with accelerator.accumulate(unet), accelerator.autocast():
            out = dpo_batch_loss(
                unet, noise_scheduler, torch.cat([chosen[idx], rejected[idx]]), embeds[idx],
                torch.ones(len(idx), device=chosen.device), config.dpo_beta, generator,
                reference_adapter=reference, shard=(rank, processes), positive=config.dpop_lambda,
                anchor=config.likelihood_anchor,
            )  # fmt: skip
            _optimise(accelerator, unet, optimizer, out.loss, config, iteration)
        stats.append([out.loss.item(), out.accuracy.item(), out.margin.item(), out.chosen_error_change.item()])
    means = _mean_over_processes(accelerator, stats)
    return {"loss": means[0], "implicit_accuracy": means[1], "reward_margin": means[2],
            "chosen_error_change": means[3], "replayed_pairs": float(size)}


def _optimise(accelerator: Any, unet: Any, optimizer: Any, loss: torch.Tensor, config: DDPOConfig,
              iteration: int) -> None:
    """Backward, clip on the accumulation's last micro-batch, step (a no-op between accumulation steps)."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"DDPO loss became {loss.item()} at iteration {iteration + 1}")
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(lora_parameters(accelerator.unwrap_model(unet)), config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()


def _mean_over_processes(accelerator: Any, stats: list[list[float]]) -> list[float]:
    """Column means of one process's rows, averaged over the processes (equal shares: the global mean)."""
    means = np.mean(stats, axis=0)
    if accelerator.num_processes > 1:
        means = accelerator.reduce(torch.tensor(means, device=accelerator.device), "mean").cpu().numpy()
    return [float(m) for m in means]
