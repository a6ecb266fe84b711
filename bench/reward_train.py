"""Reward-model training throughput on the tiny CLIP (CPU): pairs/s and peak memory.

    .venv/bin/python bench/reward_train.py [--pairs 400] [--steps 30] [--threads 1]

Numbers vary with the machine and its load; report the machine alongside them.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from rlhf.training.reward_train import tiny_reward_preset, train_reward_model  # noqa: E402
from rlhf.training.synthetic import write_brightness_pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        export = write_brightness_pairs(Path(tmp) / "pairs.parquet", args.pairs, seed=0)
        rates: list[float] = []
        config = tiny_reward_preset(batch_size=args.batch_size, max_steps=args.steps, epochs=100)
        start = time.perf_counter()
        result = train_reward_model(
            config,
            export,
            Path(tmp) / "run",
            on_log=lambda s, m: rates.append(m["pairs_per_s"]) if s > 1 and "pairs_per_s" in m else None,
        )
        wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steady = sorted(rates)[len(rates) // 2]
    print(
        f"tiny CLIP reward model, batch {args.batch_size} pairs, {args.steps} steps, torch threads {args.threads}"
    )
    print(f"  median pairs/s (train step incl. decode+preprocess): {steady:.1f}")
    print(
        f"  wall incl. setup + validation/test eval: {wall:.1f} s; final val acc {result.validation.accuracy:.3f}"
        if result.validation
        else ""
    )
    print(f"  peak RSS: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
