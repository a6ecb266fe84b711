"""Diffusion-DPO's implicit accuracy on held-out pairs: how well a trained LoRA fits labels it never saw.

DPO's implicit reward of an image is how much better the policy denoises it than the reference does; a
pair is fitted when the chosen image's implicit reward beats the rejected one's, i.e. when the argument of
DPO's log-sigmoid (``rlhf.training.losses.dpo_loss``'s ``inside``) is positive. Training logs that on its
own batches; here it is measured on another split of the export (the round's validation captions), with
the pairs built as training builds them (best against worst of each row, ties skipped), the images
encoded to their posterior means, and each pair's argument averaged over ``draws`` noise and timestep
draws (shared by the two images, as in training) from fixed seeds, so the figure is reproducible.

A pair whose mean argument is exactly 0 (the policy is the reference) counts half, so a LoRA that learnt
nothing scores 0.5, not 0 as training's per-batch figure does. Django-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler

from rlhf.training.data import PreferenceDataset, Split, count_rows
from rlhf.training.ddim import encode_prompts
from rlhf.training.dpo import DPOConfig, PreferencePairs, collate_pairs, edit_timesteps, region_errors
from rlhf.training.lora import (
    add_frozen_adapter,
    add_lora,
    load_lora_into_unet,
    load_pipeline,
    reference_pass,
)
from rlhf.training.losses import dpo_loss
from rlhf.training.reward_model import ImageTransform


@dataclass(frozen=True)
class HeldOutFit:
    right: float  # pairs with a positive mean margin, plus half of those at exactly 0
    n: int  # held-out pairs
    margin: float  # mean over the pairs of the mean margin (DPO's log-sigmoid argument, beta included)

    @property
    def accuracy(self) -> float | None:
        return self.right / self.n if self.n else None


@torch.no_grad()
def heldout_implicit_accuracy(config: DPOConfig, lora_dir: Path | str, data_path: Path | str, *,
                              split: Split = "validation", draws: int = 8, batch_size: int = 16,
                              seed: int = 0) -> HeldOutFit:
    """The implicit accuracy of the LoRA in ``lora_dir`` (trained with ``config``) on ``split`` of the export
    at ``data_path``, against the run's reference: the base UNet, or the adapter the run started from
    (``config.init_lora``). ``HeldOutFit(n=0)`` when the split has no untied pairs."""
    if draws < 1 or batch_size < 1:
        raise ValueError("draws and batch_size must be at least 1")
    data_path = Path(data_path)
    pairs = list(PreferencePairs(PreferenceDataset(data_path, split, drop_ties=True), "skip")) if count_rows(
        data_path, split) else []
    if not pairs:
        return HeldOutFit(right=0.0, n=0, margin=0.0)
    device = torch.device("cuda" if torch.cuda.is_available() and not config.cpu else "cpu")
    pipe: Any = load_pipeline(config.base_model)
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.to(device, dtype=torch.float32)
    unet = pipe.unet
    alpha = config.lora_alpha or config.lora_rank
    add_lora(unet, rank=config.lora_rank, alpha=alpha, targets=config.lora_targets)
    reference = None
    if config.init_lora:
        reference = add_frozen_adapter(unet, Path(config.init_lora), rank=config.lora_rank, alpha=alpha,
                                       targets=config.lora_targets)
    load_lora_into_unet(unet, Path(lora_dir))
    unet.eval()
    scheduler: Any = DDPMScheduler.from_config(pipe.scheduler.config)
    transform = ImageTransform(config.resolution, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    margins: list[float] = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        collated = collate_pairs(batch, transform)  # chosen first, then rejected; edits' regions and strengths
        pixels = collated["pixels"].to(device)
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        text = encode_prompts(pipe, [pair[0] for pair in batch]).repeat(2, 1, 1)
        total = torch.zeros(len(batch))
        for draw in range(draws):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + start * draws + draw)
            total += _margins(unet, scheduler, latents, text, config.beta, generator, reference,
                              region=collated["region"], strength=collated["strength"])
        margins.extend((total / draws).tolist())
    right = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins)
    return HeldOutFit(right=right, n=len(margins), margin=sum(margins) / len(margins))


def _margins(unet: Any, scheduler: Any, latents: torch.Tensor, text: torch.Tensor, beta: float,
             generator: torch.Generator, reference: str | None, *, region: torch.Tensor | None = None,
             strength: torch.Tensor | None = None) -> torch.Tensor:
    """DPO's per-pair log-sigmoid argument at one noise and timestep draw (chosen latents first); image edits'
    errors over their repainted ``region`` at timesteps below their ``strength``, as training has them."""
    half = latents.shape[0] // 2
    noise = torch.randn(latents[:half].shape, generator=generator).to(latents).repeat(2, 1, 1, 1)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (half,), generator=generator)
    t = edit_timesteps(t, strength).to(latents.device).repeat(2)
    noisy = scheduler.add_noise(latents, noise, t)
    target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise

    def errors() -> tuple[torch.Tensor, torch.Tensor]:
        err = region_errors(unet(noisy, t, encoder_hidden_states=text).sample, target, region)
        return err[:half], err[half:]

    model_w, model_l = errors()
    with reference_pass(unet, reference):
        ref_w, ref_l = errors()
    return dpo_loss(model_w, model_l, ref_w, ref_l, beta).inside_term.cpu()
