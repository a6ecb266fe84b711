"""Benchmark the shipped shapes-world model: prompt adherence by the judge, and CPU latency.

    .venv/bin/python -m bench.shapes [--weights DIR] [--n 500] [--held-out-n 500]
    .venv/bin/python -m bench.shapes --vae DIR     # only the ceiling of another VAE (a training run's)
    .venv/bin/python -m bench.shapes --room two-shape held-out-pairs --room-n 150   # only the room per task

Prints, for captions of the world with fresh seeds (never used in training), the judge's
per-attribute and overall accuracy; the same on captions using the (shape, colour) pairs held
out of training (``generation.shapes.world.HELD_OUT_PAIRS``); a random-weight pipeline of the same
configuration as a floor; the wall time of four images at the default settings; and, on one set of
ground-truth renders, the model on their captions, the ceiling the VAE sets (the judge on its
reconstructions, with the shape accuracy per (shape, size), since no fine-tune of the UNet alone, DPO or
DDPO, can render what the decoder loses) and the decoder's reach: latents optimised to decode to each
render (Adam on the VAE's shape-weighted pixel loss, from the encoder's latent), about the most any UNet
could get out of this decoder.

``--room`` measures where a fine-tune of the UNet has room to raise adherence: for each task (captions of
one shape, of two shapes, or using a held-out (shape, colour) pair), the model's adherence on the task's
captions and the decoder's reach on their ground-truth renders, caption by caption, and the difference
with its 95% interval. A task with little room is one no UNet fine-tune can improve much, whatever the
reward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm import tqdm

from generation.shapes.judge import judge, summarize
from generation.shapes.model import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    WEIGHTS_DIR,
    generate,
    load_pipeline,
    random_pipeline_like,
)
from generation.shapes.train import TrainConfig, shape_pixels, to_tensor, vae_loss
from generation.shapes.world import TASKS, in_task, make_examples, parse_caption, prompt_captions
from rlhf.loop.stats import paired_difference

BENCH_SEED = 20_261_126  # caption seed; training draws from other streams (see generation/shapes/train.py)
CEILING_SEED = BENCH_SEED + 2  # the ground-truth renders of the ceiling and the reach
ROOM_SEED = BENCH_SEED + 3  # the ground-truth renders of --room
BATCH = 50


def model_judgements(pipe, captions: list[str], *, steps: int, guidance: float) -> list:
    """The judge on one image of the model per caption (seeds from BENCH_SEED, one batch at a time)."""
    judgements = []
    for start in range(0, len(captions), BATCH):
        batch = captions[start : start + BATCH]
        images = generate(pipe, batch, seed=BENCH_SEED + start, steps=steps, guidance=guidance)
        judgements += [judge(im, c) for im, c in zip(images, batch, strict=True)]
    return judgements


def adherence(pipe, captions: list[str], *, steps: int, guidance: float) -> dict[str, float]:
    judgements = model_judgements(pipe, captions, steps=steps, guidance=guidance)
    scores = summarize(judgements)
    for count in (1, 2):
        subset = [j for j in judgements if len(parse_caption(j.caption).objects) == count]
        scores[f"overall_{count}_shape"] = summarize(subset)["overall"]
    return scores


def _judge_renders(pixels: list, captions: list[str]) -> dict[str, float]:
    """summarize() of the judge on decoded renders, plus the shape accuracy per (shape, size)."""
    judgements = [judge(im, c) for im, c in zip(pixels, captions, strict=True)]
    scores = summarize(judgements)
    right: dict[tuple[str, str], list[bool]] = {}
    for j in judgements:
        for spec, verdict in zip(parse_caption(j.caption).objects, j.objects, strict=True):
            right.setdefault((spec.shape, spec.size), []).append(verdict["shape"])
    for (shape, size), oks in sorted(right.items()):
        scores[f"shape_{size}_{shape}"] = sum(oks) / len(oks)
    return scores


def _pixels(decoded: torch.Tensor) -> list:
    return list(((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())


@torch.no_grad()
def reconstruction_ceiling(vae: AutoencoderKL, images: np.ndarray, captions: list[str]) -> dict[str, float]:
    """The judge on VAE reconstructions (encode to the latent's mode, decode) of ground-truth renders."""
    pixels = []
    for start in range(0, len(images), BATCH):
        x = to_tensor(images[start : start + BATCH])
        pixels += _pixels(vae.decode(vae.encode(x).latent_dist.mode()).sample)
    return _judge_renders(pixels, captions)


def decoder_reach(
    vae: AutoencoderKL, images: np.ndarray, captions: list[str], steps: int, lr: float = 0.05
) -> dict[str, float]:
    """The judge on the decoder's best attempt at each ground-truth render: the latent, started at the
    encoder's mode, is optimised by Adam on the VAE's training loss (shape pixels weighted as in training).
    Given the renders of reconstruction_ceiling, the two compare caption by caption."""
    return _judge_renders(decoder_reach_pixels(vae, images, steps, lr), captions)


def decoder_reach_pixels(vae: AutoencoderKL, images: np.ndarray, steps: int, lr: float = 0.05) -> list:
    """The decoder's best attempt at each ground-truth render (see decoder_reach), as uint8 arrays."""
    shape_weight = TrainConfig().shape_weight
    vae.requires_grad_(False)
    pixels = []
    for start in tqdm(range(0, len(images), BATCH), desc="decoder reach", unit="batch"):
        chunk = images[start : start + BATCH]
        x, weight = to_tensor(chunk), 1.0 + (shape_weight - 1.0) * shape_pixels(chunk)
        with torch.no_grad():
            latent = vae.encode(x).latent_dist.mode()
        latent.requires_grad_(True)
        optimiser = torch.optim.Adam([latent], lr=lr)
        for _ in range(steps):
            loss = vae_loss(vae.decode(latent).sample, x, torch.zeros(()), 0.0, weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            pixels += _pixels(vae.decode(latent).sample)
    return pixels


def task_examples(task: str, n: int) -> tuple[np.ndarray, list[str]]:
    """N ground-truth renders of a task (``generation.shapes.world.TASKS``), deterministic (ROOM_SEED)."""
    split = "held_out" if task == "held-out-pairs" else "any"
    images, captions = make_examples(4 * n, seed=ROOM_SEED, split=split)
    keep = [i for i, c in enumerate(captions) if in_task(parse_caption(c), task)][:n]
    if len(keep) < n:
        raise ValueError(f"only {len(keep)} {task} scenes among {4 * n} drawn; ask for fewer")
    return images[keep], [captions[i] for i in keep]


def room(pipe, task: str, n: int, *, reach_steps: int, steps: int, guidance: float) -> dict:
    """The model against the decoder's reach on one task's captions, caption by caption (see --room)."""
    images, captions = task_examples(task, n)
    model = model_judgements(pipe, captions, steps=steps, guidance=guidance)
    reach = [
        judge(im, c)
        for im, c in zip(decoder_reach_pixels(pipe.vae, images, reach_steps), captions, strict=True)
    ]
    gap = paired_difference([float(j.overall) for j in reach], [float(j.overall) for j in model])
    return {
        "task": task,
        "n": n,
        "model": summarize(model),
        "reach": summarize(reach),
        "room_points": 100 * gap.mean,
        "room_interval": [100 * gap.low, 100 * gap.high],
    }


def ground_truth(n: int) -> tuple[np.ndarray, list[str]]:
    """The renders the ceiling and the reach are measured on (the first k of n are those of k)."""
    images, captions = make_examples(n, seed=CEILING_SEED, split="any")
    return images, list(captions)


def latency(pipe, *, steps: int, guidance: float, repeats: int = 5) -> float:
    captions = prompt_captions(4, seed=BENCH_SEED)
    generate(pipe, captions, steps=steps, guidance=guidance)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        generate(pipe, captions, steps=steps, guidance=guidance)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fmt(scores: dict[str, float]) -> str:
    keys = [
        "colour",
        "shape",
        "size",
        "position",
        "count",
        "background",
        "overall",
        "overall_1_shape",
        "overall_2_shape",
    ]
    return (
        "  ".join(f"{k} {100 * scores[k]:5.1f}%" for k in keys if k in scores) + f"  (n={int(scores['n'])})"
    )


def by_size(scores: dict[str, float]) -> str:
    return "  shape right, by size: " + "  ".join(
        f"{k.removeprefix('shape_').replace('_', ' ')} {100 * v:.0f}%"
        for k, v in scores.items()
        if k.startswith("shape_")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(WEIGHTS_DIR))
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--held-out-n", type=int, default=500)
    parser.add_argument("--baseline-n", type=int, default=100)
    parser.add_argument("--ceiling-n", type=int, default=500, help="ground-truth renders through the VAE")
    parser.add_argument("--reach-n", type=int, default=100, help="renders the decoder's reach is measured on")
    parser.add_argument("--reach-steps", type=int, default=200, help="Adam steps on each batch's latents")
    parser.add_argument("--vae", metavar="DIR", help="only the reconstruction ceiling of the VAE in DIR")
    parser.add_argument(
        "--room",
        nargs="+",
        choices=TASKS,
        metavar="TASK",
        help=f"only the room below the decoder's reach on these tasks ({', '.join(TASKS)})",
    )
    parser.add_argument("--room-n", type=int, default=100, help="ground-truth renders per --room task")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: fastest on a shared 2-core CPU)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.vae:
        ceiling = reconstruction_ceiling(
            AutoencoderKL.from_pretrained(args.vae).eval(), *ground_truth(args.ceiling_n)
        )
        print(f"VAE {args.vae} reconstructions: {fmt(ceiling)}")
        print(json.dumps({"vae": args.vae, "vae_ceiling": ceiling}))
        return
    pipe = load_pipeline(args.weights)
    settings = {"steps": args.steps, "guidance": args.guidance}
    print(f"weights {args.weights}; {settings}; torch threads {torch.get_num_threads()}")
    if args.room:
        rooms = []
        for task in args.room:
            rooms.append(found := room(pipe, task, args.room_n, reach_steps=args.reach_steps, **settings))
            low, high = found["room_interval"]
            print(f"{task} (n={args.room_n}): the model {fmt(found['model'])}")
            print(f"{task}: the decoder's reach {fmt(found['reach'])}")
            print(f"{task}: room {found['room_points']:+.1f} points [{low:+.1f}, {high:+.1f}]", flush=True)
        print(json.dumps({"settings": settings, "reach_steps": args.reach_steps, "room": rooms}))
        return
    results: dict[str, object] = {"settings": settings}
    seconds = latency(pipe, **settings)
    results["four_images_s"] = seconds
    print(f"latency: four 64x64 images in {seconds:.3f} s (median of 5)")
    if args.n:
        results["fresh"] = adherence(
            pipe, prompt_captions(args.n, seed=BENCH_SEED, split="train"), **settings
        )
        print(f"fresh captions:    {fmt(results['fresh'])}")
    if args.held_out_n:
        captions = prompt_captions(args.held_out_n, seed=BENCH_SEED + 1, split="held_out")
        results["held_out"] = adherence(pipe, captions, **settings)
        print(f"held-out combos:   {fmt(results['held_out'])}")
    if args.baseline_n:
        baseline = random_pipeline_like(args.weights)
        results["random_weights"] = adherence(
            baseline, prompt_captions(args.baseline_n, seed=BENCH_SEED), **settings
        )
        print(f"random weights:    {fmt(results['random_weights'])}")
    images, captions = ground_truth(max(args.ceiling_n, args.reach_n))
    if args.ceiling_n:
        results["model_on_ceiling_captions"] = adherence(pipe, captions[: args.ceiling_n], **settings)
        print(f"the model on the same captions: {fmt(results['model_on_ceiling_captions'])}")
        results["vae_ceiling"] = ceiling = reconstruction_ceiling(
            pipe.vae, images[: args.ceiling_n], captions[: args.ceiling_n]
        )
        print(f"VAE reconstructions: {fmt(ceiling)}")
        print(by_size(ceiling))
    if args.reach_n:
        reach = decoder_reach(pipe.vae, images[: args.reach_n], captions[: args.reach_n], args.reach_steps)
        results["decoder_reach"] = reach
        print(f"decoder's reach ({args.reach_steps} steps): {fmt(reach)}")
        print(by_size(reach))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
