"""Images per second of `generate_batch` by `max_batch`, with and without fixed-shape padding.

    .venv/bin/python -m bench.generation_plain                 # tiny model on the best device
    .venv/bin/python -m bench.generation_plain /models/sd15 --dtype float16 --size 512 --steps 20

Without a model path it builds the tiny test pipeline into a temporary folder (numbers then measure
overhead, not a real model). Each configuration renders `--images` images of one request, after one
warm-up call.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from generation.inference import (
    GenerationParams,
    GenerationRequest,
    ModelSpec,
    PipelineCache,
    generate_batch,
)
from generation.tiny import build_tiny_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="diffusers pipeline directory (default: tiny model)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        source = args.model or str(build_tiny_pipeline(Path(tmp) / "tiny"))
        spec = ModelSpec(key="bench", source=source, dtype=args.dtype)
        loaded = PipelineCache(args.device).get(spec)
        params = GenerationParams(
            scheduler="dpmpp_2m", steps=args.steps, guidance=7.0, width=args.size, height=args.size
        )
        print(f"device={loaded.device} dtype={args.dtype} size={args.size} steps={args.steps}")
        for max_batch in (1, 2, 4, 8):
            for fixed_shape in (True, False):
                seeds = list(range(args.images))
                request = GenerationRequest(prompt="a photo of a cat", seeds=seeds, params=params, spec=spec)
                warm = GenerationRequest(prompt="a photo of a cat", seeds=[0], params=params, spec=spec)
                generate_batch(loaded, [warm], max_batch=max_batch, fixed_shape=fixed_shape)
                started = time.perf_counter()
                generate_batch(loaded, [request], max_batch=max_batch, fixed_shape=fixed_shape)
                elapsed = time.perf_counter() - started
                print(
                    f"max_batch={max_batch} fixed_shape={fixed_shape!s:5}: "
                    f"{args.images / elapsed:7.2f} images/s ({elapsed:.2f} s)"
                )


if __name__ == "__main__":
    main()
