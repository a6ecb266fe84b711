"""DDIM with log-probabilities (ddpo-pytorch's ``ddim_step_with_logprob``), and a sampling loop recording them.

A DDIM step with ``eta > 0`` is a Gaussian policy: ``x_{t-1} ~ N(mean(x_t, eps_theta), std_t^2 I)`` with
``std_t = eta * sqrt(variance(t, t_prev))`` (Song et al. 2021, eq. 16). DDPO optimises the log-density of
the drawn ``x_{t-1}`` under that Gaussian.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from rlhf.training.losses import log_normal_density


@dataclass(frozen=True)
class DDIMStep:
    prev_sample: Tensor  # x_{t-1}, drawn (or the given one)
    log_prob: Tensor  # (B,) log N(prev_sample; mean, std^2), summed or averaged over non-batch dims
    mean: Tensor  # the Gaussian's mean, same shape as the sample
    std: Tensor  # (B, 1, 1, 1) the Gaussian's standard deviation


def _per_sample(values: Tensor, t: Tensor | int, batch: int, ndim: int) -> Tensor:
    idx = torch.as_tensor(t, device=values.device).long().reshape(-1)
    gathered = values[idx.clamp_min(0)]
    if idx.numel() == 1:
        gathered = gathered.expand(batch)
    return gathered.reshape(batch, *([1] * (ndim - 1)))


def ddim_step_mean_std(
    scheduler: Any,  # a diffusers DDIMScheduler
    model_output: Tensor,
    timestep: Tensor | int,
    sample: Tensor,
    eta: float,
) -> tuple[Tensor, Tensor]:
    """Mean and std of the DDIM transition ``p(x_{t-1} | x_t)``; ``timestep`` is a scalar or ``(B,)``."""
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(...) before stepping")
    cfg = scheduler.config
    batch, ndim = sample.shape[0], sample.dim()
    t = torch.as_tensor(timestep, device=sample.device).long()
    prev_t = t - cfg.num_train_timesteps // scheduler.num_inference_steps
    alphas = scheduler.alphas_cumprod.to(device=sample.device, dtype=torch.float32)
    alpha_t = _per_sample(alphas, t, batch, ndim)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, device=sample.device, dtype=torch.float32)
    prev_idx = prev_t.reshape(-1).expand(batch) if prev_t.numel() == 1 else prev_t.reshape(-1)
    alpha_prev = torch.where(prev_idx >= 0, alphas[prev_idx.clamp_min(0)], final).reshape(
        batch, *([1] * (ndim - 1))
    )
    beta_t = 1 - alpha_t

    out = model_output.float()
    x = sample.float()
    if cfg.prediction_type == "epsilon":
        x0, eps = (x - beta_t.sqrt() * out) / alpha_t.sqrt(), out
    elif cfg.prediction_type == "v_prediction":
        x0, eps = alpha_t.sqrt() * x - beta_t.sqrt() * out, alpha_t.sqrt() * out + beta_t.sqrt() * x
    elif cfg.prediction_type == "sample":
        x0, eps = out, (x - alpha_t.sqrt() * out) / beta_t.sqrt()
    else:
        raise ValueError(f"unsupported prediction_type {cfg.prediction_type!r}")
    if cfg.thresholding:
        raise ValueError("dynamic thresholding is not supported with log-probabilities")
    if cfg.clip_sample:
        x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)

    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.clamp_min(0).sqrt()
    mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - std**2).clamp_min(0).sqrt() * eps
    return mean, std


def ddim_step_with_logprob(
    scheduler: Any,  # a diffusers DDIMScheduler
    model_output: Tensor,
    timestep: Tensor | int,
    sample: Tensor,
    eta: float,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    prev_sample: Tensor | None = None,
    reduction: Literal["sum", "mean"] = "sum",
) -> tuple[Tensor, Tensor]:
    """One DDIM step ``x_t -> x_{t-1}`` returning ``(prev_sample, log_prob)``.

    With ``prev_sample=None`` the next sample is drawn as ``mean + std * noise`` (noise from
    ``generator``); otherwise the given sample's log-probability is computed (DDPO's training pass).
    ``log_prob`` is ``log N(prev_sample; mean, std^2)``: its sum over the latent's elements (the exact
    log-density, ``reduction="sum"``) or their mean (ddpo-pytorch's convention, ``"mean"``).
    """
    step = ddim_step_full(scheduler, model_output, timestep, sample, eta, generator, prev_sample, reduction)
    return step.prev_sample, step.log_prob


def ddim_step_full(
    scheduler: Any,  # a diffusers DDIMScheduler
    model_output: Tensor,
    timestep: Tensor | int,
    sample: Tensor,
    eta: float,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    prev_sample: Tensor | None = None,
    reduction: Literal["sum", "mean"] = "sum",
) -> DDIMStep:
    """:func:`ddim_step_with_logprob` that also returns the Gaussian's mean and std."""
    if eta <= 0:
        raise ValueError(f"eta must be > 0 for a stochastic step with a log-probability, not {eta}")
    mean, std = ddim_step_mean_std(scheduler, model_output, timestep, sample, eta)
    if bool((std <= 0).any()):
        raise ValueError("the DDIM step has zero variance (set_alpha_to_one=True at the last step?)")
    if prev_sample is None:
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        prev_sample = mean + std * noise
    log_prob = log_normal_density(prev_sample.detach().float(), mean, std)
    dims = tuple(range(1, log_prob.dim()))
    log_prob = log_prob.sum(dim=dims) if reduction == "sum" else log_prob.mean(dim=dims)
    return DDIMStep(prev_sample.to(sample.dtype), log_prob, mean, std)


# ----------------------------------------------------------------------------------------------- sampling
@dataclass
class Trajectory:
    """What DDPO needs from a sampling run, per image and denoising step."""

    latents: Tensor  # (B, T + 1, C, h, w): x_T ... x_0
    log_probs: Tensor  # (B, T) log-prob (mean over elements) of each drawn x_{t-1}
    timesteps: Tensor  # (T,) the scheduler's timesteps
    prompt_embeds: Tensor  # (B, L, D) conditional text embeddings
    images: Tensor  # (B, 3, H, W) decoded, in [0, 1]


def encode_prompts(pipe: Any, prompts: Sequence[str]) -> Tensor:
    """Text-encoder hidden states for prompts (the conditioning a UNet cross-attends to)."""
    tokens = pipe.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipe.text_encoder.device)
    hidden: Tensor = pipe.text_encoder(tokens)[0]
    return hidden


def guided_noise(
    unet: Any, latents: Tensor, t: Tensor, cond: Tensor, uncond: Tensor | None, scale: float
) -> Tensor:
    """Classifier-free guided noise prediction (plain conditional prediction when ``uncond`` is None)."""
    if uncond is None:
        out: Tensor = unet(latents, t, encoder_hidden_states=cond).sample
        return out
    both = unet(torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    eps_uncond, eps_cond = both.chunk(2)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def decode_latents(pipe: Any, latents: Tensor) -> Tensor:
    """VAE decode to images in [0, 1], one latent at a time (batch-invariant)."""
    vae = pipe.vae
    images = [vae.decode(lat[None] / vae.config.scaling_factor).sample for lat in latents.to(vae.dtype)]
    return (torch.cat(images).float() / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def sample_with_logprob(
    pipe: Any,
    scheduler: Any,  # a diffusers DDIMScheduler
    prompts: Sequence[str],
    *,
    seeds: Sequence[int],
    num_steps: int,
    guidance_scale: float,
    eta: float,
    resolution: int,
    negative_prompt: str = "",
) -> Trajectory:
    """Sample with DDIM at ``eta > 0`` and CFG, recording every latent and the log-prob of each step.

    Each image has its own CPU generator seeded with its seed (initial latent and step noise), so a
    trajectory does not depend on its batch neighbours' noise.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    device = pipe.unet.device
    cond = encode_prompts(pipe, prompts)
    uncond = encode_prompts(pipe, [negative_prompt] * len(prompts)) if guidance_scale > 1 else None
    scheduler.set_timesteps(num_steps, device=device)
    side = resolution // pipe.vae_scale_factor
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    shape = (pipe.unet.config.in_channels, side, side)
    latents = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device, pipe.unet.dtype)
    latents = latents * scheduler.init_noise_sigma
    all_latents, all_log_probs = [latents], []
    for t in scheduler.timesteps:
        eps = guided_noise(
            pipe.unet, scheduler.scale_model_input(latents, t), t, cond, uncond, guidance_scale
        )
        mean, std = ddim_step_mean_std(scheduler, eps, t, latents, eta)
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
        prev = (mean + std * noise).to(latents.dtype)
        log_prob = log_normal_density(prev.float(), mean, std).mean(dim=(1, 2, 3))
        latents = prev
        all_latents.append(latents)
        all_log_probs.append(log_prob)
    return Trajectory(
        latents=torch.stack(all_latents, dim=1),
        log_probs=torch.stack(all_log_probs, dim=1),
        timesteps=scheduler.timesteps.clone(),
        prompt_embeds=cond,
        images=decode_latents(pipe, latents),
    )
