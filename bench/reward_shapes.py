"""The round's reward model on one round of shapes-model data: held-out accuracy against the true preference,
set against the simulated annotators' own accuracy (the ceiling) and a noise-label control.

    nice .venv/bin/python bench/reward_shapes.py [--preset shapes] [--preferences larger_shapes brighter
        shape_centred warmer] [--seeds 0 1 2] [--temperature '{"brighter": 0.0005}'] [--reward '{"epochs": 8}']
        [--prompts 200] [--held-out 400] [--threads 1] [--cache /tmp/pickwise-reward-shapes]

One round, without Django: ``--prompts`` train-split captions (``prompt_captions(n, seed=1, split="train")``,
round 1's) x 4 images from the shipped shapes model at its defaults, ranked by 3 simulated annotators with
a built-in preference and ``noisy_ranking`` (Bradley-Terry noise at the preference's temperature,
annotator i drawing from seed 1000 + i): 600 rankings, expanded to pairs as the Pick-a-Pic export does
(6 per ranking, 90/10 train/validation by prompt). A reward model is trained on them with the backbone's
preset (``reward_preset(--preset)`` plus ``--reward`` overrides, e.g. ``{"backbone": "shapes_conv"}``) once per ``--seeds`` seed, and scored on
``--held-out`` other captions (``held_out_captions``) x 4 images against the noise-free preference: the
share of a caption's image pairs with different true scores that the rewards order right, with a 95%
bootstrap interval over captions.

Beside it, per preference:
- ceiling: the annotators' own label accuracy against the truth on the same held-out pairs (3 fresh
  simulated annotators, seeds 2000 + i; the exact expectation in brackets). The target is accuracy
  >= 90% of it. A reward model trained on many labels can beat it: it averages their noise.
- noise control: the same recipe trained on pure-noise labels (each ranking a random permutation)
  once per seed; it should sit at 50%.

Temperatures: the loop's annotators use T = 0.005 on ``larger_shapes``, where they get 61% of a caption's
pairs right (the shapes model's four images of a caption differ by a few pixels). The default
temperatures put every preference where the annotators get about 70% right, so the ceiling is well away
from chance for each: 0.0025 for ``larger_shapes``, 0.001 for ``brighter`` (mean grey differs by ~0.1%
between a caption's images), 0.02 for ``shape_centred`` and 0.001 for ``warmer`` (not yet measured). The
images are cached under ``--cache``, so a second run only trains. Numbers vary with the machine and its
load; report the machine alongside them.
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

from rlhf.preferences import PREFERENCES, PreferenceFunction, label_accuracy, noisy_ranking  # noqa: E402
from rlhf.training.synthetic import PairRow, ranking_pair_rows, write_pair_rows  # noqa: E402

ANNOTATORS = 3
IMAGES_PER_PROMPT = 4
ROUND = 1  # round 1 of a project: captions from prompt_captions(n, seed=0 + 1), annotator noise seed 1000
CEILING_SEED = 2000  # the fresh annotators who label the held-out pairs for the ceiling
NOISE_SEED = 3000  # the permutations of the noise-label control
TEMPERATURES = {"larger_shapes": 0.0025, "brighter": 0.001, "shape_centred": 0.02, "warmer": 0.001}
BOOTSTRAP = 2000


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


def true_scores(preference: PreferenceFunction, images: list[list[bytes]], captions: list[str]) -> list[list[float]]:
    return [
        [preference(Image.open(io.BytesIO(data)), caption) for data in row]
        for row, caption in zip(images, captions, strict=True)
    ]


def write_round_export(path: Path, captions: list[str], images: list[list[bytes]], scores: list[list[float]],
                       *, temperature: float, noise: bool = False, annotators: int = ANNOTATORS) -> Path:
    """The round's Pick-a-Pic export: every annotator ranks every caption's images; winner first in each pair.

    ``noise``: each ranking is a random permutation instead (the control's labels).
    """
    rngs = [np.random.default_rng((NOISE_SEED if noise else ROUND * 1000) + i) for i in range(annotators)]
    split_rng = np.random.default_rng(0)

    def rows() -> Iterator[PairRow]:
        for p, (caption, row, row_scores) in enumerate(zip(captions, images, scores, strict=True)):
            split = "train" if split_rng.random() < 0.9 else "validation"
            for rng in rngs:
                order = ([int(i) for i in rng.permutation(len(row))] if noise
                         else noisy_ranking(row_scores, temperature=temperature, rng=rng))
                yield from ranking_pair_rows(caption, row, order, model="base", split=split, prompt_id=str(p))

    return write_pair_rows(path, rows(), row_group_size=256)


def per_caption_hits(rewards: list[list[float]], scores: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per caption: pairs with different true scores that the rewards order right, and such pairs."""
    right, n = [], []
    for r, s in zip(rewards, scores, strict=True):
        hits, pairs = 0, 0
        for i in range(len(s)):
            for j in range(i + 1, len(s)):
                if s[i] != s[j]:
                    pairs += 1
                    hits += (r[i] - r[j]) * (s[i] - s[j]) > 0
        right.append(hits)
        n.append(pairs)
    return np.array(right, dtype=np.float64), np.array(n, dtype=np.float64)


def accuracy_interval(right: np.ndarray, n: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Pairwise accuracy and its 95% bootstrap interval, resampling captions (their pairs are not independent)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(n), size=(BOOTSTRAP, len(n)))
    boot = right[idx].sum(1) / np.maximum(n[idx].sum(1), 1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(right.sum() / max(n.sum(), 1)), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="shapes", help="a name in REWARD_PRESETS (shapes, tiny)")
    parser.add_argument("--preferences", nargs="+", default=list(TEMPERATURES), choices=sorted(PREFERENCES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--temperature", type=json.loads, default={}, help="per-preference temperatures (JSON)")
    parser.add_argument("--reward", type=json.loads, default={}, help="overrides of the preset (JSON)")
    parser.add_argument("--no-control", action="store_true", help="skip the noise-label control")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--held-out", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pickwise-reward-shapes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    from generation.shapes.world import held_out_captions, prompt_captions
    from rlhf.training.reward_model import load_reward_model, score
    from rlhf.training.reward_train import reward_preset, train_reward_model

    captions = prompt_captions(args.prompts, seed=ROUND, split="train")
    held_captions = held_out_captions(args.held_out)
    started = time.perf_counter()
    images = shapes_images(captions, args.cache / "images")
    held_images = shapes_images(held_captions, args.cache / "images")
    print(f"images: {len(captions)} + {len(held_captions)} captions x {IMAGES_PER_PROMPT} "
          f"({time.perf_counter() - started:.0f} s, cached under {args.cache})")
    config = reward_preset(args.preset, **args.reward)
    print(f"recipe: {config}")
    flat_captions = [c for c in held_captions for _ in range(IMAGES_PER_PROMPT)]
    flat_images = [Image.open(io.BytesIO(d)).convert("RGB") for row in held_images for d in row]

    def held_out_hits(export: Path, seed: int, workdir: Path) -> tuple[np.ndarray, np.ndarray, float, float]:
        start = time.perf_counter()
        result = train_reward_model(reward_preset(args.preset, **{**args.reward, "seed": seed}), export, workdir)
        seconds = time.perf_counter() - start
        flat = score(load_reward_model(result.model_dir), flat_captions, flat_images)
        rewards = [flat[i : i + IMAGES_PER_PROMPT] for i in range(0, len(flat), IMAGES_PER_PROMPT)]
        right, n = per_caption_hits(rewards, held_scores)
        val = result.validation.accuracy if result.validation else float("nan")
        return right, n, val, seconds

    summary = []
    for name in args.preferences:
        preference = PREFERENCES[name]
        temperature = float(args.temperature.get(name, TEMPERATURES.get(name, 0.005)))
        scores, held_scores = true_scores(preference, images, captions), true_scores(preference, held_images, held_captions)
        spread = np.median([max(s) - min(s) for s in scores])
        ceiling = label_accuracy(held_scores, temperature=temperature, annotators=ANNOTATORS, seed=CEILING_SEED)
        expected = label_accuracy(held_scores, temperature=temperature)
        train_agreement = label_accuracy(scores, temperature=temperature, annotators=ANNOTATORS, seed=ROUND * 1000)
        print(f"\n== {name}: T = {temperature}, median spread within a caption {spread:.5f}; annotators' labels "
              f"right on {train_agreement:.3f} of the round's pairs")
        print(f"ceiling (annotators' label accuracy on the held-out pairs): {ceiling:.3f} [expected {expected:.3f}]"
              f"; target >= {0.9 * ceiling:.3f}")
        runs: dict[str, list[float]] = {"model": [], "control": []}
        with tempfile.TemporaryDirectory() as tmp:
            exports = {"model": write_round_export(Path(tmp) / "round.parquet", captions, images, scores,
                                                   temperature=temperature)}
            if not args.no_control:
                exports["control"] = write_round_export(Path(tmp) / "noise.parquet", captions, images, scores,
                                                        temperature=temperature, noise=True)
            for kind, export in exports.items():
                for seed in args.seeds:
                    right, n, val, seconds = held_out_hits(export, seed, Path(tmp) / f"{kind}-{seed}")
                    acc, low, high = accuracy_interval(right, n, seed)
                    runs[kind].append(acc)
                    verdict = "" if kind == "control" else ("  meets" if acc >= 0.9 * ceiling else "  MISSES")
                    print(f"{kind:8s} seed {seed}: held-out {acc:.3f} [{low:.3f}, {high:.3f}] on {int(n.sum())} pairs "
                          f"= {acc / ceiling:.0%} of the ceiling; validation (noisy labels) {val:.3f}; "
                          f"trained in {seconds:.0f} s{verdict}")
        summary.append((name, temperature, ceiling, runs))

    print("\npreference      T        ceiling  target  model (per seed)     mean / ceiling  control (per seed)")
    for name, temperature, ceiling, runs in summary:
        model = " ".join(f"{a:.3f}" for a in runs["model"])
        control = " ".join(f"{a:.3f}" for a in runs["control"]) or "-"
        ratio = np.mean(runs["model"]) / ceiling
        print(f"{name:15s} {temperature:<8g} {ceiling:.3f}    {0.9 * ceiling:.3f}   {model:20s} {ratio:6.0%}          "
              f"{control}")


if __name__ == "__main__":
    main()
