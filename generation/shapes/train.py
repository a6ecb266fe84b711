"""Train the shapes-world model from scratch: ``python -m generation.shapes.train [--preset cpu]``.

Phases (each resumable; a finished phase is skipped on restart):
1. VAE: AutoencoderKL on freshly rendered images (random crops first, which are 4x cheaper,
   then full 64x64 images; shape pixels weigh ``shape_weight``); saved to ``<run_dir>/vae`` with
   its latent scaling factor.
1b. Decoder (optional, ``--finetune-decoder STEPS``, may run alongside phase 3): the decoder alone
   trains further with the encoder frozen, into ``<run_dir>/vae_ft``; export prefers it.
2. Cache: a pool of rendered training examples is encoded once by the frozen VAE
   (``<run_dir>/cache.pt``: latents and token ids).
3. Diffusion: UNet and text encoder from scratch on the cached latents, v-prediction, caption
   dropout for classifier-free guidance, EMA weights; ``<run_dir>/checkpoint.pt`` is written every
   ``ckpt_every`` steps and a run restarts from it. Stops at ``steps`` or after ``max_minutes``.
Then ``export_pipeline`` writes a diffusers directory (EMA weights) that
``StableDiffusionPipeline.from_pretrained`` loads.

The shipped weights (generation/weights/shapes/) came from the ``gpu`` preset on one H200: about
nine minutes in all (bench/gpu_checks.sh runs it and returns the export). On the shared 2-core CPU::

    python -m generation.shapes.train --preset cpu                      # phases 1-3, about 100 minutes
    python -m generation.shapes.train --preset cpu --finetune-decoder 6000 --max-minutes 45   # alongside phase 3
    python -m generation.shapes.train --preset cpu --export generation/weights/shapes

The CPU preset sees about a sixth of the GPU run's training examples (6,000 steps of 64 against
4,023 of 512); expect weaker adherence from it than from the shipped weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from tqdm import tqdm
from transformers import CLIPTokenizer

from generation.shapes.model import (
    ModelConfig,
    assemble_pipeline,
    build_text_encoder,
    build_train_scheduler,
    build_unet,
    build_vae,
)
from generation.shapes.tokenizer import MAX_LENGTH, build_tokenizer
from generation.shapes.world import BACKGROUNDS, HELD_OUT_PAIRS, make_examples

Device = Literal["cpu", "cuda"]
DEVICES: tuple[str, ...] = ("cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; recorded in every checkpoint."""

    run_dir: str = "var/shapes_run"  # checkpoints, VAE, latent cache
    seed: int = 0
    device: Device = "cpu"
    num_threads: int = 1  # torch CPU threads (the dev machine is shared)
    loader_workers: int = 4  # processes rendering training images ahead of a GPU (unused on the CPU)
    model: ModelConfig = field(default_factory=ModelConfig)
    # phase 1: VAE
    vae_steps: int = 2600
    vae_batch: int = 16
    vae_crop: int = 32  # side of the random crops used for the first vae_crop_fraction of steps
    vae_crop_fraction: float = 0.85
    vae_minutes: float | None = None  # a wall-clock budget: then crops and lr follow the elapsed share of it
    vae_lr: float = 2e-3
    # A VAE directory (another run's, or a pipeline's ``vae/``) used instead of training one: phase 1 copies it
    # in, so the diffusion phase learns against a decoder whose limits are already measured.
    vae_from: str = ""
    kl_weight: float = 1e-5  # weight of the mean per-element KL term (a nearly deterministic autoencoder)
    shape_weight: float = (
        10.0  # loss weight of shape pixels (they are few; unweighted, colours are not learnt)
    )
    # phase 2: cached latents
    pool_size: int = 20_000  # rendered training examples, encoded once
    # phase 3: diffusion
    steps: int = 6_000  # about 0.9 s a step on one CPU core at batch 64 (16x16 latents)
    max_minutes: float = 95.0  # wall-clock limit of this phase in one process (checkpoint, then stop)
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.995
    caption_dropout: float = 0.1  # share of empty captions, for classifier-free guidance
    grad_clip: float = 1.0
    ckpt_every: int = 100
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {self.device!r}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError("caption_dropout must be in [0, 1)")
        if not 0 < self.ema_decay < 1:
            raise ValueError("ema_decay must be in (0, 1)")
        if self.vae_minutes is not None and self.vae_minutes <= 0:
            raise ValueError(f"vae_minutes must be positive (or None: no time budget), not {self.vae_minutes}")


def cpu_recipe() -> TrainConfig:
    """The recipe on a shared 2-core CPU (about 1 hour 45 minutes)."""
    return TrainConfig(num_threads=1)


def gpu_recipe() -> TrainConfig:
    """The same model on a GPU, bigger batches and pool: the shipped weights (4,023 steps, ~9 minutes on an H200)."""
    return TrainConfig(
        run_dir="var/shapes_run_gpu", device="cuda", vae_steps=3000, vae_batch=96, pool_size=200_000,
        steps=30_000, max_minutes=4.0, batch_size=512, ckpt_every=1000, log_every=250,
    )  # fmt: skip


def smoke_recipe(run_dir: str) -> TrainConfig:
    """A few steps of every phase (tests, and a check that the loss falls)."""
    return TrainConfig(
        run_dir=run_dir, vae_steps=20, vae_batch=8, pool_size=256, steps=30, batch_size=16,
        ckpt_every=10, log_every=5, warmup_steps=5,
    )  # fmt: skip


PRESETS = {"cpu": cpu_recipe, "gpu": gpu_recipe}


# --- pure pieces ------------------------------------------------------------------------------


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def shape_pixels(images: np.ndarray) -> torch.Tensor:
    """N x 1 x H x W float mask of the pixels painted by a shape (any colour not in the background palette)."""
    palette = np.array(list(BACKGROUNDS.values()), dtype=np.uint8)
    is_background = (images[:, :, :, None, :] == palette).all(-1).any(-1)
    return torch.from_numpy(~is_background).float()[:, None]


def vae_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    kl: torch.Tensor,
    kl_weight: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pixel weighted (squared + absolute) error, plus kl_weight times the mean per-element KL."""
    err = (recon - target).pow(2) + (recon - target).abs()
    if weight is not None:
        err = err * weight
    return err.mean() + kl_weight * kl.mean()


def diffusion_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet predicts under the scheduler's prediction_type."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unknown prediction_type {kind!r}")


def lr_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up, then constant (EMA weights do the averaging; a run may stop any time)."""
    return min(1.0, (step + 1) / max(1, warmup_steps))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)  # noqa: S607
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def _log(message: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stdout)
    sys.stdout.flush()


class _Steps(torch.utils.data.IterableDataset):
    """``make(step)`` for steps 0..n-1; with k loader workers, worker i makes steps i, i+k, ... (the
    loader takes one item from each worker in turn, so the order is the serial one)."""

    def __init__(self, make: Callable[[int], tuple[torch.Tensor, ...]], n: int) -> None:
        self.make, self.n = make, n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = torch.utils.data.get_worker_info()
        first, stride = (0, 1) if info is None else (info.id, info.num_workers)
        return (self.make(step) for step in range(first, self.n, stride))


def prefetched(
    make: Callable[[int], tuple[torch.Tensor, ...]], n: int, *, workers: int
) -> Iterator[tuple[torch.Tensor, ...]]:
    """``make(0), ..., make(n - 1)`` in order; with workers > 0, made ahead by that many processes."""
    if workers == 0:
        return (make(step) for step in range(n))
    # spawn: forking a process that already runs threads (CUDA's, a test runner's) can deadlock the children
    loader = torch.utils.data.DataLoader(
        _Steps(make, n), batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(),
        prefetch_factor=4, multiprocessing_context="spawn", persistent_workers=False,
    )  # fmt: skip
    return iter(loader)


def _loader_workers(cfg: TrainConfig) -> int:
    """Rendering runs ahead in processes only on a GPU (on the shared CPU they would compete with training)."""
    return cfg.loader_workers if cfg.device == "cuda" else 0


def vae_batch(cfg: TrainConfig, step: int, stream: int = 1) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """A step's images, per-pixel loss weights and the corner of a random crop (multiples of 8), drawn from
    random stream ``stream`` (1: phase 1, 2: phase 1b's decoder fine-tune)."""
    rng = np.random.default_rng([cfg.seed, stream, step])
    images, _ = make_examples(cfg.vae_batch, seed=int(rng.integers(2**31)), split="train")
    weight = 1.0 + (cfg.shape_weight - 1.0) * shape_pixels(images)
    top, left = (int(v) // 8 * 8 for v in rng.integers(0, 64 - cfg.vae_crop + 1, size=2))
    return to_tensor(images), weight, (top, left)


# --- phase 1: VAE -----------------------------------------------------------------------------


def train_vae(cfg: TrainConfig) -> AutoencoderKL:
    out = Path(cfg.run_dir) / "vae"
    if (out / "config.json").exists():
        _log(f"VAE: found {out}, skipping phase 1")
        return AutoencoderKL.from_pretrained(out)
    if cfg.vae_from:
        vae = AutoencoderKL.from_pretrained(cfg.vae_from)
        if vae.config.latent_channels != cfg.model.latent_channels:
            raise ValueError(f"the VAE in {cfg.vae_from} has {vae.config.latent_channels} latent channels, "
                             f"the model {cfg.model.latent_channels}")
        vae.save_pretrained(out)
        _log(f"VAE: copied from {cfg.vae_from} into {out}, phase 1 not run")
        return vae
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg.model).to(cfg.device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    batches = prefetched(partial(vae_batch, cfg), cfg.vae_steps, workers=_loader_workers(cfg))
    bar = tqdm(range(cfg.vae_steps), desc="vae", mininterval=5, file=sys.stderr)
    started = time.monotonic()
    for step, (x, weight, (top, left)) in zip(bar, batches, strict=True):
        done = step / cfg.vae_steps  # share of the phase behind us: steps, or time when that runs out first
        if cfg.vae_minutes is not None:
            done = max(done, (time.monotonic() - started) / 60 / cfg.vae_minutes)
            if done >= 1:
                _log(f"vae: stopping at step {step} after {cfg.vae_minutes} minutes")
                break
        x, weight = x.to(cfg.device, non_blocking=True), weight.to(cfg.device, non_blocking=True)
        if done < cfg.vae_crop_fraction:  # random crops first (a convolutional net: they are 4x cheaper)
            x = x[:, :, top : top + cfg.vae_crop, left : left + cfg.vae_crop]
            weight = weight[:, :, top : top + cfg.vae_crop, left : left + cfg.vae_crop]
        for group in opt.param_groups:  # cosine decay to 10%
            group["lr"] = cfg.vae_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = vae_loss(recon, x, posterior.kl(), cfg.kl_weight, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:  # not every step: a refresh floods logs
            bar.set_postfix(loss=f"{loss.item():.4f}")
            _log(f"vae step {step} loss {loss.item():.5f}")
    bar.close()
    vae.eval()
    # Scale latents to unit variance, as Stable Diffusion's scaling_factor does.
    with torch.no_grad():
        images, _ = make_examples(256, seed=cfg.seed + 7, split="train")
        latents = vae.encode(to_tensor(images).to(cfg.device)).latent_dist.mean
        recon_mse = F.mse_loss(vae.decode(latents).sample, to_tensor(images).to(cfg.device)).item()
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(out)
    _log(f"VAE done: held-in reconstruction mse {recon_mse:.5f}, scaling_factor {scaling:.4f}")
    return vae.cpu()


def finetune_decoder(cfg: TrainConfig, steps: int, max_minutes: float) -> Path:
    """Phase 1b: more training for the VAE decoder alone, into ``<run_dir>/vae_ft``.

    The encoder is frozen, so the cached latents and a UNet trained on them stay valid (as with
    Stable Diffusion's fine-tuned decoders); this may run alongside phase 3. Resumes from vae_ft.
    """
    run_dir = Path(cfg.run_dir)
    out = run_dir / "vae_ft"
    vae = AutoencoderKL.from_pretrained(out if (out / "config.json").exists() else run_dir / "vae").to(
        cfg.device
    )
    done = json.loads((out / "progress.json").read_text())["step"] if (out / "progress.json").exists() else 0
    vae.requires_grad_(False)
    trainable = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=cfg.vae_lr / 4, weight_decay=0.0)
    started = time.monotonic()
    for step in tqdm(range(done, steps), desc="decoder", mininterval=5, file=sys.stderr):
        x, weight, _ = vae_batch(cfg, step, stream=2)  # full images: phase 1b does not crop
        x, weight = x.to(cfg.device), weight.to(cfg.device)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        loss = vae_loss(vae.decode(z).sample, x, torch.zeros(1), 0.0, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = step == steps - 1 or (time.monotonic() - started) / 60 > max_minutes
        if step % cfg.log_every == 0:
            _log(f"decoder step {step} loss {loss.item():.5f}")
        if step % 200 == 0 or last:
            vae.save_pretrained(out)
            (out / "progress.json").write_text(json.dumps({"step": step + 1}) + "\n")
        if last:
            break
    return out


# --- phase 2: latent cache --------------------------------------------------------------------


CACHE_CHUNK = 256  # examples rendered and encoded at a time


def cache_chunk(cfg: TrainConfig, tokenizer: CLIPTokenizer, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels and token ids of the index-th chunk of the training pool."""
    start = index * CACHE_CHUNK
    n = min(CACHE_CHUNK, cfg.pool_size - start)
    images, captions = make_examples(n, seed=cfg.seed * 1_000_003 + 100 + start, split="train")
    ids = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    return to_tensor(images), ids


def build_cache(cfg: TrainConfig, vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    path = Path(cfg.run_dir) / "cache.pt"
    if path.exists():
        _log(f"cache: found {path}")
        return torch.load(path)
    tokenizer = build_tokenizer()
    vae = vae.to(cfg.device).eval()
    latents, ids = [], []
    chunks = math.ceil(cfg.pool_size / CACHE_CHUNK)
    rendered = prefetched(partial(cache_chunk, cfg, tokenizer), chunks, workers=_loader_workers(cfg))
    for pixels, chunk_ids in tqdm(rendered, total=chunks, desc="cache", mininterval=5, file=sys.stderr):
        with torch.no_grad():
            z = vae.encode(pixels.to(cfg.device)).latent_dist.mean * vae.config.scaling_factor
        latents.append(z.cpu())
        ids.append(chunk_ids)
    cache = {"latents": torch.cat(latents), "input_ids": torch.cat(ids)}
    torch.save(cache, path)
    _log(f"cache: {len(cache['latents'])} examples, latent std {cache['latents'].std():.3f}")
    return cache


# --- phase 3: diffusion -----------------------------------------------------------------------


def train_diffusion(cfg: TrainConfig, cache: dict[str, torch.Tensor]) -> Path:
    run_dir = Path(cfg.run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    tokenizer = build_tokenizer()
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg.model).to(cfg.device).train()
    text_encoder = build_text_encoder(cfg.model, tokenizer).to(cfg.device).train()
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01, fused=cfg.device == "cuda")
    step = 0
    if ckpt_path.exists():  # resume
        state = torch.load(ckpt_path, map_location=cfg.device)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text_encoder"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        _log(f"diffusion: resumed from {ckpt_path} at step {step}")
    scheduler = build_train_scheduler(cfg.model)
    empty_ids = tokenizer([""], padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    latents_all, ids_all = cache["latents"].to(cfg.device), cache["input_ids"].to(cfg.device)
    empty_ids = empty_ids.to(cfg.device)

    def save(step: int) -> None:
        state = {
            "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
            "ema_unet": ema_unet.state_dict(), "ema_text_encoder": ema_text.state_dict(),
            "optimizer": opt.state_dict(), "step": step, "config": asdict(cfg), "git_commit": git_commit(),
            "dataset": {"generator": "generation.shapes.world", "split": "train", "pool_size": cfg.pool_size,
                        "held_out_pairs": sorted(HELD_OUT_PAIRS)},
            "seed": cfg.seed,
        }  # fmt: skip
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(ckpt_path)

    started = time.monotonic()
    bar = tqdm(total=cfg.steps, initial=step, desc="diffusion", mininterval=5, file=sys.stderr)
    running: torch.Tensor | None = None
    while step < cfg.steps:
        # data: a random batch of cached latents; drop captions for classifier-free guidance
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(len(latents_all), (cfg.batch_size,), generator=g).to(cfg.device)
        latents, ids = latents_all[idx], ids_all[idx]
        drop = (torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout).to(cfg.device)
        ids = torch.where(drop[:, None], empty_ids, ids)
        noise = torch.randn(latents.shape, generator=g).to(cfg.device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g).to(
            cfg.device
        )
        # forward: v-prediction (or the configured target) on the noised latents
        noisy = scheduler.add_noise(latents, noise, t)
        hidden = text_encoder(ids)[0]
        pred = unet(noisy, t, hidden).sample
        loss = F.mse_loss(pred, diffusion_target(scheduler, latents, noise, t))
        # update
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        ema_update(ema_unet, unet, cfg.ema_decay)
        ema_update(ema_text, text_encoder, cfg.ema_decay)
        step += 1
        # the smoothed loss stays on the device: reading it every step would stall a GPU
        running = loss.detach() if running is None else running.lerp(loss.detach(), 0.05)
        bar.update(1)
        if step % cfg.log_every == 0:
            bar.set_postfix(loss=f"{running.item():.4f}")
            _log(f"diffusion step {step} loss {loss.item():.5f} (smoothed {running.item():.5f})")
        out_of_time = (time.monotonic() - started) / 60 > cfg.max_minutes
        if step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_time:
            save(step)
        if out_of_time:
            _log(f"diffusion: stopping at step {step} after {cfg.max_minutes} minutes")
            break
    bar.close()
    return ckpt_path


# --- export -----------------------------------------------------------------------------------


def export_pipeline(
    run_dir: str | Path, out_dir: str | Path, *, use_ema: bool = True, fp16: bool = False
) -> Path:
    """Write a diffusers StableDiffusionPipeline directory from a run's VAE and last checkpoint."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu")
    cfg_dict = state["config"]["model"]
    model_cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg_dict.items()})
    tokenizer = build_tokenizer()
    unet, text_encoder = build_unet(model_cfg), build_text_encoder(model_cfg, tokenizer)
    unet.load_state_dict(state["ema_unet" if use_ema else "unet"])
    text_encoder.load_state_dict(state["ema_text_encoder" if use_ema else "text_encoder"])
    vae_dir = run_dir / "vae_ft" if (run_dir / "vae_ft" / "config.json").exists() else run_dir / "vae"
    vae = AutoencoderKL.from_pretrained(vae_dir)
    pipe = assemble_pipeline(model_cfg, vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer)
    if fp16:
        pipe.to(torch.float16)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    provenance = {k: state[k] for k in ("step", "config", "git_commit", "dataset", "seed")}
    provenance["weights"] = "ema" if use_ema else "raw"
    provenance["vae"] = vae_dir.name
    (out_dir / "training.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    return out_dir


def train(cfg: TrainConfig, *, vae_only: bool = False) -> Path:
    torch.set_num_threads(cfg.num_threads)
    if cfg.device == "cuda":  # TF32 matmuls and convolutions: these small networks need no more precision
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.run_dir) / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    started = time.monotonic()
    vae = train_vae(cfg)
    if vae_only:
        return Path(cfg.run_dir) / "vae"
    cache = build_cache(cfg, vae)
    ckpt = train_diffusion(cfg, cache)
    _log(f"done in {(time.monotonic() - started) / 60:.1f} minutes: {ckpt}")
    return ckpt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--run-dir", help="override the preset's run directory")
    parser.add_argument("--max-minutes", type=float, help="override the diffusion phase's wall-clock limit")
    parser.add_argument("--vae-minutes", type=float, help="override the VAE phase's wall-clock budget")
    parser.add_argument("--latent-channels", type=int, help="override the model's latent channels")
    parser.add_argument("--vae-from", metavar="DIR", help="take this VAE (e.g. a pipeline's vae/) instead of phase 1")
    parser.add_argument("--steps", type=int, help="override the diffusion phase's steps")
    parser.add_argument("--vae-only", action="store_true", help="stop after phase 1 (the VAE)")
    parser.add_argument("--export", metavar="DIR", help="only export the run's last checkpoint to DIR")
    parser.add_argument(
        "--finetune-decoder", type=int, metavar="STEPS", help="only run phase 1b (decoder) up to STEPS steps"
    )
    args = parser.parse_args(argv)
    cfg = PRESETS[args.preset]()
    if args.run_dir:
        cfg = replace(cfg, run_dir=args.run_dir)
    if args.max_minutes is not None:
        cfg = replace(cfg, max_minutes=args.max_minutes)
    if args.vae_from:
        cfg = replace(cfg, vae_from=args.vae_from)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    try:
        if args.vae_minutes is not None:
            cfg = replace(cfg, vae_minutes=args.vae_minutes)
        if args.latent_channels is not None:
            cfg = replace(cfg, model=replace(cfg.model, latent_channels=args.latent_channels))
    except ValueError as exc:
        parser.error(str(exc))
    if args.finetune_decoder:
        torch.set_num_threads(cfg.num_threads)
        minutes = args.max_minutes if args.max_minutes is not None else cfg.max_minutes
        _log(f"decoder fine-tuned into {finetune_decoder(cfg, args.finetune_decoder, minutes)}")
        return
    if args.export:
        _log(f"exported to {export_pipeline(cfg.run_dir, args.export)}")
        return
    train(cfg, vae_only=args.vae_only)


if __name__ == "__main__":
    main()
