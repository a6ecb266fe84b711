"""The round's reward model on one round of shapes-model data: held-out accuracy against the true preference.

    .venv/bin/python bench/reward_shapes.py [--prompts 200] [--held-out 400] [--threads 1]
        [--reward '{"epochs": 8}'] [--cache /tmp/pickwise-reward-shapes]

What issue 10's DDPO round trains its reward model on, without Django: ``--prompts`` train-split captions
(``prompt_captions(n, seed=1, split="train")``, round 1's) x 4 images from the shipped shapes model at its
defaults, ranked by 3 simulated annotators with the product's own ``larger_shapes`` preference and
``noisy_ranking`` (Bradley-Terry noise at T=0.005, annotator i drawing from seed 1000 + i), expanded to
pairs as the Pick-a-Pic export does (6 per ranking, 90/10 train/validation by prompt). The reward model
is then trained with the round's recipe (``tiny_reward_preset`` plus ``--reward`` overrides, as
``RoundConfig.reward_hyperparameters``) and scored on ``--held-out`` other captions (``held_out_captions``)
x 4 images against the noise-free preference: pairwise accuracy on every pair of a caption's images
whose true scores differ by more than T (the pairs an annotator mostly gets right), and on all pairs
with different true scores. The images are cached under ``--cache``, so a second run only trains.

Numbers vary with the machine and its load; report the machine alongside them.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from rlhf.preferences import larger_shapes, noisy_ranking  # noqa: E402
from rlhf.training.synthetic import PairRow, ranking_pair_rows, write_pair_rows  # noqa: E402

TEMPERATURE = 0.005  # bench/loop.py's annotators
ANNOTATORS = 3
IMAGES_PER_PROMPT = 4
ROUND = 1  # round 1 of a project: captions from prompt_captions(n, seed=0 + 1), annotator noise seed 1000


def shapes_images(captions: list[str], cache: Path, *, images: int = IMAGES_PER_PROMPT) -> list[list[bytes]]:
    """PNG bytes of ``images`` samples per caption from the shipped shapes model, cached per caption."""
    cache.mkdir(parents=True, exist_ok=True)
    pipe = None
    out: list[list[bytes]] = []
    for caption in captions:
        files = [cache / f"{caption.replace(' ', '_')}-{k}.png" for k in range(images)]
        if not all(f.is_file() for f in files):
            if pipe is None:
                from generation.shapes.model import generate, load_pipeline

                pipe = load_pipeline()
            for f, image in zip(files, generate(pipe, [caption] * images, seed=0), strict=True):
                image.save(f)
        out.append([f.read_bytes() for f in files])
    return out


def true_scores(images: list[list[bytes]], captions: list[str]) -> list[list[float]]:
    return [
        [larger_shapes(Image.open(io.BytesIO(data)), caption) for data in row]
        for row, caption in zip(images, captions, strict=True)
    ]


def write_round_export(path: Path, captions: list[str], images: list[list[bytes]], scores: list[list[float]],
                       *, temperature: float = TEMPERATURE, annotators: int = ANNOTATORS) -> Path:
    """The round's Pick-a-Pic export: every annotator ranks every caption's images; winner first in each pair."""
    rngs = [np.random.default_rng(ROUND * 1000 + i) for i in range(annotators)]
    split_rng = np.random.default_rng(0)

    def rows() -> Iterator[PairRow]:
        for p, (caption, row, row_scores) in enumerate(zip(captions, images, scores, strict=True)):
            split = "train" if split_rng.random() < 0.9 else "validation"
            for rng in rngs:
                order = noisy_ranking(row_scores, temperature=temperature, rng=rng)
                yield from ranking_pair_rows(caption, row, order, model="base", split=split, prompt_id=str(p))

    return write_pair_rows(path, rows(), row_group_size=256)


def held_out_accuracy(rewards: list[list[float]], scores: list[list[float]], margin: float) -> tuple[float, int]:
    """Share of a caption's image pairs whose true scores differ by more than ``margin`` that the rewards order."""
    right, n = 0, 0
    for r, s in zip(rewards, scores, strict=True):
        for i in range(len(s)):
            for j in range(i + 1, len(s)):
                if abs(s[i] - s[j]) > margin:
                    n += 1
                    right += (r[i] - r[j]) * (s[i] - s[j]) > 0
    return right / max(n, 1), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--held-out", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reward", type=json.loads, default={}, help="tiny_reward_preset overrides (JSON)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pickwise-reward-shapes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    from generation.shapes.world import held_out_captions, prompt_captions
    from rlhf.training.reward_model import load_reward_model, score
    from rlhf.training.reward_train import tiny_reward_preset, train_reward_model

    captions = prompt_captions(args.prompts, seed=ROUND, split="train")
    held_captions = held_out_captions(args.held_out)
    started = time.perf_counter()
    images = shapes_images(captions, args.cache / "images")
    held_images = shapes_images(held_captions, args.cache / "images")
    print(f"images: {len(captions)} + {len(held_captions)} captions x {IMAGES_PER_PROMPT} "
          f"({time.perf_counter() - started:.0f} s, cached under {args.cache})")
    scores, held_scores = true_scores(images, captions), true_scores(held_images, held_captions)
    spread = [max(s) - min(s) for s in scores]
    print(f"larger_shapes within a caption: median spread {np.median(spread):.4f} (T = {TEMPERATURE})")

    with tempfile.TemporaryDirectory() as tmp:
        export = write_round_export(Path(tmp) / "round.parquet", captions, images, scores)
        config = tiny_reward_preset(**args.reward)
        print(f"recipe: {config}")
        start = time.perf_counter()
        result = train_reward_model(config, export, Path(tmp) / "run")
        train_s = time.perf_counter() - start
        model = load_reward_model(result.model_dir)
        flat_captions = [c for c in held_captions for _ in range(IMAGES_PER_PROMPT)]
        flat_images = [Image.open(io.BytesIO(d)) for row in held_images for d in row]
        flat = score(model, flat_captions, flat_images)
    rewards = [flat[i : i + IMAGES_PER_PROMPT] for i in range(0, len(flat), IMAGES_PER_PROMPT)]
    decided, n_decided = held_out_accuracy(rewards, held_scores, TEMPERATURE)
    every, n_every = held_out_accuracy(rewards, held_scores, 0.0)
    val = result.validation.accuracy if result.validation else float("nan")
    print(f"train: {result.step} steps in {train_s:.1f} s (incl. validation), torch threads {args.threads}")
    print(f"validation (noisy labels, tie-aware): {val:.3f}")
    print(f"held-out vs true preference, |delta| > T: {decided:.3f} on {n_decided} pairs")
    print(f"held-out vs true preference, all pairs:   {every:.3f} on {n_every} pairs")


if __name__ == "__main__":
    main()
