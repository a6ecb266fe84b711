"""Online fine-tuning against the shapes-world judge from the model's own samples (issue 26, item 4): Diffusion-DPO
on each caption's best and worst image, or reward-ranked fine-tuning (RAFT, Dong et al. 2023), beside DDPO
(``bench/ddpo_judge.py``), without Django.

    .venv/bin/python -m bench.judge_online --weights DIR --rounds 80 --eval-every 20 --out DIR
    .venv/bin/python -m bench.judge_online --weights DIR --reward noise ...    # the control
    .venv/bin/python -m bench.judge_online --method raft --weights DIR ...
    .venv/bin/python -m bench.judge_online --weights DIR --rounds 100 --out DIR --resume   # go on from DIR

Each round samples ``--images`` images of each of ``--captions`` training captions with the product's
sampler (DPM-Solver++ 12 steps, guidance ``--guidance``, 64 px: what the evaluation and the generation worker
use) and scores them with the judge (``shapes_overall``: a fully right image above any wrong one, partial
credit ordering the wrong ones). ``--method dpo`` (default) keeps each caption's best and worst image where
they differ and trains a LoRA with the Diffusion-DPO loss of ``rlhf.training.dpo`` (the base model, adapters
off, as the reference); ``--method raft`` keeps each caption's best image and trains the model's own
diffusion loss on it. Both replay the last ``--replay`` rounds' picks. DDPO learns from the log-probability of
every sampled step, one noisy number per image; these learn from whole images the judge ranked.

``--reward noise`` is the control: the same loop ranking each group by rewards drawn at random (DPO on pairs
in random order, RAFT on a random image). Evaluation is ``bench.ddpo_judge``'s: held-out captions of the task
rendered through the worker's code, the change in adherence points against the base with its paired 95%
interval, and the captions fixed and broken. ``--out`` keeps the run's state at every evaluation (the LoRA, the
optimiser, the replayed picks, the log) and ``--resume`` goes on from it, to the same figures a run without a
stop prints; the log gives the fine-tune's own CPU minutes (``train_cpu_minutes``, evaluation left out) beside
the wall clock. RAFT drifts: trained on its own guided samples the latents grow
(guidance compounds round on round), on unguided ones they shrink; DPO's reference holds them.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ddpo_judge import TRAIN_SEED, Evaluator, NoiseReward, PooledReward  # noqa: E402
from bench.loop import WEIGHTS  # noqa: E402
from generation.shapes.world import HELD_OUT_SEED, TASKS, task_captions  # noqa: E402

# what a resumed run may set anew; every other setting must be the run's own
RESUMABLE = frozenset({"rounds", "eval_every", "threads", "out", "resume"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="the shapes-world pipeline to fine-tune")
    parser.add_argument("--method", default="dpo", choices=("dpo", "raft"),
                        help="dpo: Diffusion-DPO on each caption's best against its worst image, the base model "
                             "as the reference; raft: the diffusion loss on each caption's best image")
    parser.add_argument("--right-only", action="store_true",
                        help="dpo: keep a caption's pair only where its best image is fully right (the judge's "
                             "verdict; ignored by the noise control, which has none)")
    parser.add_argument("--beta", type=float, default=500.0, help="Diffusion-DPO's beta (--method dpo)")
    parser.add_argument("--reward", default="shapes_overall", choices=("shapes_overall", "shapes_adherence", "noise"))
    parser.add_argument("--task", default="any", choices=TASKS)
    parser.add_argument("--train-prompts", type=int, default=200, help="training captions (the task's, train split)")
    parser.add_argument("--eval-prompts", type=int, default=200, help="held-out captions of the task")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--captions", type=int, default=16, help="captions sampled a round")
    parser.add_argument("--images", type=int, default=8, help="images of each caption a round (best of these kept)")
    parser.add_argument("--guidance", type=float, default=2.5,
                        help="the sampler's guidance for the training images (the product's 2.5; 1: none)")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps a round")
    parser.add_argument("--batch", type=int, default=32, help="latents an optimiser step")
    parser.add_argument("--replay", type=int, default=8, help="rounds of picks trained on (the newest)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha equal)")
    parser.add_argument("--caption-dropout", type=float, default=0.1, help="share trained unconditionally (for guidance)")
    parser.add_argument("--eval-every", type=int, default=20, help="evaluate every N rounds (and at the end)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the last LoRA, results.json and the run's state (state.pt) here")
    parser.add_argument("--resume", action="store_true",
                        help="go on from --out's state.pt (its last evaluation) up to --rounds")
    args = parser.parse_args()
    if args.resume and (args.out is None or not (args.out / "state.pt").is_file()):
        print(f"--resume needs --out with a state.pt in it (not at {args.out})")
        return 2
    if not (args.weights / "model_index.json").is_file():
        print(f"No shapes weights at {args.weights} (model_index.json)")
        return 2
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from generation.inference import make_scheduler
    from generation.shapes.train import diffusion_target
    from rlhf.training.ddim import decode_latents, encode_prompts
    from rlhf.training.ddpo import best_worst_pairs, to_pil
    from rlhf.training.dpo import dpo_batch_loss
    from rlhf.training.lora import add_lora, load_pipeline, lora_parameters, save_lora

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    captions = task_captions(args.eval_prompts, HELD_OUT_SEED, args.task)
    held_out = set(captions)
    prompts = [c for c in task_captions(args.train_prompts, TRAIN_SEED, args.task, split="train") if c not in held_out]
    evaluator = Evaluator("cpu", captions, [0], 8, args.weights)
    control = args.reward == "noise"
    reward = NoiseReward(args.seed) if control else PooledReward(args.reward, 1)
    shown = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results: dict = {"config": shown, "train_prompts": len(prompts), "eval": {}, "log": []}
    print(f"{args.method} on {args.reward}, {len(prompts)} training captions of task {args.task}, {len(captions)} held-out: "
          f"{json.dumps(shown)}", flush=True)
    state = torch.load(args.out / "state.pt", weights_only=False) if args.resume else None
    # the clocks go on from a resumed run's: wall minutes, the fine-tune's CPU seconds, the whole process's
    started = time.monotonic() - (state["wall_seconds"] if state else 0.0)
    prior_cpu = state["cpu_seconds"] if state else 0.0
    eval_cpu = 0.0  # CPU seconds this process spent evaluating (left out of the fine-tune's)

    def evaluate(lora: Path | None, key: str) -> dict:
        nonlocal eval_cpu
        tick = time.process_time()
        summary = evaluator.run(lora, key)
        eval_cpu += time.process_time() - tick
        return summary

    def train_cpu_seconds() -> float:
        return (state["train_cpu_seconds"] if state else 0.0) + time.process_time() - eval_cpu

    if state:
        fixed = {k: v for k, v in shown.items() if k not in RESUMABLE}
        before = {k: v for k, v in state["results"]["config"].items() if k not in RESUMABLE}
        if fixed != before:
            changed = sorted(k for k in fixed if fixed[k] != before.get(k))
            print(f"--resume goes on with the run's own settings; these differ from it: {', '.join(changed)}")
            return 2
        results = state["results"]
        results.setdefault("resumed", []).append({"after_round": state["round"], "config": shown})
        evaluator.base_ok, evaluator.base_size = state["base_ok"], state["base_size"]
        print(f"resumed from {args.out / 'state.pt'} after round {state['round']}", flush=True)
    else:
        results["eval"]["0"] = evaluate(None, "base")
    print(f"base: adherence {results['eval']['0']['overall']:.3f}", flush=True)

    pipe = load_pipeline(args.weights)
    pipe.text_encoder.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    add_lora(pipe.unet, rank=args.rank, alpha=args.rank)
    params = lora_parameters(pipe.unet)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    pipe.scheduler = make_scheduler("dpmpp_2m", pipe.scheduler.config)
    train_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        empty = encode_prompts(pipe, [""])
    # per round: (latents, caption embeddings); for dpo the latents are (2, captions, ...): best, then worst
    picks: list[tuple[torch.Tensor, torch.Tensor]] = []
    first = 1
    if state:
        with torch.no_grad():
            for param, saved in zip(params, state["lora"], strict=True):
                param.copy_(saved)
        optimizer.load_state_dict(state["optimizer"])
        picks, first = state["picks"], state["round"] + 1
        torch.set_rng_state(state["torch_rng"])
    workdir = Path(tempfile.mkdtemp(prefix="pickwise-judge-online-"))  # each evaluation's LoRA, gone at exit
    atexit.register(shutil.rmtree, workdir, True)

    def cpu_seconds() -> float:  # this process and its children, with a resumed run's before it
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return prior_cpu + sum(r.ru_utime + r.ru_stime for r in (own, children))

    def save(round_: int | None = None) -> None:
        if args.out is None:
            return
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        if round_ is not None:  # what --resume needs to go on exactly as an unbroken run would
            snapshot = {"round": round_, "results": results, "lora": [p.detach().clone() for p in params],
                        "optimizer": optimizer.state_dict(), "picks": picks, "torch_rng": torch.get_rng_state(),
                        "base_ok": evaluator.base_ok, "base_size": evaluator.base_size,
                        "cpu_seconds": cpu_seconds(), "train_cpu_seconds": train_cpu_seconds(),
                        "wall_seconds": time.monotonic() - started}
            torch.save(snapshot, args.out / "state.tmp")
            (args.out / "state.tmp").replace(args.out / "state.pt")

    for round_ in range(first, args.rounds + 1):
        tick = time.perf_counter()
        rng = np.random.default_rng([args.seed, round_])
        chosen = [prompts[i] for i in rng.choice(len(prompts), size=args.captions, replace=False)]
        batch = [c for c in chosen for _ in range(args.images)]
        seeds = rng.integers(0, 2**31 - 1, size=len(batch)).tolist()
        # sample: the product's sampler, each image from its own seed
        pipe.unet.eval()
        with torch.no_grad():
            out = pipe(batch, generator=[torch.Generator().manual_seed(s) for s in seeds], num_inference_steps=12,
                       guidance_scale=args.guidance, height=64, width=64, output_type="latent")
            latents = out.images
            images = to_pil(decode_latents(pipe, latents))
            scores = np.asarray(reward(images, batch), dtype=np.float64).reshape(args.captions, args.images)
            best = scores.argmax(axis=1) + np.arange(args.captions) * args.images
            if args.method == "raft":
                picks.append((latents[best].clone(), encode_prompts(pipe, [batch[i] for i in best])))
            else:  # a pair where the caption's images differ in reward (a group all right or all wrong has none)
                winners, losers = best_worst_pairs(scores.ravel(), args.images,
                                                   1.0 if args.right_only and not control else None)
                if len(winners):
                    pair = torch.stack([latents[winners], latents[losers]])
                    picks.append((pair.clone(), encode_prompts(pipe, [batch[i] for i in winners])))
        picks = picks[-args.replay :]
        if not picks:
            continue
        # train: the diffusion loss on the kept latents, or DPO on the kept pairs
        pool_latents = torch.cat([p[0] for p in picks], dim=0 if args.method == "raft" else 1)
        pool_embeds = torch.cat([p[1] for p in picks])
        size = len(pool_embeds)
        pipe.unet.train()
        losses = []
        for _ in range(args.steps):
            idx = torch.from_numpy(rng.integers(0, size, size=args.batch))
            if args.method == "dpo":
                both = torch.cat([pool_latents[0, idx], pool_latents[1, idx]])
                generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
                loss = dpo_batch_loss(pipe.unet, train_scheduler, both, pool_embeds[idx],
                                      torch.ones(args.batch), args.beta, generator).loss
            else:
                x0, cond = pool_latents[idx], pool_embeds[idx]
                drop = torch.from_numpy(rng.random(args.batch) < args.caption_dropout)
                cond = torch.where(drop[:, None, None], empty.expand_as(cond), cond)
                noise = torch.randn_like(x0)
                t = torch.from_numpy(rng.integers(0, train_scheduler.config.num_train_timesteps, size=args.batch))
                pred = pipe.unet(train_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
                loss = F.mse_loss(pred, diffusion_target(train_scheduler, x0, noise, t))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(loss.item())
        row = {"round": round_, "minutes": round((time.monotonic() - started) / 60, 2),
               "pass_rate": round(float((scores >= 1.0).mean()), 4) if not control else None,
               "best_pass_rate": round(float((scores.max(axis=1) >= 1.0).mean()), 4) if not control else None,
               "loss": round(float(np.mean(losses)), 5), "pool": size,
               "latent_std": round(float(latents.std()), 4), "s_per_round": round(time.perf_counter() - tick, 2),
               "train_cpu_minutes": round(train_cpu_seconds() / 60, 2)}
        results["log"].append(row)
        print(json.dumps(row), flush=True)
        if round_ % args.eval_every == 0 or round_ == args.rounds:
            directory = save_lora(pipe.unet, workdir / f"round-{round_}")
            summary = evaluate(directory, f"r{round_}")
            results["eval"][str(round_)] = summary
            print(f"round {round_}: adherence {summary['overall']:.3f} ({summary['delta_points']:+.1f} points "
                  f"{summary.get('delta_interval')}, fixed {summary['fixed']}, broke {summary['broken']}) "
                  f"{json.dumps(summary)}", flush=True)
            if args.out is not None:
                shutil.copytree(directory, args.out / "lora", dirs_exist_ok=True)
            save(round_)
    results["minutes"] = round((time.monotonic() - started) / 60, 2)
    results["cpu_minutes"] = round(cpu_seconds() / 60, 2)
    results["train_cpu_minutes"] = round(train_cpu_seconds() / 60, 2)
    save()
    print(f"done in {results['minutes']} min wall, {results['cpu_minutes']} CPU min "
          f"({results['train_cpu_minutes']} fine-tuning, the rest evaluating)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
