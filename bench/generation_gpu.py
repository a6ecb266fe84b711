"""Generation on a CUDA GPU with a real-sized, random-weight SD 1.5-shaped pipeline in fp16 (issue 5 (c)).

    python -m bench.generation_gpu [--images 32] [--batch 8] [--steps 20] [--side 512]
    python -m bench.generation_gpu --device cpu --small --side 64 --images 8   # a dry run of the script

Django-free, so it runs on a bare GPU machine: it measures the worker's inference core, the code the
Celery task runs between claiming a job and storing its rows (``generation.inference``: the pipeline
loaded by ``PipelineCache`` from a saved directory, ``generate_batch`` with per-image generators and
fixed-shape padding, then PNG bytes and sha256 as the worker stores them), against a plain diffusers
loop. The queue and database part of the whole path is measured by ``bench/generation.py`` (a) on
PostgreSQL and Redis; it costs a fixed few tenths of a second per claim, whatever the device.

(a) images/s of the worker core against the plain loop: the same prompts, seeds, batch size and sampler.
(b) 16 single-image requests: coalesced by ``generate_batch`` (max_batch 8) against one call per request.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generation.inference import (  # noqa: E402
    GenerationParams,
    GenerationRequest,
    ModelSpec,
    PipelineCache,
    generate_batch,
    images_to_png_bytes,
    sha256_hex,
)
from generation.tiny import TINY_TOKENIZER_DIR  # noqa: E402


def build_sd15_shaped(directory: Path, *, device: str, small: bool) -> Path:
    """Save a random-weight pipeline with SD 1.5's UNet, VAE and text-encoder shapes (fp16 on CUDA).

    The tokenizer is the committed test fixture (a small vocabulary); the text encoder is sized to it.
    ``small`` narrows every network (a CPU dry run of this script), keeping the layout.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    width = 64 if small else 768
    torch.manual_seed(0)
    with torch.device(device):  # initialising 860M parameters on the GPU takes seconds, not a minute
        unet = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(32, 64, 64, 64) if small else (320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=width,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 32, 64, 64) if small else (128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                num_hidden_layers=2 if small else 12, num_attention_heads=4 if small else 12,
                max_position_embeddings=77, projection_dim=width, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )
        )  # fmt: skip
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    if device == "cuda":
        pipe.to(torch.float16)
    pipe.save_pretrained(directory, safe_serialization=True)
    params = sum(p.numel() for p in unet.parameters())
    print(f"built {directory}: UNet {params / 1e6:.0f}M parameters", flush=True)
    return directory


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(model_dir: Path, prompts: list[str], seeds: list[list[int]], params: GenerationParams,
               device: str, dtype: torch.dtype) -> float:
    """Images/s of a bare diffusers loop: one pipeline call per batch, nothing else."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)

    def run(prompt: str, batch_seeds: list[int]) -> None:
        pipe(prompt=[prompt] * len(batch_seeds), num_inference_steps=params.steps, guidance_scale=params.guidance,
             width=params.width, height=params.height, output_type="pil",
             generator=[torch.Generator("cpu").manual_seed(s) for s in batch_seeds])

    run(prompts[0], seeds[0])  # warm-up
    sync(device)
    started = time.perf_counter()
    for prompt, batch_seeds in zip(prompts, seeds, strict=True):
        run(prompt, batch_seeds)
    sync(device)
    return sum(map(len, seeds)) / (time.perf_counter() - started)


def worker_core(loaded, requests: list[GenerationRequest], *, max_batch: int, device: str) -> float:
    """Images/s of generate_batch plus the PNG bytes and sha256 the worker stores for each image."""
    sync(device)
    started = time.perf_counter()
    rows = generate_batch(loaded, requests, max_batch=max_batch)
    digests = [sha256_hex(png) for png in images_to_png_bytes([g.image for row in rows for g in row])]
    sync(device)
    elapsed = time.perf_counter() - started
    assert len(digests) == sum(len(r.seeds) for r in requests)
    return len(digests) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--small", action="store_true", help="narrow networks (dry run on a CPU)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --device cpu --small for a dry run")
    dtype_name = "float16" if args.device == "cuda" else "float32"
    dtype = getattr(torch, dtype_name)
    results: dict[str, object] = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                                  "dtype": dtype_name, "side": args.side, "steps": args.steps, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_sd15_shaped(Path(tmp) / "sd15", device=args.device, small=args.small)
        params = GenerationParams(scheduler="ddim", steps=args.steps, guidance=7.5, width=args.side,
                                  height=args.side)
        spec = ModelSpec(key="sd15-shaped", source=str(model_dir), dtype=dtype_name)
        jobs = args.images // args.batch
        prompts = [f"a photo of a red cat {i}" for i in range(jobs)]
        seeds = [[1000 * i + k for k in range(args.batch)] for i in range(jobs)]

        before = plain_loop(model_dir, prompts, seeds, params, args.device, dtype)
        started = time.perf_counter()
        loaded = PipelineCache(args.device).get(spec)
        sync(args.device)
        results["load_s"] = time.perf_counter() - started
        requests = [GenerationRequest(prompt=p, seeds=s, params=params, spec=spec) for p, s in zip(prompts, seeds, strict=True)]
        worker_core(loaded, requests[:1], max_batch=args.batch, device=args.device)  # warm-up
        core = worker_core(loaded, requests, max_batch=args.batch, device=args.device)

        singles = [GenerationRequest(prompt=f"a blue square {i}", seeds=[i], params=params, spec=spec)
                   for i in range(16)]
        coalesced = worker_core(loaded, singles, max_batch=8, device=args.device)
        one_by_one = 16 / sum(1 / worker_core(loaded, [r], max_batch=1, device=args.device) for r in singles)
        if args.device == "cuda":
            results["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        del loaded
        after = plain_loop(model_dir, prompts, seeds, params, args.device, dtype)

    plain = (before + after) / 2
    results.update(plain_images_per_s=plain, plain_before=before, plain_after=after, core_images_per_s=core,
                   ratio=core / plain, singles_one_by_one=one_by_one, singles_coalesced=coalesced,
                   coalescing_speedup=coalesced / one_by_one)
    print(f"[{results['device']}] {dtype_name}, {args.side}px, {args.steps} DDIM steps, guidance 7.5, "
          f"pipeline load {results['load_s']:.1f} s")
    print(f"(a) {jobs} requests x {args.batch} images:")
    print(f"    plain diffusers loop   {plain:7.2f} images/s  (before {before:.2f}, after {after:.2f})")
    print(f"    worker core            {core:7.2f} images/s  ratio {core / plain:.3f}")
    print("(b) 16 single-image requests:")
    print(f"    one call per request   {one_by_one:7.2f} images/s")
    print(f"    coalesced (max 8)      {coalesced:7.2f} images/s  speed-up {coalesced / one_by_one:.2f}x")
    if "peak_gpu_memory_gib" in results:
        print(f"    peak GPU memory {results['peak_gpu_memory_gib']:.1f} GiB")
    print(json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
