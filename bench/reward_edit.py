"""Reward models on image-editing preferences where the source matters: conditioned on the source image or not.

    nice .venv/bin/python bench/reward_edit.py [--preset shapes] [--seeds 0 1 2] [--sources 200]
        [--held-out 200] [--temperature 0] [--reward '{"epochs": 6}'] [--threads 1]

Without Django or a GPU. The data (``rlhf.training.synthetic.shapes_edit_examples``): a shapes-world source
scene and four inpaintings of it that repaint its first shape in four different colours (the mask is the
shape's box); the prompt ("repaint the circle at the top left") names no colour. A simulated annotator
prefers the edit whose colour stays closest (RGB distance) to the source shape's colour, with
Bradley-Terry noise at ``--temperature`` (0: none), ranks the four, and every ranking becomes its six pairs
as the Pick-a-Pic export writes them (source and mask bytes included; 85/15 train/validation by source).
Only the source tells which edit is closest, so a model that does not see it can at best learn which
colours tend to be close to the others.

Three arms, each trained once per ``--seeds`` seed with the preset (``reward_preset(--preset)`` plus
``--reward`` overrides) and scored on ``--held-out`` fresh sources x 4 edits against the noise-free
preference (the share of a source's edit pairs that the rewards order right, with a 95% bootstrap interval
over sources):

- conditioned: ``condition_on_source: true`` (the head sees [e(edit), e(source), e(edit) - e(source)]);
- unconditioned: the same recipe without the source;
- control: conditioned, trained on noise labels (each ranking a random permutation); it should sit at 50%.

Numbers vary with the machine and its load; report the machine alongside them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from bench.reward_shapes import accuracy_interval, per_caption_hits  # noqa: E402
from rlhf.training.synthetic import shapes_edit_examples, write_shapes_edit_pairs  # noqa: E402

EDITS = 4
HELD_OUT_SEED = 1_000_003  # the held-out sources' seed; training sources use seed 0
ARMS = ("conditioned", "unconditioned", "control")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="shapes", help="a name in REWARD_PRESETS (shapes, tiny)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sources", type=int, default=200, help="training sources (x 6 pairs each)")
    parser.add_argument("--held-out", type=int, default=200, help="held-out sources (x 6 pairs each)")
    parser.add_argument("--temperature", type=float, default=0.0, help="annotator noise (Bradley-Terry), RGB units")
    parser.add_argument("--reward", type=json.loads, default={}, help="overrides of the preset (JSON)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    from rlhf.training.reward_model import load_reward_model, score
    from rlhf.training.reward_train import reward_preset, train_reward_model

    held = shapes_edit_examples(args.held_out, edits=EDITS, seed=HELD_OUT_SEED)
    held_scores = [example.scores for example in held]
    captions = [example.caption for example in held for _ in range(EDITS)]
    images = [image for example in held for image in example.edits]
    sources = [example.source for example in held for _ in range(EDITS)]
    print(f"data: {args.sources} training sources, {args.held_out} held-out, {EDITS} edits each; "
          f"T = {args.temperature}; preset {args.preset} {args.reward or ''}")

    def split(i: int, n: int) -> str:
        return "train" if i < 0.85 * n else "validation"

    results: dict[str, list[float]] = {arm: [] for arm in args.arms}
    with tempfile.TemporaryDirectory() as tmp:
        labelled = write_shapes_edit_pairs(Path(tmp) / "edits.parquet", args.sources, edits=EDITS,
                                           temperature=args.temperature, split=split)
        noise = write_shapes_edit_pairs(Path(tmp) / "noise.parquet", args.sources, edits=EDITS,
                                        noise_labels=True, split=split)
        for arm in args.arms:
            for seed in args.seeds:
                conditioned = arm != "unconditioned"
                config = reward_preset(args.preset, **{**args.reward, "seed": seed,
                                                       "condition_on_source": conditioned})
                start = time.perf_counter()
                result = train_reward_model(config, noise if arm == "control" else labelled,
                                            Path(tmp) / f"{arm}-{seed}")
                seconds = time.perf_counter() - start
                model = load_reward_model(result.model_dir)
                flat = score(model, captions, images, sources=sources if conditioned else None)
                rewards = [flat[i : i + EDITS] for i in range(0, len(flat), EDITS)]
                right, n = per_caption_hits(rewards, held_scores)
                acc, low, high = accuracy_interval(right, n, seed)
                results[arm].append(acc)
                val = result.validation.accuracy if result.validation else float("nan")
                print(f"{arm:13s} seed {seed}: held-out {acc:.3f} [{low:.3f}, {high:.3f}] on {int(n.sum())} pairs; "
                      f"validation {val:.3f}; trained {result.step} steps in {seconds:.0f} s")

    print("\narm            held-out accuracy per seed   mean")
    for arm, accs in results.items():
        print(f"{arm:14s} {' '.join(f'{a:.3f}' for a in accs):28s} {np.mean(accs):.3f}")


if __name__ == "__main__":
    main()
