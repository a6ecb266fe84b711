"""The closed loop's figures for any preference (issues 10 and 27), printed. Runs on the CPU, end to end, through
the product's services, from the shipped shapes model (needs generation/weights/shapes/model_index.json).

    .venv/bin/python bench/loop.py                                    # larger_shapes, sections dpo ddpo control judge
    .venv/bin/python bench/loop.py --preference mypkg.prefs:score --label-accuracy 0.6 --sections dpo ddpo control

``--preference`` is a built-in (larger_shapes, brighter, shape_centred, warmer) or any callable
``(image, prompt) -> float`` named by its dotted path; the simulated annotators rank by it, and every
section's evaluation scores by it. Sections (``--sections``):

- ``dpo``: a round of ``--prompts`` captions x 4 images x 3 simulated annotators, then Diffusion-DPO.
  Targets (issue 10): under 30 minutes end to end; the tuned version beats the base on the preference in
  >= 65% of paired held-out comparisons, 95% interval above 50%; adherence drops by at most 5 points.
- ``ddpo``: the same round, with a reward model trained on its export as DDPO's reward.
- ``control``: DDPO with the ddpo section's recipe on the round's captions, rewarded with pure noise: how
  far DDPO drifts with no signal at all. It swings the win rate either way (0.74, 0.74 and 0.16 over three
  seeds on larger shapes; 0.175 on the README's warmth), so a DDPO round's figure counts only beside it.
  One control's interval says only whether that run's change had a direction; ``bench/seeds.py`` reads
  several runs' logs and judges the control over seeds.
- ``dpo-noise-labels``, ``ddpo-noise-labels``: the dpo and ddpo rounds on the same images with labels of
  pure noise (label accuracy 0.5), each round's own control.
- ``judge``: DDPO with the shapes-world judge as the reward (target: adherence +10 points).

Label noise. ``--label-accuracy P`` (default 0.6) sets the annotators' noise as the share of their pairwise
labels that agree with the preference: each round scores its own images and calibrates the Bradley-Terry
temperature to P on their pairs, whatever the preference's units, so two preferences get the same noise.
``--temperature T`` sets the raw temperature instead (in the preference's units; the issue-10 figures used
0.005 on larger_shapes). Every round prints the temperature it used, the label accuracy its rankings
reached and the annotators' agreement.

Figures. Each section prints the paired win rate (Wilson interval), each version's mean preference score
(t interval), the mean paired change (t interval), the change relative to the baseline's mean and the
standardised effect size d_av (paired-bootstrap intervals), and the shapes judge's adherence; a DPO round
its implicit accuracy on the export's held-out pairs, a DDPO round its reward model's validation accuracy;
and the wall and CPU minutes of each section and of the whole run (on a shared machine, read the CPU time).

What an interval covers: the evaluation's n held-out (caption, seed) pairs as a sample of the shapes world's
captions, for the versions as trained. A round's own randomness (its captions, images, labels, training)
shows only across ``--seed`` values, so judge a recipe over several. ``--eval-seed`` (default 0, the same
captions for every ``--seed``) draws other held-out captions and image seeds; give each run its own to let
the spread over runs include the evaluation's sampling too.

A round is reproducible: its captions, image seeds and annotators' noise come from ``--seed`` (the rounds'
prompt_seed), so two runs on one machine print the same figures. ``--rounds N`` runs N rounds of each round
section on one project, each continuing the last one's LoRA on fresh captions (round k's are
``prompt_captions(--prompts, seed=--seed + k)``), and reports each against its input version and against the
base on the same held-out captions and seeds, then a table of the rounds with the targets of issue 26
item 3 (for the round sections on real labels): every round beats its input version with the win rate's
interval above 50%, the last round beats the base in >= 90% of paired comparisons, adherence stays within
5 points of the base every round, and all rounds take under 60 minutes. Round 1 is also held to the
single round's targets above. A DDPO round's reward model is the ``shapes`` preset (the shipped model's
VAE as a frozen feature extractor) whenever the base is the shipped shapes model, ``tiny`` otherwise.

Torch runs on ``--threads`` CPU threads, 1 by default: on this 2-core machine under other work, a second
thread made generation 18 times slower (16 s an image against 0.9 s). It works in a throw-away SQLite
database and media directory under a temporary directory, whatever the environment names (so it never
touches your data), removed at the end (also when killed) unless ``--keep``. The base version is
the shipped model with the demo's settings (DPM-Solver++ 12 steps, guidance 2.5, 64 px), or another pipeline
directory (``--base``, with ``--generation`` settings; the suite runs a reduced bench on its tiny one). Each
recipe below can be replaced from the command line (``--dpo '{"max_steps": 600}'``; the ddpo sections run the
product round's recipe, group DPO on groups of eight, over which ``--ddpo`` JSON goes, or ``--ddpo
policy_gradient``, the rounds' earlier policy gradient); every recipe the chosen
sections train with is checked before the bench makes anything, and a bad one stops it at once (exit 2, naming
the flag and the field).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "generation" / "weights" / "shapes"
sys.path.insert(0, str(ROOT))

from rlhf.preferences import build_preference, check_label_accuracy  # noqa: E402  (Django-free)

LABEL_ACCURACY = 0.6  # the default label noise: 60% of the annotators' pairwise labels agree with the preference
DPO: dict[str, Any] = {}  # the "tiny" preset: 300 steps of 8 pairs, lr 1e-3, beta 500, LoRA rank 4
REWARD: dict[str, Any] = {}
# The ddpo sections' default recipe: the product round's own (rlhf.loop.rounds.ROUND_DDPO_DEFAULTS, group DPO on
# groups of eight over the "tiny" preset), so the bench measures what a round in the browser runs.
DDPO_ROUND: dict[str, Any] = {}
# DDPO's policy gradient as the rounds ran it before group DPO (the README's earlier DDPO tables; `--ddpo
# policy_gradient`): the "tiny" preset sampled like the shipped model (12 steps, guidance 2.5), 40 iterations of
# 8 prompts x 4. Advantages over one batch-wide std (not each caption's own): a caption's four images mostly
# differ by less than the annotators' noise, and the round's reward model cannot tell them apart, so
# per-caption scaling turned its guesses into full-size updates.
DDPO_POLICY_GRADIENT = {"objective": "policy_gradient", "iterations": 40, "prompts_per_iteration": 8,
                        "images_per_prompt": 4, "sample_steps": 12, "guidance_scale": 2.5, "lr": 1e-3,
                        "clip_range": 0.2, "train_batch_size": 8, "timestep_fraction": 0.5, "advantage_scale": "batch"}
DDPO_RECIPES = {"round": DDPO_ROUND, "policy_gradient": DDPO_POLICY_GRADIENT}  # --ddpo NAME
# DDPO on the judge: groups of 8 images (a caption's images are mostly all right or all wrong), 30 iterations,
# each group's own scale (the judge's verdicts are exact).
DDPO_JUDGE = {**DDPO_POLICY_GRADIENT, "iterations": 30, "images_per_prompt": 8, "advantage_scale": "group"}
BASE_GENERATION = {"scheduler": "dpmpp_2m", "steps": 12, "guidance": 2.5, "width": 64, "height": 64}  # the demo's
SECTIONS = ("dpo", "ddpo", "control", "dpo-noise-labels", "ddpo-noise-labels", "judge")
DEFAULT_SECTIONS = ("dpo", "ddpo", "control", "judge")
NOISE_REWARD = "noise"  # the control's reward, registered by this bench only

# Known-harmless library chatter, printed at every pipeline load otherwise: diffusers on loading a LoRA with no
# text-encoder part and on float32 casts, transformers on torchvision being absent, kombu on the file broker.
QUIET_LOGGERS = ("diffusers", "transformers", "accelerate", "peft", "kombu")


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object of hyper-parameters, not {text!r}")
    return value


def ddpo_recipe(text: str) -> dict[str, Any]:
    """``--ddpo``: a recipe's name (DDPO_RECIPES) or a JSON object of hyper-parameters over the round's defaults."""
    if text in DDPO_RECIPES:
        return dict(DDPO_RECIPES[text])
    if not text.lstrip().startswith("{"):
        raise argparse.ArgumentTypeError(f"must be a recipe's name ({', '.join(DDPO_RECIPES)}) or a JSON object of "
                                         f"hyper-parameters, not {text!r}")
    return json_object(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--preference", default="larger_shapes",
                        help="what the simulated annotators prefer and every section scores: a built-in name or a "
                             "dotted path 'package.module:function' to a callable (image, prompt) -> float")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--label-accuracy", type=float, default=None, metavar="P",
                       help=f"target share of labels agreeing with the preference, 0.5-1, calibrated per round on "
                            f"its own images (default {LABEL_ACCURACY})")
    noise.add_argument("--temperature", type=float, default=None, metavar="T",
                       help="the annotators' raw Bradley-Terry temperature, in the preference's score units")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS))
    parser.add_argument("--judge-reward", default="shapes_overall", choices=("shapes_overall", "shapes_adherence"),
                        help="DDPO's reward in the judge section (shapes_adherence's partial credit gets gamed)")
    parser.add_argument("--prompts", type=int, default=200, help="captions per round (and held-out captions)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of each round section, each continuing the last (targets: round 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the rounds' prompt_seed: their captions, image seeds and label noise")
    parser.add_argument("--eval-seed", type=int, default=0,
                        help="which held-out captions and image seed the evaluations use (0: the same for every "
                             "--seed)")
    parser.add_argument("--base", type=Path, default=WEIGHTS,
                        help="the base model, a diffusers pipeline directory (default: the shipped shapes model)")
    parser.add_argument("--generation", type=json_object, default={}, metavar="JSON",
                        help=f"the base version's generation settings over {json.dumps(BASE_GENERATION)}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch's CPU threads (default 1: on a busy machine a second thread made generation "
                             "18 times slower; 0 = torch's default)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (database, media, runs)")
    for name, default in (("dpo", DPO), ("reward", REWARD), ("judge", DDPO_JUDGE)):
        parser.add_argument(f"--{name}", type=json_object, default=default, metavar="JSON",
                            help=f"hyper-parameters of the {name} run (default {json.dumps(default)})")
    parser.add_argument("--ddpo", type=ddpo_recipe, default=DDPO_ROUND, metavar="JSON|NAME",
                        help="hyper-parameters of the ddpo sections' runs over the round's defaults "
                             "(rlhf.loop.rounds.ROUND_DDPO_DEFAULTS: group DPO on groups of eight), or a recipe's "
                             f"name: 'round' (the default, {{}}) or 'policy_gradient' ({json.dumps(DDPO_POLICY_GRADIENT)})")
    args = parser.parse_args(argv)
    try:
        build_preference(args.preference)
    except ValueError as exc:
        parser.error(f"--preference: {exc}")
    if args.temperature is None:
        args.label_accuracy = LABEL_ACCURACY if args.label_accuracy is None else args.label_accuracy
        try:
            check_label_accuracy(args.label_accuracy)
        except ValueError as exc:
            parser.error(f"--label-accuracy: {exc}")
    elif not (math.isfinite(args.temperature) and args.temperature >= 0):
        parser.error(f"--temperature must be a finite number >= 0, not {args.temperature}")
    for name in ("prompts", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    for name in ("seed", "eval_seed", "threads"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    unknown = sorted(set(args.generation) - set(BASE_GENERATION))
    if unknown:
        parser.error(f"--generation: unknown settings {unknown}; choose from {sorted(BASE_GENERATION)}")
    args.sections = list(dict.fromkeys(args.sections))
    return args


def setup(workdir: Path, *, threads: int) -> None:
    """Django on a throw-away SQLite database and directories under ``workdir``, whatever the environment
    says (a DATABASE_URL or bucket exported for the product must not receive the bench's data)."""
    os.environ.update({
        "PICKWISE_ENV": "development", "PICKWISE_VAR_DIR": str(workdir),
        "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}", "MEDIA_ROOT": str(workdir / "media"),
        "AWS_STORAGE_BUCKET_NAME": "", "PICKWISE_MODEL_CACHE_DIR": str(workdir / "models"),
        "PICKWISE_EXPORT_DIR": str(workdir / "exports"), "CELERY_BROKER_URL": f"filesystem://{workdir / 'broker'}",
        "CELERY_RESULT_BACKEND": "", "GENERATION_RATE_LIMIT_PER_MINUTE": "100000",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    })
    os.environ.setdefault("PICKWISE_DEVICE", "cpu")
    if threads:
        os.environ["GENERATION_TORCH_THREADS"] = str(threads)  # the generation worker's own setting
    os.environ.setdefault("TQDM_DISABLE", "1")  # the bench prints its own progress, one line per stage
    import django

    django.setup()
    if threads:
        import torch

        torch.set_num_threads(threads)


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def recipe_problem(args: argparse.Namespace) -> str | None:
    """The first recipe of the chosen sections that would not train, as ``--flag: problem``, found before the
    bench migrates its database or generates anything (a round's images take minutes); None when all are fine.
    The same checks a round and a fine-tune run make when they are created."""
    from core.exceptions import ApplicationError
    from rlhf.loop.rounds import ROUND_DDPO_DEFAULTS, auto_reward_preset
    from rlhf.runs.finetune import finetune_recipe_check
    from rlhf.runs.reward import reward_recipe_check

    generation = {**BASE_GENERATION, **args.generation}
    resolution = generation["width"] if generation["width"] == generation["height"] else None
    base = args.base.resolve()

    def finetune(method: str, hyperparameters: dict[str, Any]) -> None:
        finetune_recipe_check(method=method, base_dir=base, hyperparameters=hyperparameters, resolution=resolution)

    reward_preset = auto_reward_preset(base)  # what a round on this base trains its reward model with
    checks = {"dpo": (("dpo", "dpo-noise-labels"), lambda: finetune("dpo", args.dpo)),
              "reward": (("ddpo", "ddpo-noise-labels"),
                         lambda: reward_recipe_check(preset=reward_preset, hyperparameters=args.reward)),
              "ddpo": (("ddpo", "ddpo-noise-labels", "control"),
                       lambda: finetune("ddpo", {**ROUND_DDPO_DEFAULTS, **args.ddpo})),
              "judge": (("judge",), lambda: finetune("ddpo", args.judge))}
    for flag, (sections, check) in checks.items():
        if set(sections) & set(args.sections):
            try:
                check()
            except ApplicationError as exc:
                return f"--{flag}: {exc.message}"
    return None


def quiet_warnings() -> None:
    """Silence the libraries' known-harmless warnings (after django.setup(), which configures logging)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def preference_label(name: str) -> str:
    return name.replace("_", " ") if "." not in name and ":" not in name else name


@dataclass
class Clock:
    """Wall and CPU time (this process and the children it waited for) since it started."""

    wall: float = field(default_factory=time.monotonic)
    cpu: float = field(default_factory=lambda: Clock.cpu_now())

    @staticmethod
    def cpu_now() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def minutes(self) -> tuple[float, float]:
        return (time.monotonic() - self.wall) / 60, (self.cpu_now() - self.cpu) / 60


def line(name: str, value: str, ok: bool | None = None) -> None:
    mark = "" if ok is None else ("PASS" if ok else "FAIL")
    print(f"{name:<58} {value:<44} {mark}".rstrip())


def interval(stats: dict, key: str, form: str, *, scale: float = 1) -> str:
    """``stats[key]`` and, where there is one, its ``key + "_interval"`` in brackets."""
    low, high = stats.get(f"{key}_interval") or (None, None)
    text = form.format(scale * stats[key])
    return text if low is None else f"{text} [{form.format(scale * low)}, {form.format(scale * high)}]"


def chosen_error_change(run) -> float | None:
    """The fine-tune's mean change in the denoising error on the preferred images against its reference over
    the last quarter of its logged steps (DPO) or iterations (group_dpo); None where it logged none."""
    history = type(run).objects.get(pk=run.pk).history if run is not None else None  # as the run left it
    points = [p["chosen_error_change"] for p in history or [] if "chosen_error_change" in p]
    return float(np.mean(points[-max(1, len(points) // 4):])) if points else None


def report(title: str, stats: dict, clock: Clock | None = None, *, targets: str = "") -> None:
    """A section's figures. ``targets``: "round" (the issue-10 round targets), "judge" (adherence +10) or ""
    (figures only, PASS/FAIL nowhere: the controls and the later rounds)."""
    print(f"\n== {title}")
    if clock is not None:
        wall, cpu = clock.minutes()
        line("end to end (minutes" + (", target < 30)" if targets else ")"), f"{wall:.1f} wall, {cpu:.1f} CPU",
             wall < 30 if targets else None)
    if "label_accuracy" in stats:
        target = stats.get("label_accuracy_target")
        temperature = stats.get("temperature")
        line("annotators' temperature", ("inf (labels of pure noise)" if temperature is None else f"{temperature:.4g}")
             + (f", calibrated to label accuracy {target:g}" if target is not None else ", as given"))
        accuracy = stats["label_accuracy"]
        line("label accuracy (labels agreeing with the preference)",
             "-" if accuracy is None else f"{accuracy:.3f} of {stats.get('label_pairs', 0)} pairs")
        agreement = stats.get("agreement")
        line("inter-annotator agreement (pairwise)", "-" if agreement is None else f"{agreement:.3f}")
    if "dpo_heldout" in stats:
        fit = stats["dpo_heldout"]
        line("DPO implicit accuracy on held-out pairs", "- (no held-out pairs)" if fit is None else
             f"{fit['accuracy']:.3f} [{fit['low']:.3f}, {fit['high']:.3f}] n={fit['n']}")
    if stats.get("reward_accuracy") is not None:
        line("reward model's validation accuracy (DDPO's reward)", f"{stats['reward_accuracy']:.3f}")
    if stats.get("chosen_error_change") is not None:
        line("preferred images' denoising error, policy - reference", f"{stats['chosen_error_change']:+.3g}"
             " (the fine-tune's last quarter; above 0: less likely)")
    win = stats.get("win_rate") or {}
    if win:
        preference_round = targets == "round"
        line("paired preference win rate" + (" (target >= 0.65, CI low > 0.5)" if preference_round else ""),
             f"{win['rate']:.3f} [{win['low']:.3f}, {win['high']:.3f}] n={win['n']}",
             win["rate"] >= 0.65 and win["low"] > 0.5 if preference_round else None)
    if stats.get("score_baseline") is not None:
        line("preference score, baseline mean", interval(stats, "score_baseline", "{:.4g}"))
        line("preference score, tuned mean", interval(stats, "score_version", "{:.4g}"))
        line("preference score change (mean paired)", interval(stats, "score_delta", "{:+.3g}"))
        relative = stats.get("score_relative")
        line("relative change (of the baseline mean)",
             "- (baseline mean 0)" if relative is None else interval(stats, "score_relative", "{:+.2f}%", scale=100))
        effect = stats.get("score_effect_size")
        line("standardised effect size (d_av)",
             "- (no spread)" if effect is None else interval(stats, "score_effect_size", "{:+.3f}"))
    if stats.get("adherence_delta") is not None:
        line("adherence (shapes judge), baseline -> tuned",
             f"{stats['adherence_baseline']:.3f} -> {stats['adherence_version']:.3f}")
        value = interval(stats, "adherence_delta", "{:+.1f}", scale=100)
        delta = stats["adherence_delta"]
        if targets == "round":
            line("adherence change (points, target >= -5)", value, delta >= -0.05)
        elif targets == "judge":
            line("adherence change (points, target >= +10)", value, delta >= 0.10)
        else:
            line("adherence change (points)", value)
    if stats.get("images") is not None:
        line("images / annotations / pairs", f"{stats['images']} / {stats['annotations']} / {stats['pairs']}")
    if isinstance(stats.get("seconds"), dict):
        line("seconds by stage", ", ".join(f"{k} {v:.0f}" for k, v in stats["seconds"].items()))


ROUNDS_WIN_AGAINST_BASE = 0.90  # issue 26 item 3: the last round beats the base in >= 90% of paired comparisons
ROUNDS_ADHERENCE_POINTS = 5  # adherence within 5 points of the base, every round
ROUNDS_MINUTES = 60  # all rounds under 60 minutes on this CPU


def _win(win: dict | None) -> str:
    return "-" if not win else f"{win['rate']:.3f} [{win['low']:.3f}, {win['high']:.3f}]"


def rounds_summary(title: str, done: list[tuple[Any, float, float]], clock: Clock, *, targets: bool) -> None:
    """The rounds in one table, each against its input version and against the base, and the rounds' targets:
    every round beats its input (interval above 50%), the last beats the base in >= 90% of paired comparisons,
    adherence within 5 points of the base every round, all under 60 minutes."""
    print(f"\n== {title}: {len(done)} rounds, each continuing the last")
    print(f"{'round':<6} {'win vs input':<24} {'win vs base':<24} {'d_av vs base':<24} "
          f"{'adherence vs base (points)':<28} minutes wall/CPU")
    for loop_round, wall, cpu in done:
        stats, base = loop_round.stats, loop_round.stats.get("against_base") or {}
        effect = ("-" if base.get("score_effect_size") is None else
                  interval(base, "score_effect_size", "{:+.3f}"))
        adherence = ("-" if base.get("adherence_delta") is None else
                     interval(base, "adherence_delta", "{:+.1f}", scale=100))
        print(f"{loop_round.number:<6} {_win(stats.get('win_rate')):<24} {_win(base.get('win_rate')):<24} "
              f"{effect:<24} {adherence:<28} {wall:.1f} / {cpu:.1f}")
    wall, cpu = clock.minutes()
    if not targets:
        line("all rounds (minutes)", f"{wall:.1f} wall, {cpu:.1f} CPU")
        return
    wins = [(r.stats.get("win_rate") or {}).get("low") for r, _, _ in done]
    line("every round beats its input version (CI low > 0.5)", " ".join(
        "-" if low is None else f"{low:.3f}" for low in wins), all(low is not None and low > 0.5 for low in wins))
    last = (done[-1][0].stats.get("against_base") or {}).get("win_rate") or {}
    line(f"round {len(done)} against the base (target >= {ROUNDS_WIN_AGAINST_BASE:.2f})", _win(last),
         bool(last) and last["rate"] >= ROUNDS_WIN_AGAINST_BASE)
    changes = [(r.stats.get("against_base") or {}).get("adherence_delta") for r, _, _ in done]
    line(f"adherence against the base (points, target >= -{ROUNDS_ADHERENCE_POINTS} every round)", " ".join(
        "-" if c is None else f"{100 * c:+.1f}" for c in changes),
        all(c is not None and c >= -ROUNDS_ADHERENCE_POINTS / 100 for c in changes))
    line(f"all rounds (minutes, target < {ROUNDS_MINUTES})", f"{wall:.1f} wall, {cpu:.1f} CPU",
         wall < ROUNDS_MINUTES)


class NoiseReward:
    """The control's reward: standard normal draws, no information about the images at all."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, images: list[Any], prompts: list[str]) -> np.ndarray:
        return self.rng.standard_normal(len(images))


def run(args: argparse.Namespace, workdir: Path) -> int:
    from django.contrib.auth.models import Group, User

    from annotate.builder import services as template_services
    from annotate.workflow.services import project_update_settings, task_create
    from core.exceptions import ApplicationError
    from generation.services import model_version_register
    from generation.shapes.world import prompt_captions
    from projects.roles import GROUP_NAMES, Role
    from projects.services import project_create
    from rlhf.loop.evaluate import evaluation_captions, version_evaluation_run
    from rlhf.loop.rounds import ROUND_DDPO_DEFAULTS, RoundConfig, round_run
    from rlhf.runs import finetune as finetunes
    from rlhf.training.rewards import REWARD_FUNCTIONS, register_reward

    if NOISE_REWARD not in REWARD_FUNCTIONS:
        register_reward(NOISE_REWARD, lambda argument: NoiseReward(args.seed))
    admin = User.objects.create(username="bench-admin", is_superuser=True)
    admin.groups.add(Group.objects.get(name=GROUP_NAMES[Role.ADMIN]))
    base = model_version_register(name=args.base.name or "base", source=str(args.base.resolve()), dtype="float32",
                                  **{**BASE_GENERATION, **args.generation})
    preference = preference_label(args.preference)
    held_out = evaluation_captions(args.prompts, eval_seed=args.eval_seed)
    noise = (f"label accuracy {args.label_accuracy:g} (calibrated per round)" if args.temperature is None
             else f"temperature {args.temperature:g}")
    ddpo = {**ROUND_DDPO_DEFAULTS, **args.ddpo}  # what the ddpo sections' runs train with (a round merges it too)
    recipes = {"DPO": (args.dpo, ("dpo", "dpo-noise-labels")),
               "reward model": (args.reward, ("ddpo", "ddpo-noise-labels")),
               "DDPO on it": (ddpo, ("ddpo", "ddpo-noise-labels", "control")),
               f"DDPO on the judge ({args.judge_reward})": (args.judge, ("judge",))}
    used = "; ".join(f"{name} {json.dumps(recipe)}" for name, (recipe, sections) in recipes.items()
                     if set(sections) & set(args.sections))
    print(f"preference {args.preference}; annotators' noise: {noise}; seed {args.seed}, eval seed {args.eval_seed}; "
          f"{args.prompts} captions a round; {used}", flush=True)

    def project(name: str):
        made = project_create(name=name, created_by=admin)
        template = template_services.template_create_from_preset(project=made, preset="rlhf_image_generation",
                                                                 created_by=admin)
        version = template_services.template_version_publish(template=template, created_by=admin)
        return project_update_settings(project=made, template_version=version)

    def round_config(method: str, *, noise_labels: bool) -> RoundConfig:
        if noise_labels:
            labels: dict[str, Any] = {"label_accuracy": 0.5}
        else:
            labels = ({"label_accuracy": args.label_accuracy} if args.temperature is None
                      else {"temperature": args.temperature})
        recipe: dict[str, Any] = ({"hyperparameters": args.dpo} if method == "dpo" else
                                  {"reward_model": True, "hyperparameters": args.ddpo,
                                   "reward_hyperparameters": args.reward})
        return RoundConfig(prompts=args.prompts, images_per_prompt=4, annotators=3, preference=args.preference,
                           prompt_seed=args.seed, eval_prompts=args.prompts, eval_seeds=(args.eval_seed,),
                           eval_caption_seed=args.eval_seed, method=method, **labels, **recipe)  # type: ignore[arg-type]

    def evaluate(version, *, baseline, params=None) -> dict:
        return version_evaluation_run(version=version, baseline=baseline, user=admin, preference=args.preference,
                                      prompts=held_out, seeds=(args.eval_seed,), params=params).results

    def rounds(title: str, name: str, config: RoundConfig, *, control: bool) -> None:
        """``args.rounds`` rounds on one project, each reported against its input version; with more than
        one, each round's version against the base as well (what the rounds so far add up to, on the same
        held-out captions and seeds) and the rounds' targets (issue 26 item 3) in a closing table."""
        made = project(name)
        done: list[tuple[Any, float, float]] = []
        chain = Clock()
        for number in range(1, args.rounds + 1):
            clock = Clock()
            loop_round = round_run(project=made, user=admin, start_version=base, config=config,
                                   log=lambda message: print(message, flush=True))
            label = (title if args.rounds == 1 else f"{title}, round 1 (against the base)" if number == 1
                     else f"{title}, round {number} (against round {number - 1}'s version)")
            report(label, {**loop_round.stats, "chosen_error_change": chosen_error_change(loop_round.finetune_run)},
                   clock, targets="round" if number == 1 and not control else "")
            if number > 1:
                report(f"{title}: round {number}'s version against the base", loop_round.stats["against_base"])
            done.append((loop_round, *clock.minutes()))
        if args.rounds > 1:
            rounds_summary(title, done, chain, targets=not control)

    total = Clock()
    for section in args.sections:
        if section in ("dpo", "ddpo", "dpo-noise-labels", "ddpo-noise-labels"):
            method, noise_labels = section.split("-")[0], section.endswith("noise-labels")
            what = ("DPO round" if method == "dpo" else "DDPO round with the round's reward model")
            title = (f"Control: {what} on labels of pure noise ({preference})" if noise_labels
                     else f"{what} ({preference})")
            rounds(title, f"loop-{section}", round_config(method, noise_labels=noise_labels), control=noise_labels)
        elif section == "control":
            clock = Clock()
            made = project("loop-control")
            for caption in prompt_captions(args.prompts, seed=args.seed + 1, split="train"):  # the round's captions
                task_create(project=made, prompt_text=caption, created_by=admin)
            finetune = finetunes.finetune_run_create(
                user=admin, base_version=base, method="ddpo", project=made, reward_name=NOISE_REWARD,
                prompt_source="project", hyperparameters=ddpo,
                eval_prompts=held_out[:1], name="control: noise rewards", enqueue=False)
            finetune = finetunes.finetune_run_execute(run_id=finetune.pk)
            if finetune is None or finetune.result_version is None:
                raise ApplicationError(f"The control's DDPO run failed: {getattr(finetune, 'error', '')}",
                                       field="control")
            report(f"Control: DDPO with the ddpo section's recipe on rewards of pure noise ({preference})",
                   evaluate(finetune.result_version, baseline=base), clock)
        elif section == "judge":
            clock = Clock()
            made = project("loop-judge")
            for caption in prompt_captions(args.prompts, seed=7, split="train"):
                task_create(project=made, prompt_text=caption, created_by=admin)
            finetune = finetunes.finetune_run_create(
                user=admin, base_version=base, method="ddpo", project=made, reward_name=args.judge_reward,
                prompt_source="project", hyperparameters=args.judge, enqueue=False)
            finetune = finetunes.finetune_run_execute(run_id=finetune.pk)
            if finetune is None or finetune.result_version is None:
                raise ApplicationError(f"The judge's DDPO run failed: {getattr(finetune, 'error', '')}",
                                       field="judge")
            report(f"DDPO with the shapes judge as reward (preference figures: {preference})",
                   evaluate(finetune.result_version, baseline=base), clock, targets="judge")
    wall, cpu = total.minutes()
    print(f"\nall sections: {wall:.1f} minutes wall, {cpu:.1f} minutes CPU")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.base / "model_index.json").is_file():
        hint = "train them first" if args.base == WEIGHTS else "--base names a diffusers pipeline directory"
        print(f"No pipeline at {args.base} (model_index.json is missing); {hint}.", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="pickwise-loop-bench-"))
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))  # clean up when killed, too
    failed = True
    try:
        setup(workdir, threads=args.threads)
        problem = recipe_problem(args)
        if problem is not None:
            print(f"bench/loop.py: error: {problem}", file=sys.stderr)
            failed = False  # nothing was made
            return 2
        migrate()
        quiet_warnings()
        from core.exceptions import ApplicationError

        try:
            status = run(args, workdir)
        except (ApplicationError, ValueError) as exc:
            print(f"\nthe bench stopped: {exc}", file=sys.stderr)
            return 1
        failed = status != 0
        return status
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            _remove(workdir, failed=failed)


def _remove(workdir: Path, *, failed: bool) -> None:
    if "django" in sys.modules:
        from django.db import connections

        connections.close_all()
    shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        print("(work directory removed; --keep keeps it for a look)", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
