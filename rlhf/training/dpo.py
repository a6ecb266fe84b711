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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from diffusers.training_utils import cast_training_params
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
from rlhf.training.data import PreferenceDataset, count_rows, decode_image
from rlhf.training.ddim import encode_prompts
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
from rlhf.training.losses import dpo_loss
from rlhf.training.reward_model import ImageTransform

MixedPrecision = Literal["no", "fp16", "bf16"]
DPOTies = Literal["skip", "symmetric"]
OnLog = Callable[[int, Mapping[str, float]], None]
ShouldStop = Callable[[], bool]
_RESUME_KEYS = ("base_model", "export_id", "seed", "lora_rank", "lora_alpha", "beta", "init_lora")
_RESUME_ADDED = {"init_lora": ""}  # keys newer than some checkpoints: what those checkpoints ran with


@dataclass(frozen=True)
class DPOConfig:
    base_model: str  # diffusers StableDiffusionPipeline directory (save_pretrained layout)
    export_id: str = ""  # the preference export, recorded in every checkpoint
    beta: float = 5000.0  # KL strength (paper: 2000-5000 for SD 1.5, 5000 for SDXL)
    lr: float = 1e-5  # AdamW learning rate on the LoRA parameters
    weight_decay: float = 1e-2
    lora_rank: int = 8
    lora_alpha: int | None = None  # None: equal to the rank (scale 1)
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    # A saved adapter directory (save_lora's layout) the trained LoRA starts from, and the frozen reference
    # is a copy of; "" starts fresh against the base UNet. lora_rank, lora_alpha and lora_targets must be
    # the adapter's (the presets take them from it).
    init_lora: str = ""
    max_steps: int = 2000  # optimisation steps
    batch_size: int = 4  # pairs per micro-batch per process
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: MixedPrecision = "no"  # frozen weights in this dtype; LoRA weights stay float32
    seed: int = 0
    resolution: int = 512  # training images are resized (short side) and centre-cropped to this
    ties: DPOTies = "skip"
    checkpoint_every: int = 500  # optimisation steps between checkpoints (0: only at the end or on stop)
    keep_last: int = 2  # checkpoints that keep their resumable training state
    shuffle_buffer: int = 512
    cpu: bool = False  # force the CPU even where a GPU exists

    def __post_init__(self) -> None:
        for name, choices in (("mixed_precision", MixedPrecision), ("ties", DPOTies)):
            if getattr(self, name) not in get_args(choices):
                raise ValueError(f"{name} must be one of {get_args(choices)}, not {getattr(self, name)!r}")
        if not (Path(self.base_model) / "model_index.json").is_file():
            raise ValueError(
                f"base_model {self.base_model!r} is not a diffusers pipeline directory (no model_index.json)"
            )
        for name in (
            "beta",
            "lr",
            "lora_rank",
            "max_steps",
            "batch_size",
            "grad_accum",
            "resolution",
            "max_grad_norm",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, not {self.resolution}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0 or None, not {self.lora_alpha!r}")
        for name in ("weight_decay", "checkpoint_every", "keep_last", "shuffle_buffer"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if not self.lora_targets:
            raise ValueError("lora_targets must name at least one module")
        if self.init_lora:
            check_init_lora(self.init_lora, rank=self.lora_rank, alpha=self.lora_alpha or self.lora_rank,
                            targets=self.lora_targets)


def sd15_dpo_preset(base_model: str, **overrides: Any) -> DPOConfig:
    """Diffusion-DPO LoRA on SD 1.5 (diffusers example): beta 5000, lr 1e-5, rank 8, fp16, 512 px."""
    base: dict[str, Any] = {
        "beta": 5000.0,
        "lr": 1e-5,
        "lora_rank": 8,
        "mixed_precision": "fp16",
        "resolution": 512,
        **init_lora_hyperparameters(overrides.get("init_lora", "")),
    }
    return DPOConfig(base_model=base_model, **{**base, **overrides})


def tiny_dpo_preset(base_model: str, **overrides: Any) -> DPOConfig:
    """For small models on a CPU: the tiny test pipeline, the shipped shapes model (about 2 minutes there)."""
    base: dict[str, Any] = {
        "beta": 500.0, "lr": 1e-3, "lora_rank": 4, "resolution": 32, "batch_size": 8,
        "max_steps": 300, "checkpoint_every": 0, "shuffle_buffer": 64, "weight_decay": 0.0,
        **init_lora_hyperparameters(overrides.get("init_lora", "")),
    }  # fmt: skip
    return DPOConfig(base_model=base_model, **{**base, **overrides})


@dataclass(frozen=True)
class FineTuneResult:
    lora_dir: Path  # pipe.load_lora_weights(lora_dir)
    step: int
    stopped: bool
    last_metrics: dict[str, float]


# ----------------------------------------------------------------------------------------------- data
class PreferencePairs(IterableDataset[tuple[str, bytes, bytes, float]]):
    """(caption, chosen bytes, rejected bytes, weight) from an export's train split.

    ``skip`` drops this process's first pairs of the epoch (resuming mid-epoch; a symmetric tie is two pairs).
    """

    def __init__(self, rows: PreferenceDataset, ties: DPOTies) -> None:
        self.rows, self.ties = rows, ties
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[str, bytes, bytes, float]]:
        for i, pair in enumerate(self._pairs()):
            if i >= self.skip:
                yield pair

    def _pairs(self) -> Iterator[tuple[str, bytes, bytes, float]]:
        for row in self.rows:
            best = int(np.argmin(row.ranks))
            worst = int(np.argmax(row.ranks))
            if row.ranks[best] != row.ranks[worst]:
                yield row.caption, row.images[best], row.images[worst], row.weight
            elif self.ties == "symmetric" and len(row.images) >= 2:
                a, b = row.images[0], row.images[1]
                yield row.caption, a, b, row.weight / 2
                yield row.caption, b, a, row.weight / 2


def _collate(items: Sequence[tuple[str, bytes, bytes, float]], transform: ImageTransform) -> dict[str, Any]:
    chosen = torch.stack([transform(decode_image(i[1])) for i in items])
    rejected = torch.stack([transform(decode_image(i[2])) for i in items])
    return {
        "captions": [i[0] for i in items],
        "pixels": torch.cat([chosen, rejected]),  # (2B, 3, H, W): chosen first, then rejected
        "weight": torch.tensor([i[3] for i in items], dtype=torch.float32),
    }


# ----------------------------------------------------------------------------------------------- loss
def dpo_batch_loss(
    unet: Any,
    noise_scheduler: Any,  # a diffusers DDPMScheduler
    latents: Tensor,
    text: Tensor,
    weight: Tensor,
    beta: float,
    generator: torch.Generator | None = None,
    reference_adapter: str | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Diffusion-DPO on latents ``(2B, ...)`` (chosen then rejected).

    Returns (loss, implicit accuracy, implicit reward margin, model MSE on the chosen images); the margin is
    the mean argument of the log-sigmoid, 0 while the policy is the reference. Noise and timesteps come
    from ``generator`` (a CPU generator), the same for chosen and rejected. The reference pass runs the
    UNet with its adapters disabled, or with only ``reference_adapter`` active (a frozen starting adapter).
    """
    half = latents.shape[0] // 2
    noise = torch.randn(latents[:half].shape, generator=generator).to(latents).repeat(2, 1, 1, 1)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (half,), generator=generator)
    t = t.to(latents.device).repeat(2)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, t)
    else:
        target = noise
    cond = text.repeat(2, 1, 1)

    def errors(pred: Tensor) -> tuple[Tensor, Tensor]:
        err = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return err[:half], err[half:]

    model_w, model_l = errors(unet(noisy, t, encoder_hidden_states=cond).sample)
    with torch.no_grad():
        base = unet.module if hasattr(unet, "module") else unet
        with reference_pass(base, reference_adapter):
            ref_w, ref_l = errors(unet(noisy, t, encoder_hidden_states=cond).sample)
    out = dpo_loss(model_w, model_l, ref_w, ref_l, beta, weight)
    return out.loss, out.implicit_accuracy, out.inside_term.mean(), model_w.detach().mean()


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
) -> FineTuneResult:
    """Run Diffusion-DPO on the export's train split; returns where the final (or stop) LoRA is.

    ``on_log(step, {"loss", "implicit_accuracy", "reward_margin", "mse_chosen", "lr", "s_per_step", "pairs"})`` after every
    optimisation step; ``should_stop()`` polled after every step (saves a checkpoint, returns
    ``stopped=True``). ``on_checkpoint(step, checkpoint_dir)`` after every checkpoint under
    ``checkpoints/`` is written (periodic, last-step and stop ones; not ``final/``), on the main process,
    under saved random state (:mod:`rlhf.training.callbacks`); its time is left out of ``s_per_step``.
    A non-finite loss raises FloatingPointError.
    """
    data_path, output_dir = Path(data_path), Path(output_dir)
    if not data_path.is_file():
        raise FileNotFoundError(f"preference export {data_path} does not exist")
    output_dir.mkdir(parents=True, exist_ok=True)
    log: OnLog = on_log or (lambda step, metrics: None)

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
    rows = PreferenceDataset(
        data_path, "train", shuffle_buffer=config.shuffle_buffer, seed=config.seed,
        drop_ties=config.ties == "skip",
    )  # fmt: skip
    if count_rows(data_path, "train") == 0:
        raise ValueError(f"{data_path} has no rows in the train split")
    pair_stream = PreferencePairs(rows, config.ties)
    loader = DataLoader(
        pair_stream,
        batch_size=config.batch_size,
        collate_fn=lambda b: _collate(b, transform),
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
    unet.train()
    stopped, last = False, {}
    micro: list[tuple[float, float, float, float, int]] = []
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
                    noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)
                    latents = (posterior.mean + posterior.std * noise) * pipe.vae.config.scaling_factor
                    text = encode_prompts(pipe, batch["captions"])
                with accelerator.autocast():
                    loss, accuracy, margin, mse = dpo_batch_loss(
                        unet,
                        noise_scheduler,
                        latents,
                        text,
                        batch["weight"].to(accelerator.device),
                        config.beta,
                        generator,
                        reference_adapter=reference,
                    )
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"DPO loss became {loss.item()} at step {step + 1}; lower lr or beta"
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(
                        lora_parameters(accelerator.unwrap_model(unet)), config.max_grad_norm
                    )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro.append((loss.item(), accuracy.item(), margin.item(), mse.item(), len(batch["captions"])))
            pairs_in_epoch += len(batch["captions"])  # pairs this process consumed
            if not accelerator.sync_gradients:
                continue

            # --- one optimisation step done: log, checkpoint, maybe stop
            step += 1
            now = time.perf_counter()
            means = np.mean(micro, axis=0)
            last = {
                "loss": float(means[0]), "implicit_accuracy": float(means[1]), "reward_margin": float(means[2]),
                "mse_chosen": float(means[3]), "lr": float(scheduler.get_last_lr()[0]), "s_per_step": now - tick,
                "pairs": float(sum(m[4] for m in micro)),  # pairs this process accumulated into the step
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


