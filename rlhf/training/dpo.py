"""Diffusion-DPO (Wallace et al. 2023) with LoRA on a Stable Diffusion UNet, after diffusers' example.

The policy is the UNet with a LoRA adapter; the reference is the *starting* policy, run under ``no_grad``:
the *same* UNet with its adapters disabled, or, for a run that continues a saved adapter (``init_lora``),
the same UNet with only a frozen copy of that adapter active. Either way the policy equals the reference
at the first step. Chosen and rejected images share noise and timestep. Output layout::

    <output_dir>/checkpoints/checkpoint-<N>/  pytorch_lora_weights.safetensors + pickwise.json + training_state/
    <output_dir>/final/                       pytorch_lora_weights.safetensors + pickwise.json

``pipe.load_lora_weights(<dir>)`` loads either.

Ties (``label_0 == 0.5``, or a listwise row whose best and worst share a rank) carry no preference:
``ties="skip"`` (default) drops them; ``ties="symmetric"`` trains both orientations at half weight each,
which pulls the policy towards treating the two images alike.

Image-editing pairs (img2img, inpaint, outpaint: two edits of one source under one prompt) train the same
4-channel UNet, which never sees the source as an input: the edit pipelines bring the source in at sampling
time, by starting from its noised latents (img2img and inpaint at ``strength`` s start at timestep s x T)
and, for inpaint and outpaint, by pasting its latents back outside the mask at every step. So an edit pair
trains what sampling used: its timesteps are drawn below s x T (the larger strength of the two edits), and
its denoising errors are averaged over the repainted region only (the union of the two edits' masks, or the
outpaint border, at latent resolution; an img2img edit repaints everything), since outside it the UNet's
prediction never reaches the image. Text-to-image pairs train exactly as before. No pair is dropped: an
inpainting whose mask bytes the export lacks trains on the whole image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from diffusers.training_utils import cast_training_params
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from rlhf.training.callbacks import OnCheckpoint, notify_checkpoint
from rlhf.training.checkpoint import (
    STATE_DIR,
    check_resumable,
    checkpoint_dir,
    latest_checkpoint,
    prune_checkpoints,
    read_metadata,
)
from rlhf.training.configs import DPOConfig as DPOConfig
from rlhf.training.configs import DPOTies as DPOTies
from rlhf.training.configs import MixedPrecision as MixedPrecision
from rlhf.training.configs import sd15_dpo_preset as sd15_dpo_preset
from rlhf.training.configs import tiny_dpo_preset as tiny_dpo_preset
from rlhf.training.data import PreferenceDataset, RankedList, count_rows, decode_image
from rlhf.training.ddim import encode_prompts
from rlhf.training.lora import (
    add_lora,
    load_pipeline,
    lora_parameters,
    reference_pass,
    register_lora_state_hooks,
    save_lora_checkpoint,
    start_from_adapter,
)
from rlhf.training.losses import dpo_loss
from rlhf.training.reward_model import ImageTransform

OnLog = Callable[[int, Mapping[str, float]], None]
ShouldStop = Callable[[], bool]
OnPhase = Callable[[str], None]  # "loading_model", "training", ... (where the trainer is)
_RESUME_KEYS = ("base_model", "export_id", "seed", "lora_rank", "lora_alpha", "beta", "init_lora", "dpop_lambda",
                "likelihood_anchor")
# keys newer than some checkpoints: what those checkpoints ran with
_RESUME_ADDED = {"init_lora": "", "dpop_lambda": 0.0, "likelihood_anchor": 0.0}


@dataclass(frozen=True)
class FineTuneResult:
    lora_dir: Path  # pipe.load_lora_weights(lora_dir)
    step: int
    stopped: bool
    last_metrics: dict[str, float]


# ----------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class EditArea:
    """Where and from how far an image was edited: the repainted region and the strength it started at."""

    mask: bytes | None = None  # inpaint: the mask PNG (255 = repainted)
    outpaint: tuple[int, int, int, int] | None = None  # outpaint: px added left, top, right, bottom
    strength: float = 1.0  # img2img / inpaint: where sampling started (1: from pure noise)

    @property
    def whole(self) -> bool:
        """True when every pixel was repainted (text to image, img2img, or an inpaint without its mask)."""
        return self.mask is None and self.outpaint is None

    @classmethod
    def of(cls, row: RankedList, index: int) -> EditArea:
        edit = row.edit_of(index)
        kind = edit.get("kind", "")
        strength = float(edit.get("strength") or 1.0) if kind in ("img2img", "inpaint") else 1.0
        mask = row.mask_of(index) if kind == "inpaint" else None
        box = edit.get("outpaint") if kind == "outpaint" else None
        return cls(mask=mask or None, outpaint=tuple(int(px) for px in box) if box else None,  # type: ignore[arg-type]
                   strength=min(max(strength, 0.0), 1.0))

    def region(self, size: tuple[int, int]) -> Image.Image:
        """The repainted region of an image of ``size`` (width, height) as an "L" image (255 = repainted)."""
        if self.mask is not None:
            return decode_image(self.mask).convert("L").resize(size, Image.Resampling.NEAREST)
        region = Image.new("L", size, 255)
        if self.outpaint is not None:
            left, top, right, bottom = self.outpaint
            region.paste(0, (left, top, size[0] - right, size[1] - bottom))  # the source's own pixels, kept
        return region


Pair = tuple[str, bytes, bytes, float, tuple[EditArea, EditArea]]  # caption, chosen, rejected, weight, areas


class PreferencePairs(IterableDataset[Pair]):
    """(caption, chosen bytes, rejected bytes, weight, their edit areas) from an export's train split.

    ``skip`` drops this process's first pairs of the epoch (resuming mid-epoch; a symmetric tie is two pairs).
    """

    def __init__(self, rows: PreferenceDataset, ties: DPOTies) -> None:
        self.rows, self.ties = rows, ties
        self.skip = 0

    def __iter__(self) -> Iterator[Pair]:
        for i, pair in enumerate(self._pairs()):
            if i >= self.skip:
                yield pair

    def _pairs(self) -> Iterator[Pair]:
        for row in self.rows:
            best = int(np.argmin(row.ranks))
            worst = int(np.argmax(row.ranks))
            if row.ranks[best] != row.ranks[worst]:
                areas = (EditArea.of(row, best), EditArea.of(row, worst))
                yield row.caption, row.images[best], row.images[worst], row.weight, areas
            elif self.ties == "symmetric" and len(row.images) >= 2:
                a, b = row.images[0], row.images[1]
                areas = (EditArea.of(row, 0), EditArea.of(row, 1))
                yield row.caption, a, b, row.weight / 2, areas
                yield row.caption, b, a, row.weight / 2, areas[::-1]


def collate_pairs(items: Sequence[Pair], transform: ImageTransform) -> dict[str, Any]:
    """Pixels (chosen first, then rejected), captions and weights; for a batch holding image edits also each
    pair's repainted region (``region``, (B, 1, H, W) in {0, 1}, the union of its two edits', cropped like the
    images) and strength (``strength``, (B,), the larger of the two); None where every pair is whole / at 1."""
    chosen_images = [decode_image(i[1]) for i in items]
    chosen = torch.stack([transform(image) for image in chosen_images])
    rejected = torch.stack([transform(decode_image(i[2])) for i in items])
    areas = [i[4] for i in items]
    region = None
    if not all(a.whole and b.whole for a, b in areas):
        masks = []
        for image, (a, b) in zip(chosen_images, areas, strict=True):
            union = np.maximum(np.asarray(a.region(image.size)), np.asarray(b.region(image.size)))
            masks.append(transform(Image.fromarray(union).convert("RGB"))[:1] > 0)  # same resize and crop
        region = torch.stack(masks).float()
    strengths = [max(a.strength, b.strength) for a, b in areas]
    return {
        "captions": [i[0] for i in items],
        "pixels": torch.cat([chosen, rejected]),  # (2B, 3, H, W): chosen first, then rejected
        "weight": torch.tensor([i[3] for i in items], dtype=torch.float32),
        "region": region,
        "strength": None if all(s >= 1.0 for s in strengths) else torch.tensor(strengths, dtype=torch.float32),
    }


# ----------------------------------------------------------------------------------------------- loss
def edit_timesteps(t: Tensor, strength: Tensor | None) -> Tensor:
    """Timesteps drawn in ``[0, T)`` moved into ``[0, strength x T)`` per pair (an edit at strength s started
    sampling at s x T); unchanged without ``strength``."""
    if strength is None:
        return t
    return (t.float() * strength.to(t.device).clamp(0, 1)).long()


def region_errors(pred: Tensor, target: Tensor, region: Tensor | None) -> Tensor:
    """Per-image mean squared error ``(2B,)`` of ``pred`` against ``target`` (chosen then rejected); with
    ``region`` ``(B, 1, h, w)`` (each pair's repainted region, any resolution) the mean over the latent cells
    it covers (max-pooled: a cell with any repainted pixel counts), for chosen and rejected alike."""
    squared = F.mse_loss(pred.float(), target.float(), reduction="none")
    if region is None:
        return squared.mean(dim=(1, 2, 3))
    weights = F.adaptive_max_pool2d(region.float().to(pred.device), squared.shape[-2:]).repeat(2, 1, 1, 1)
    covered = (weights.sum(dim=(1, 2, 3)) * squared.shape[1]).clamp_min(1.0)
    return (squared * weights).sum(dim=(1, 2, 3)) / covered


def _shard_noise(like: Tensor, generator: torch.Generator, index: int, count: int) -> Tensor:
    """Noise shaped as ``like`` (chosen then rejected, ``(2B, ...)``), drawn for the global batch of ``count``
    equal shares (chosen then rejected, ``(2B * count, ...)``) and cut to share ``index``."""
    half = like.shape[0] // 2
    drawn = torch.randn((2 * half * count, *like.shape[1:]), generator=generator)
    chosen = drawn[index * half : (index + 1) * half]
    rejected = drawn[(count + index) * half : (count + index + 1) * half]
    return torch.cat([chosen, rejected]).to(like)


class DPOBatchLoss(NamedTuple):
    loss: Tensor  # scalar, to backpropagate
    accuracy: Tensor  # implicit accuracy: share of pairs the policy ranks as people did, against the reference
    margin: Tensor  # mean implicit reward margin (the log-sigmoid's argument)
    mse_chosen: Tensor  # the policy's mean denoising error on the preferred images
    chosen_error_change: Tensor  # ... minus the reference's (above 0: they grew less likely)


def dpo_batch_loss(
    unet: Any,
    noise_scheduler: Any,  # a diffusers DDPMScheduler
    latents: Tensor,
    text: Tensor,
    weight: Tensor,
    beta: float,
    generator: torch.Generator | None = None,
    reference_adapter: str | None = None,
    shard: tuple[int, int] = (0, 1),
    region: Tensor | None = None,
    strength: Tensor | None = None,
    positive: float = 0.0,
    anchor: float = 0.0,
) -> DPOBatchLoss:
    """Diffusion-DPO on latents ``(2B, ...)`` (chosen then rejected); ``positive`` is DPO-Positive's lambda,
    ``anchor`` the likelihood anchor's weight (:func:`rlhf.training.losses.dpo_loss`; with several processes
    each anchors its own share of the batch).

    The margin is the mean argument of the log-sigmoid, 0 while the policy is the reference. Noise and
    timesteps come from ``generator`` (a CPU generator), the same for chosen and rejected. The reference pass runs the
    UNet with its adapters disabled, or with only ``reference_adapter`` active (a frozen starting adapter).

    ``shard=(index, count)``: these pairs are share ``index`` of ``count`` equal shares of a global batch
    (one per process); noise and timesteps are drawn for the whole global batch and this share taken, so
    every pair gets what it would get in one process.

    Image edits: ``region`` ``(B, 1, h, w)`` weights each pair's per-element errors (the repainted region at
    any resolution; max-pooled to the latents', so a latent cell with any repainted pixel counts), and
    ``strength`` ``(B,)`` scales each pair's timestep into ``[0, strength x T)`` (the same draws, so a batch
    of text-to-image pairs gets exactly the timesteps it always did).
    """
    half = latents.shape[0] // 2
    index, count = shard
    mine = slice(index * half, (index + 1) * half)
    noise = torch.randn((half * count, *latents.shape[1:]), generator=generator)[mine]
    noise = noise.to(latents).repeat(2, 1, 1, 1)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (half * count,), generator=generator)[mine]
    t = edit_timesteps(t, strength).to(latents.device).repeat(2)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, t)
    else:
        target = noise
    cond = text.repeat(2, 1, 1)

    def errors(pred: Tensor) -> tuple[Tensor, Tensor]:
        err = region_errors(pred, target, region)
        return err[:half], err[half:]

    model_w, model_l = errors(unet(noisy, t, encoder_hidden_states=cond).sample)
    with torch.no_grad():
        base = unet.module if hasattr(unet, "module") else unet
        with reference_pass(base, reference_adapter):
            ref_w, ref_l = errors(unet(noisy, t, encoder_hidden_states=cond).sample)
    out = dpo_loss(model_w, model_l, ref_w, ref_l, beta, weight, positive=positive, anchor=anchor)
    return DPOBatchLoss(loss=out.loss, accuracy=out.implicit_accuracy, margin=out.inside_term.mean(),
                        mse_chosen=model_w.detach().mean(), chosen_error_change=out.chosen_error_change.mean())


# ----------------------------------------------------------------------------------------------- training
def train_dpo(
    config: DPOConfig,
    data_path: Path,
    output_dir: Path,
    *,
    on_log: OnLog | None = None,
    should_stop: ShouldStop | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    resume: bool = True,
    on_phase: OnPhase | None = None,
) -> FineTuneResult:
    """Run Diffusion-DPO on the export's train split; returns where the final (or stop) LoRA is.

    ``on_log(step, {"loss", "implicit_accuracy", "reward_margin", "mse_chosen", "chosen_error_change", "lr",
    "s_per_step", "pairs"})`` after every optimisation step; ``should_stop()`` polled after every step
    (saves a checkpoint, returns ``stopped=True``). ``on_checkpoint(step, checkpoint_dir)`` after every
    checkpoint under ``checkpoints/`` is written (periodic, last-step and stop ones; not ``final/``), on the main process,
    under saved random state (:mod:`rlhf.training.callbacks`); its time is left out of ``s_per_step``.
    ``on_phase(name)`` hears where it is: "loading_model", then "training".
    A non-finite loss raises FloatingPointError.
    """
    data_path, output_dir = Path(data_path), Path(output_dir)
    if not data_path.is_file():
        raise FileNotFoundError(f"preference export {data_path} does not exist")
    output_dir.mkdir(parents=True, exist_ok=True)
    log: OnLog = on_log or (lambda step, metrics: None)
    phase: OnPhase = on_phase or (lambda name: None)

    phase("loading_model")
    # --- setup: accelerator, frozen pipeline + LoRA, data, optimiser
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum, cpu=config.cpu,
        # Batches carry captions (strings), which cannot be broadcast: every process reads the stream itself.
        dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
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
    unet = pipe.unet
    add_lora(
        unet, rank=config.lora_rank, alpha=config.lora_alpha or config.lora_rank, targets=config.lora_targets
    )
    cast_training_params(unet, dtype=torch.float32)
    reference = None  # the reference pass disables the adapters: the base UNet, where a fresh LoRA starts
    if config.init_lora:  # start from the saved adapter, which a frozen copy keeps as the reference
        reference = start_from_adapter(unet, Path(config.init_lora), rank=config.lora_rank,
                                       alpha=config.lora_alpha or config.lora_rank, targets=config.lora_targets,
                                       keep_reference=True)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    transform = ImageTransform(config.resolution, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # -> [-1, 1]
    # The whole stream here; the prepared loader gives each process its share of every global batch, and ends
    # each epoch's last gradient accumulation with the epoch (an unprepared loader let it run into the next).
    processes, rank = accelerator.num_processes, accelerator.process_index
    if config.batch_size % processes:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {processes} processes")
    rows = PreferenceDataset(
        data_path, "train", shuffle_buffer=config.shuffle_buffer, seed=config.seed,
        drop_ties=config.ties == "skip",
    )  # fmt: skip
    if count_rows(data_path, "train") == 0:
        raise ValueError(f"{data_path} has no rows in the train split")
    pair_stream = PreferencePairs(rows, config.ties)
    loader = DataLoader(
        pair_stream,
        batch_size=config.batch_size // processes,  # this process's share of the global micro-batch
        collate_fn=lambda b: collate_pairs(b, transform),
    )
    optimizer = torch.optim.AdamW(lora_parameters(unet), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    register_lora_state_hooks(accelerator, accelerator.unwrap_model)
    unet, optimizer, scheduler, loader = accelerator.prepare(unet, optimizer, scheduler, loader)

    # --- resume
    step, epoch, pairs_in_epoch, micro_step = 0, 0, 0, 0
    latest = latest_checkpoint(output_dir) if resume else None
    if latest is not None:
        meta = read_metadata(latest)
        check_resumable(latest, meta, config, _RESUME_KEYS, _RESUME_ADDED)
        accelerator.load_state(str(latest / STATE_DIR))
        step, epoch, pairs_in_epoch = meta["step"], meta["epoch"], meta["pairs_in_epoch"]
        micro_step = meta["micro_step"]
    # Checkpoints are written only after an optimisation step, so the resumed run starts a fresh accumulation
    # window; accelerate's own micro-batch counter (saved with the state, and reset by the prepared loader
    # at each epoch's end) must agree, or the first step after a resume would accumulate the wrong count.
    accelerator.step = 0

    def checkpoint(directory: Path, with_state: bool, metrics: dict[str, float]) -> None:
        save_lora_checkpoint(
            accelerator, unet, directory, kind="dpo", config=config, seed=config.seed, step=step,
            export_id=config.export_id, with_state=with_state,
            extra={"epoch": epoch, "pairs_in_epoch": pairs_in_epoch, "micro_step": micro_step, "metrics": metrics},
        )  # fmt: skip

    # --- train
    phase("training")
    unet.train()
    stopped, last = False, {}
    micro: list[tuple[float, float, float, float, float, int]] = []
    tick = time.perf_counter()
    while step < config.max_steps and not stopped:
        rows.set_epoch(epoch)
        pair_stream.skip = pairs_in_epoch * accelerator.num_processes  # the stream's pairs all processes consumed
        batches = 0
        for batch in loader:
            batches += 1
            with accelerator.accumulate(unet):
                with torch.no_grad():
                    pixels = batch["pixels"].to(accelerator.device, weight_dtype)
                    # every micro-batch draws from its own generator, so a resumed run repeats the noise exactly
                    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + micro_step)
                    micro_step += 1
                    posterior = pipe.vae.encode(pixels).latent_dist
                    noise = _shard_noise(posterior.mean, generator, rank, processes)
                    latents = (posterior.mean + posterior.std * noise) * pipe.vae.config.scaling_factor
                    text = encode_prompts(pipe, batch["captions"])
                with accelerator.autocast():
                    out = dpo_batch_loss(
                        unet,
                        noise_scheduler,
                        latents,
                        text,
                        batch["weight"].to(accelerator.device),
                        config.beta,
                        generator,
                        reference_adapter=reference,
                        shard=(rank, processes),
                        region=batch["region"],
                        strength=batch["strength"],
                        positive=config.dpop_lambda,
                        anchor=config.likelihood_anchor,
                    )
                if not torch.isfinite(out.loss):
                    raise FloatingPointError(
                        f"DPO loss became {out.loss.item()} at step {step + 1}; lower lr or beta"
                    )
                accelerator.backward(out.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(
                        lora_parameters(accelerator.unwrap_model(unet)), config.max_grad_norm
                    )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro.append((out.loss.item(), out.accuracy.item(), out.margin.item(), out.mse_chosen.item(),
                          out.chosen_error_change.item(), len(batch["captions"])))
            pairs_in_epoch += len(batch["captions"])  # pairs this process consumed
            if not accelerator.sync_gradients:
                continue

            # --- one optimisation step done: log, checkpoint, maybe stop
            step += 1
            now = time.perf_counter()
            means = np.mean(micro, axis=0)
            if processes > 1:  # every process's share: the global batch's means and pair count
                means = accelerator.reduce(torch.tensor(means, device=accelerator.device), "mean").cpu().numpy()
                means[5] *= processes
            last = {
                "loss": float(means[0]), "implicit_accuracy": float(means[1]), "reward_margin": float(means[2]),
                "mse_chosen": float(means[3]), "chosen_error_change": float(means[4]),
                "lr": float(scheduler.get_last_lr()[0]), "s_per_step": now - tick,
                "pairs": float(means[5] * len(micro)),  # pairs (all processes) accumulated into the step
            }  # fmt: skip
            micro, tick = [], now
            log(step, last)
            stopped = bool(should_stop and should_stop())
            if (
                stopped
                or (config.checkpoint_every and step % config.checkpoint_every == 0)
                or step >= config.max_steps
            ):
                checkpoint(checkpoint_dir(output_dir, step), True, last)
                prune_checkpoints(output_dir, config.keep_last)
                if accelerator.is_main_process:
                    started = time.perf_counter()
                    notify_checkpoint(on_checkpoint, step, checkpoint_dir(output_dir, step))
                    tick += time.perf_counter() - started  # the callback's time is not the next step's
            if stopped or step >= config.max_steps:
                break
        else:
            if batches == 0 and pairs_in_epoch == 0:  # e.g. only ties with ties="skip"
                raise ValueError(f"{data_path}: the train split yields no usable pairs")
            epoch, pairs_in_epoch = epoch + 1, 0

    if stopped:
        return FineTuneResult(checkpoint_dir(output_dir, step), step, True, last)
    final = output_dir / "final"
    checkpoint(final, False, last)
    return FineTuneResult(final, step, False, last)


