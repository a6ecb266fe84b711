"""The closed loop's targets (issue 10), printed as figures. Runs on the CPU, end to end, through the services.

    .venv/bin/python bench/loop.py            # needs generation/weights/shapes/model_index.json

1. DPO round: from the shipped shapes model, one round of 200 prompts x 4 images x 3 simulated annotators
   preferring larger shapes, then Diffusion-DPO. Targets: under 30 minutes end to end; the tuned version
   beats the base on the preference in >= 65% of paired held-out comparisons, 95% interval above 50%;
   adherence drops by at most 5 points.
2. DDPO round: the same, with a reward model trained on that round's export as DDPO's reward.
3. DDPO on adherence: the shapes-world judge as the reward raises held-out adherence by >= 10 points.
4. The control (section ``control``): DDPO with the DDPO round's recipe on rewards of pure noise
   (``bench/ddpo_judge.py --reward noise``; the recipe's ``seed`` picks the run). With no signal at all,
   DDPO still moves the model far enough to swing the paired win rate either way: seeds 0, 1 and 2 gave
   0.74, 0.74 and 0.16. So a DDPO round's win rate counts only across several rounds, set against the
   control's spread over as many seeds. DPO's control is ``--sections dpo --temperature 1000`` (labels of
   pure noise): 0.30, 0.25 and 0.44 on seeds 0-2, where the round's labels give 0.69, 0.66 and 0.71. Every
   section also prints the mean paired change in the preference score with its interval.

A round is reproducible: its captions, image seeds and annotators' noise come from ``--seed`` (the rounds'
prompt_seed), so two runs on one machine print the same figures; other seeds are other rounds, and at this
temperature a round's figures depend on its data (the DDPO round's most of all: 0.52, 0.40 and 0.93 on
seeds 0-2), so judge a recipe over several seeds. ``--rounds N`` runs N rounds of the dpo and ddpo
sections on one project, each continuing the last one's LoRA, and reports each against its input version
and the last one against the base (the targets are round 1's).

It uses a throw-away SQLite database and media directory under a temporary directory (so it never
touches your data), migrates it, and lifts the per-user generation rate limit for the simulated users.
The base version is the shipped model with the settings the demo seed registers (DPM-Solver++ 12 steps,
guidance 2.5); fine-tunes train at its native 64 px. The recipes below are the bench's defaults; each
can be replaced from the command line (``--dpo '{"max_steps": 600}'``, ``--sections dpo judge``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "generation" / "weights" / "shapes"

# Simulated annotators: Bradley-Terry noise at this temperature on the "larger shapes" score (the share
# of foreground pixels, so 0.005 is a quarter of a percent of the image).
TEMPERATURE = 0.005
DPO = {}  # the "tiny" preset: 300 steps of 8 pairs, lr 1e-3, beta 500, LoRA rank 4
REWARD = {}
# DDPO: the "tiny" preset sampled like the shipped model (12 steps, guidance 2.5), 40 iterations of 8 prompts x 4.
# Advantages over one batch-wide std (not each caption's own): a caption's four images mostly differ by less
# than the annotators' noise, and the round's reward model cannot tell them apart, so per-caption scaling
# turned its guesses into full-size updates.
DDPO_REWARD_MODEL = {"iterations": 40, "prompts_per_iteration": 8, "images_per_prompt": 4, "sample_steps": 12,
                     "guidance_scale": 2.5, "lr": 1e-3, "clip_range": 0.2, "train_batch_size": 8,
                     "timestep_fraction": 0.5, "advantage_scale": "batch"}
# DDPO on the judge: groups of 8 images (a caption's images are mostly all right or all wrong), 30 iterations,
# each group's own scale (the judge's verdicts are exact).
DDPO_JUDGE = {**DDPO_REWARD_MODEL, "iterations": 30, "images_per_prompt": 8, "advantage_scale": "group"}


def setup(workdir: Path) -> None:
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{workdir / 'bench.sqlite3'}")
    os.environ.setdefault("MEDIA_ROOT", str(workdir / "media"))
    os.environ.setdefault("PICKWISE_MODEL_CACHE_DIR", str(workdir / "models"))
    os.environ.setdefault("PICKWISE_EXPORT_DIR", str(workdir / "exports"))
    os.environ.setdefault("PICKWISE_DEVICE", "cpu")
    os.environ.setdefault("GENERATION_RATE_LIMIT_PER_MINUTE", "100000")
    os.environ.setdefault("CELERY_BROKER_URL", f"filesystem://{workdir / 'broker'}")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def line(name: str, value: str, ok: bool | None) -> None:
    mark = "" if ok is None else ("PASS" if ok else "FAIL")
    print(f"{name:<58} {value:<40} {mark}")


def with_interval(stats: dict, key: str, form: str, *, scale: float = 1) -> str:
    """``stats[key]`` and, where the evaluation gave one, its ``key + "_interval"`` in brackets."""
    low, high = stats.get(f"{key}_interval") or (None, None)
    text = form.format(scale * stats[key])
    return text if low is None else f"{text} [{form.format(scale * low)}, {form.format(scale * high)}]"


def report(title: str, stats: dict, seconds: float | None = None, *, adherence_gain: float | None = None,
           targets: bool = True) -> None:
    """A section's figures; PASS/FAIL against the issue's targets unless targets is False (the control)."""
    print(f"\n== {title}")
    preference_round = targets and adherence_gain is None
    if seconds is not None:
        line("end to end (minutes" + (", target < 30)" if targets else ")"), f"{seconds / 60:.1f}",
             seconds < 30 * 60 if targets else None)
    win = stats.get("win_rate") or {}
    if win:  # a target only for the preference rounds; the judge run and the control report it for information
        line("paired preference win rate" + (" (target >= 0.65, CI low > 0.5)" if preference_round else ""),
             f"{win['rate']:.3f} [{win['low']:.3f}, {win['high']:.3f}] n={win['n']}",
             win["rate"] >= 0.65 and win["low"] > 0.5 if preference_round else None)
    change = stats.get("score_delta")
    if change is not None:
        line("preference score change (mean paired)", with_interval(stats, "score_delta", "{:+.5f}"), None)
    delta = stats.get("adherence_delta")
    if delta is not None:
        value = with_interval(stats, "adherence_delta", "{:+.1f}", scale=100)
        if not targets:
            line("adherence change (points)", value, None)
        elif adherence_gain is None:
            line("adherence change (points, target >= -5)", value, delta >= -0.05)
        else:
            line(f"adherence change (points, target >= +{adherence_gain:.0f})", value, delta >= adherence_gain / 100)
    for key in ("adherence_baseline", "adherence_version", "foreground", "images", "annotations", "pairs",
                "agreement", "reward_accuracy", "seconds"):
        if stats.get(key) is not None:
            line(key, str(stats[key]), None)


def noise_control(ddpo: dict, prompts: int, workdir: Path) -> dict:
    """bench/ddpo_judge.py's noise-reward run with the DDPO round's recipe, in report()'s terms."""
    out = workdir / "control"
    subprocess.run([sys.executable, "-m", "bench.ddpo_judge", "--reward", "noise", "--ddpo", json.dumps(ddpo),
                    "--eval-prompts", str(prompts), "--out", str(out)], cwd=ROOT, check=True)  # noqa: S603
    results = json.loads((out / "results.json").read_text())
    base, last = results["eval"]["0"], results["eval"][max(results["eval"], key=int)]
    low, high = last["larger_win_interval"]
    return {"win_rate": {"rate": last["larger_win_rate"], "low": low, "high": high, "n": int(last["n"])},
            "adherence_delta": last["delta_points"] / 100, "adherence_baseline": base["overall"],
            "adherence_version": last["overall"], "foreground": f"{base['foreground']} -> {last['foreground']}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", choices=("dpo", "ddpo", "control", "judge"),
                        default=["dpo", "ddpo", "control", "judge"])
    parser.add_argument("--temperature", type=float, default=TEMPERATURE)
    parser.add_argument("--judge-reward", default="shapes_overall", choices=("shapes_overall", "shapes_adherence"),
                        help="DDPO's reward in the judge section (shapes_adherence's partial credit gets gamed)")
    parser.add_argument("--prompts", type=int, default=200, help="captions per round (and held-out captions)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of the dpo and ddpo sections, each continuing the last (targets: round 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the rounds' prompt_seed: their captions and image seeds (a round is reproducible)")
    for name, default in (("dpo", DPO), ("reward", REWARD), ("ddpo", DDPO_REWARD_MODEL), ("judge", DDPO_JUDGE)):
        parser.add_argument(f"--{name}", type=json.loads, default=default, metavar="JSON",
                            help=f"hyper-parameters of the {name} run (default {json.dumps(default)})")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not (WEIGHTS / "model_index.json").is_file():
        print(f"No shapes weights at {WEIGHTS} (model_index.json); train them first.")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="pickwise-loop-bench-"))
    setup(workdir)
    from django.contrib.auth.models import Group, User

    from annotate.builder import services as template_services
    from annotate.workflow.services import project_update_settings, task_create
    from generation.services import model_version_register
    from generation.shapes.world import prompt_captions
    from projects.roles import GROUP_NAMES, Role
    from projects.services import project_create
    from rlhf.loop.evaluate import held_out_captions, version_evaluation_run
    from rlhf.loop.rounds import RoundConfig, round_run
    from rlhf.runs import finetune

    admin = User.objects.create(username="bench-admin", is_superuser=True)
    admin.groups.add(Group.objects.get(name=GROUP_NAMES[Role.ADMIN]))
    base = model_version_register(name="shapes", source=str(WEIGHTS), dtype="float32", scheduler="dpmpp_2m",
                                  steps=12, guidance=2.5, width=64, height=64)
    print(f"recipes: seed {args.seed}, temperature {args.temperature}, DPO {args.dpo}, reward model {args.reward}, "
          f"DDPO on it {args.ddpo}, DDPO on the judge ({args.judge_reward}) {args.judge}")

    def project(name: str):
        made = project_create(name=name, created_by=admin)
        template = template_services.template_create_from_preset(project=made, preset="rlhf_image_generation",
                                                                 created_by=admin)
        version = template_services.template_version_publish(template=template, created_by=admin)
        return project_update_settings(project=made, template_version=version)

    def round_config(**kwargs) -> RoundConfig:
        return RoundConfig(prompts=args.prompts, images_per_prompt=4, annotators=3, preference="larger_shapes",
                           temperature=args.temperature, eval_prompts=args.prompts, prompt_seed=args.seed,
                           **kwargs)

    def rounds(title: str, name: str, config: RoundConfig) -> None:
        """``args.rounds`` rounds on one project, each reported against its input version; with more than
        one, the last round's version against the base as well (what the rounds added up to)."""
        made = project(name)
        loop_round = None
        for number in range(1, args.rounds + 1):
            started = time.monotonic()
            loop_round = round_run(project=made, user=admin, start_version=base, log=print, config=config)
            label = (title if args.rounds == 1 else f"{title}, round 1 (against the base)" if number == 1
                     else f"{title}, round {number} (against round {number - 1}'s version)")
            report(label, loop_round.stats, time.monotonic() - started, targets=number == 1)
        if args.rounds > 1 and loop_round is not None:
            evaluation = version_evaluation_run(version=loop_round.output_version, baseline=base, user=admin,
                                                preference="larger_shapes", prompts=held_out_captions(args.prompts),
                                                params=made.workflow.generation_settings or None)
            report(f"{title}: round {args.rounds}'s version against the base", evaluation.results, targets=False)

    if "dpo" in args.sections:
        rounds("DPO round (larger shapes)", "loop-dpo", round_config(method="dpo", hyperparameters=args.dpo))

    if "ddpo" in args.sections:
        rounds("DDPO round with the round's reward model", "loop-ddpo",
               round_config(method="ddpo", reward_model=True, hyperparameters=args.ddpo,
                            reward_hyperparameters=args.reward))

    if "control" in args.sections:
        started = time.monotonic()
        report("Control: the DDPO round's recipe on noise rewards (how far DDPO drifts with no signal)",
               noise_control(args.ddpo, args.prompts, workdir), time.monotonic() - started, targets=False)

    if "judge" in args.sections:
        judge_project = project("loop-judge")
        for caption in prompt_captions(args.prompts, seed=7, split="train"):
            task_create(project=judge_project, prompt_text=caption, created_by=admin)
        started = time.monotonic()
        run = finetune.finetune_run_create(user=admin, base_version=base, method="ddpo", project=judge_project,
                                               reward_name=args.judge_reward, prompt_source="project",
                                               hyperparameters=args.judge, enqueue=False)
        run = finetune.finetune_run_execute(run_id=run.pk)
        if run is None or run.result_version is None:
            print(f"the judge DDPO run failed: {getattr(run, 'error', '')}")
            return 1
        evaluation = version_evaluation_run(version=run.result_version, baseline=base, user=admin,
                                            preference="larger_shapes", prompts=held_out_captions(args.prompts))
        report("DDPO with the shapes judge as reward", evaluation.results, time.monotonic() - started,
               adherence_gain=10)
    print(f"\nwork directory: {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
