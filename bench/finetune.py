"""Diffusion fine-tuning cost on the tiny pipeline (CPU): seconds per optimisation step and peak memory.

    .venv/bin/python bench/finetune.py [--dpo-steps 20] [--ddpo-iterations 3] [--threads 1]

Each method runs in its own process so peak RSS (ru_maxrss) is per method.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
from pathlib import Path
from queue import Empty
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _median(values: list[float]) -> float:
    """The median of the timings after the first (warm-up: the first step compiles and allocates), or of the
    only one when there is one; a clear error when the trainer logged none."""
    timed = values[1:] or values
    if not timed:
        raise RuntimeError("the trainer logged no timings: give it more steps or iterations")
    return sorted(timed)[len(timed) // 2]


def run_dpo(steps: int, threads: int, out: Any) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    from generation.tiny import build_tiny_pipeline
    from rlhf.training.dpo import tiny_dpo_preset, train_dpo
    from rlhf.training.synthetic import write_brightness_pairs

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny_pipeline(Path(tmp) / "base")
        export = write_brightness_pairs(Path(tmp) / "pairs.parquet", 200, seed=0)
        times: list[float] = []
        config = tiny_dpo_preset(str(base), max_steps=steps, batch_size=8)
        train_dpo(
            config,
            export,
            Path(tmp) / "run",
            on_log=lambda s, m: times.append(m["s_per_step"]),
        )
    out.put(("dpo", _median(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, config))


def run_ddpo(iterations: int, threads: int, out: Any) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    from generation.tiny import build_tiny_pipeline
    from rlhf.training.ddpo import tiny_ddpo_preset, train_ddpo

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny_pipeline(Path(tmp) / "base")
        times: list[float] = []
        config = tiny_ddpo_preset(
            str(base), ("a cat", "a dog", "a red house", "a tree"), iterations=iterations
        )
        train_ddpo(
            config,
            Path(tmp) / "run",
            on_log=lambda s, m: times.append(m["s_per_iteration"]),
        )
    out.put(("ddpo", _median(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dpo-steps", type=int, default=20)
    parser.add_argument("--ddpo-iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    for target, n in ((run_dpo, args.dpo_steps), (run_ddpo, args.ddpo_iterations)):
        queue = ctx.Queue()
        proc = ctx.Process(target=target, args=(n, args.threads, queue))
        proc.start()
        while True:  # a child that dies (an error, the OOM killer) never answers: stop waiting then
            try:
                name, seconds, peak_mib, config = queue.get(timeout=5)
                break
            except Empty:
                if not proc.is_alive():
                    sys.exit(f"{target.__name__} failed (exit code {proc.exitcode}); its error is above")
        proc.join()
        if name == "dpo":
            print(
                f"DPO  tiny pipeline {config.resolution}px, batch {config.batch_size} pairs, LoRA r{config.lora_rank}:"
            )
            print(f"  median s/optimisation step: {seconds:.3f}  peak RSS: {peak_mib:.0f} MiB")
        else:
            samples = config.prompts_per_iteration * config.images_per_prompt
            opt_steps = config.inner_epochs * -(-samples // config.train_batch_size) // config.grad_accum
            print(
                f"DDPO tiny pipeline {config.resolution}px, {samples} samples x {config.sample_steps} DDIM steps "
                f"(CFG {config.guidance_scale}), {opt_steps} optimisation steps/iteration:"
            )
            print(
                f"  median s/iteration: {seconds:.2f} (= {seconds / opt_steps:.2f} s per optimisation step incl. "
                f"sampling)  peak RSS: {peak_mib:.0f} MiB"
            )


if __name__ == "__main__":
    main()
