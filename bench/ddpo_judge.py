"""DDPO with the shapes-world judge as the reward (issue 10, third target), without Django, so it runs on a
bare GPU machine as well as here.

    .venv/bin/python -m bench.ddpo_judge --ddpo '{"iterations": 40}'                  # this CPU
    .venv/bin/python -m bench.ddpo_judge --task two-shape --ddpo '{"seed": 1}'        # one kind of caption
    python -m bench.ddpo_judge --device cuda --ddpo '{...}' --eval-every 25 --out DIR  # a GPU

It trains a LoRA on the shipped shapes model with ``rlhf.training.ddpo.train_ddpo`` (the code a fine-tune
run calls), sampling captions (``--train-split``) other than the evaluation's, and evaluates the base model
and every checkpoint on the held-out captions the loop bench uses (``held_out_captions``, seed 0 each, the
shipped version's settings: DPM-Solver++ 12 steps, guidance 2.5, 64 px) through ``generation.inference``,
the worker's code. It prints the judge's adherence per checkpoint, how many captions the checkpoint fixed
and broke against the base image of the same caption and seed, and the loop bench's larger-shapes paired
win rate. ``--reward noise`` is the control: DDPO with rewards that carry no signal (drawn from the run's
seed). ``--task`` trains and evaluates on one kind of caption only (``generation.shapes.world.TASKS``: two
shapes, a held-out (shape, colour) pair, ...), where ``bench/shapes.py --room`` finds room to improve.
``--out`` keeps the last checkpoint's LoRA and ``results.json``. On a CPU torch runs ``--threads`` threads,
1 by default (a run and its control side by side on two cores, each with torch's default, spent about three
times the CPU time an iteration).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loop import DDPO_JUDGE, WEIGHTS  # noqa: E402
from generation.shapes.world import HELD_OUT_SEED, TASKS, task_captions  # noqa: E402

TRAIN_SEED = 7  # the loop bench's judge project draws its captions with this seed


def _score_chunk(reward: str, arrays: list[np.ndarray], prompts: list[str]) -> list[float]:
    from PIL import Image

    from rlhf.training.rewards import build_reward

    return [float(x) for x in build_reward(reward)([Image.fromarray(a) for a in arrays], prompts)]


class PooledReward:
    """A registered reward scored in worker processes (the judge is pure Python, ~4 ms an image)."""

    def __init__(self, reward: str, workers: int) -> None:
        self.reward, self.workers = reward, workers
        # spawn: the pool starts after CUDA is initialised, and a forked CUDA process is not safe.
        self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else None

    def __call__(self, images, prompts) -> np.ndarray:
        arrays = [np.asarray(image) for image in images]
        if self.pool is None:
            return np.asarray(_score_chunk(self.reward, arrays, list(prompts)))
        size = -(-len(arrays) // self.workers)
        futures = [self.pool.submit(_score_chunk, self.reward, arrays[i : i + size], list(prompts[i : i + size]))
                   for i in range(0, len(arrays), size)]
        return np.asarray([score for future in futures for score in future.result()])


class NoiseReward:
    """The control: rewards with no information in them."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, images, prompts) -> np.ndarray:
        return self.rng.standard_normal(len(images))


class Evaluator:
    """Held-out adherence of the base model and of LoRA checkpoints, rendered by the worker's code."""

    def __init__(self, device: str, captions: list[str], seeds: list[int], batch: int, weights: Path) -> None:
        from generation import inference

        self.inference = inference
        self.cache = inference.PipelineCache(device)
        self.base = inference.ModelSpec(key="shapes", source=str(weights), dtype="float32")
        self.params = inference.GenerationParams(scheduler="dpmpp_2m", steps=12, guidance=2.5, width=64, height=64)
        self.captions, self.seeds, self.batch = captions, seeds, batch
        self.base_ok: np.ndarray | None = None
        self.base_size: np.ndarray | None = None

    def run(self, lora: Path | None, key: str) -> dict:
        from generation.shapes.judge import judge, summarize
        from rlhf.loop.stats import paired_difference, paired_win_rate
        from rlhf.preferences import larger_shapes

        spec = self.base if lora is None else self.inference.ModelSpec.lora(key, lora, self.base)
        loaded = self.cache.get(spec)
        requests = [self.inference.GenerationRequest(prompt=c, seeds=self.seeds, params=self.params, spec=spec)
                    for c in self.captions]
        rows = self.inference.generate_batch(loaded, requests, max_batch=self.batch)
        pairs = [(g.image, c) for c, row in zip(self.captions, rows, strict=True) for g in row]
        verdicts = [judge(image, caption) for image, caption in pairs]
        ok = np.array([v.overall for v in verdicts])
        size = np.array([larger_shapes(image, caption) for image, caption in pairs])
        summary = {k: round(v, 4) for k, v in summarize(verdicts).items()}
        summary["foreground"] = round(float(size.mean()), 4)
        if lora is None:
            self.base_ok, self.base_size = ok, size
        elif self.base_ok is not None:
            summary["fixed"] = int((ok & ~self.base_ok).sum())
            summary["broken"] = int((~ok & self.base_ok).sum())
            summary["delta_points"] = round(100 * (ok.mean() - self.base_ok.mean()), 2)
            change = paired_difference(ok.astype(float).tolist(), self.base_ok.astype(float).tolist())
            if change.low is not None and change.high is not None:  # 95%, over the held-out captions
                summary["delta_interval"] = [round(100 * change.low, 2), round(100 * change.high, 2)]
            win = paired_win_rate(size.tolist(), self.base_size.tolist())  # the loop bench's preference
            summary["larger_win_rate"] = round(win.rate, 3)
            summary["larger_win_interval"] = [round(win.low, 3), round(win.high, 3)]
        return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    parser.add_argument("--weights", type=Path, default=WEIGHTS,
                        help="the shapes-world pipeline to fine-tune (default: the shipped model)")
    parser.add_argument("--reward", default="shapes_overall", choices=("shapes_overall", "shapes_adherence", "noise"),
                        help="noise: a control, standard normal rewards (what does DDPO do with no signal?)")
    parser.add_argument("--ddpo", type=json.loads, default={}, metavar="JSON",
                        help=f"DDPOConfig fields over the loop bench's judge recipe {json.dumps(DDPO_JUDGE)}")
    parser.add_argument("--train-prompts", type=int, default=200, help="captions DDPO samples")
    parser.add_argument("--train-split", default="train", choices=("train", "any"),
                        help="draw them from the shapes model's training combinations only, or from any")
    parser.add_argument("--task", default="any", choices=TASKS,
                        help="train and evaluate on captions of this kind only (any: every caption, as bench/loop.py)")
    parser.add_argument("--eval-prompts", type=int, default=200, help="held-out captions (as bench/loop.py)")
    parser.add_argument("--eval-seeds", type=int, default=1, help="seeds per held-out caption (0, 1, ...)")
    parser.add_argument("--eval-every", type=int, default=0, help="evaluate every N iterations (0: at the end)")
    parser.add_argument("--max-minutes", type=float, default=0, help="stop training (and evaluate) after this")
    parser.add_argument("--judge-workers", type=int, default=1, help="processes scoring the reward")
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch's CPU threads (default 1: two runs side by side on two cores, each with torch's "
                             "default, spent about three times the CPU time an iteration; 0 = torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="keep the final LoRA and results.json here")
    args = parser.parse_args()
    if args.task == "held-out-pairs" and args.train_split == "train":
        parser.error("--task held-out-pairs has no captions in the train split: add --train-split any")
    if not (args.weights / "model_index.json").is_file():
        print(f"No shapes weights at {args.weights} (model_index.json); train them first.")
        return 2
    if args.device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch

    from rlhf.training.ddpo import tiny_ddpo_preset, train_ddpo

    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.set_num_threads(2)  # the GPU does the work; several runs may share the machine's cores
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    overrides = {**DDPO_JUDGE, "resolution": 64, "checkpoint_every": args.eval_every, "keep_last": 1,
                 **args.ddpo, "cpu": args.device == "cpu"}
    if "lora_targets" in overrides:
        overrides["lora_targets"] = tuple(overrides["lora_targets"])
    captions = task_captions(args.eval_prompts, HELD_OUT_SEED, args.task)  # held_out_captions() for "any"
    held_out = set(captions)  # a caption drawn twice (short ones can be) is never trained on
    prompts = tuple(c for c in task_captions(args.train_prompts, TRAIN_SEED, args.task, split=args.train_split)
                    if c not in held_out)
    control = args.reward == "noise"
    config = tiny_ddpo_preset(str(args.weights), prompts, reward="shapes_overall" if control else args.reward, **overrides)
    evaluator = Evaluator(args.device, captions, list(range(args.eval_seeds)), args.eval_batch, args.weights)
    shown = {k: v for k, v in overrides.items() if k != "cpu"}
    print(f"DDPO on {args.reward}, {len(prompts)} {args.train_split}-split training captions of task {args.task}, "
          f"{len(captions)} held-out, device {args.device}: "
          f"{json.dumps(shown)}")
    results: dict = {"config": shown, "reward": args.reward, "device": args.device, "train_prompts": len(prompts),
                     "task": args.task, "weights": str(args.weights),
                     "train_split": args.train_split, "eval": {}, "log": []}
    started = time.monotonic()
    results["eval"]["0"] = evaluator.run(None, "base")
    print(f"base: adherence {results['eval']['0']['overall']:.3f} {json.dumps(results['eval']['0'])}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="pickwise-ddpo-judge-"))

    def save() -> None:
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=1))

    def on_log(iteration: int, metrics) -> None:
        row = {"iteration": iteration, "minutes": round((time.monotonic() - started) / 60, 2),
               **{k: round(float(v), 4) for k, v in metrics.items()}}
        results["log"].append(row)
        print(json.dumps(row), flush=True)

    def on_checkpoint(iteration: int, directory: Path) -> None:
        summary = evaluator.run(directory, f"it{iteration}")
        results["eval"][str(iteration)] = summary
        print(f"iteration {iteration}: adherence {summary['overall']:.3f} ({summary['delta_points']:+.1f} points, "
              f"fixed {summary['fixed']}, broke {summary['broken']}) {json.dumps(summary)}", flush=True)
        if args.out is not None:
            shutil.copytree(directory, args.out / "lora", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("training_state"))
        save()

    deadline = started + 60 * args.max_minutes if args.max_minutes else None
    train_ddpo(config, workdir, on_log=on_log, on_checkpoint=on_checkpoint,
                        should_stop=(lambda: time.monotonic() > deadline) if deadline else None,
                        reward_fn=NoiseReward(config.seed) if control else PooledReward(args.reward, args.judge_workers))
    results["minutes"] = round((time.monotonic() - started) / 60, 2)
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    results["cpu_minutes"] = round(sum(r.ru_utime + r.ru_stime for r in (own, children)) / 60, 2)
    save()
    print(f"done in {results['minutes']} min wall, {results['cpu_minutes']} CPU min; work directory {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
