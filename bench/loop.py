"""The closed loop's targets (issue 10), printed as figures. Runs on the CPU, end to end, through the services.

    .venv/bin/python bench/loop.py            # needs generation/weights/shapes/model_index.json

1. DPO round: from the shipped shapes model, one round of 200 prompts x 4 images x 3 simulated annotators
   preferring larger shapes, then Diffusion-DPO. Targets: under 30 minutes end to end; the tuned version
   beats the base on the preference in >= 65% of paired held-out comparisons, 95% interval above 50%;
   adherence drops by at most 5 points.
2. DDPO round: the same, with a reward model trained on that round's export as DDPO's reward.
3. DDPO on adherence: the shapes-world judge as the reward raises held-out adherence by >= 10 points.

It uses a throw-away SQLite database and media directory under a temporary directory (so it never
touches your data), migrates it, and lifts the per-user generation rate limit for the simulated users.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "generation" / "weights" / "shapes"


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


def report(title: str, stats: dict, seconds: float | None = None, *, adherence_gain: float | None = None) -> None:
    print(f"\n== {title}")
    if seconds is not None:
        line("end to end (minutes, target < 30)", f"{seconds / 60:.1f}", seconds < 30 * 60)
    win = stats.get("win_rate") or {}
    if win:
        line("paired preference win rate (target >= 0.65, CI low > 0.5)",
             f"{win['rate']:.3f} [{win['low']:.3f}, {win['high']:.3f}] n={win['n']}",
             win["rate"] >= 0.65 and win["low"] > 0.5)
    delta = stats.get("adherence_delta")
    if delta is not None:
        if adherence_gain is None:
            line("adherence change (points, target >= -5)", f"{100 * delta:+.1f}", delta >= -0.05)
        else:
            line(f"adherence change (points, target >= +{adherence_gain:.0f})", f"{100 * delta:+.1f}",
                 delta >= adherence_gain / 100)
    for key in ("images", "annotations", "pairs", "agreement", "reward_accuracy"):
        if stats.get(key) is not None:
            line(key, str(stats[key]), None)


def main() -> int:
    if not (WEIGHTS / "model_index.json").is_file():
        print(f"No shapes weights at {WEIGHTS} (model_index.json); train them first.")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="pickwise-loop-bench-"))
    setup(workdir)
    from django.contrib.auth.models import Group, User

    from annotate import template_services
    from annotate.services import project_create
    from annotate.workflow_services import project_update_settings
    from core.roles import GROUP_NAMES, Role
    from generation.services import model_version_register
    from rlhf import run_services
    from rlhf.loop.evaluate import held_out_captions, version_evaluation_run
    from rlhf.loop.rounds import RoundConfig, round_run

    admin = User.objects.create(username="bench-admin", is_superuser=True)
    admin.groups.add(Group.objects.get(name=GROUP_NAMES[Role.ADMIN]))
    base = model_version_register(name="shapes", source=str(WEIGHTS), dtype="float32", scheduler="dpmpp_2m",
                                  steps=20, guidance=5.0, width=64, height=64)

    def project(name: str):
        made = project_create(name=name, created_by=admin)
        template = template_services.template_create_from_preset(project=made, preset="rlhf_image_generation",
                                                                 created_by=admin)
        version = template_services.template_version_publish(template=template, created_by=admin)
        return project_update_settings(project=made, template_version=version)

    # 1. DPO round
    started = time.monotonic()
    dpo_round = round_run(project=project("loop-dpo"), user=admin, start_version=base, log=print,
                          config=RoundConfig(prompts=200, images_per_prompt=4, annotators=3,
                                             preference="larger_shapes", method="dpo", eval_prompts=200))
    report("DPO round (larger shapes)", dpo_round.stats, time.monotonic() - started)

    # 2. DDPO round with the round's reward model
    started = time.monotonic()
    ddpo_round = round_run(project=project("loop-ddpo"), user=admin, start_version=base, log=print,
                           config=RoundConfig(prompts=200, images_per_prompt=4, annotators=3,
                                              preference="larger_shapes", method="ddpo", reward_model=True,
                                              eval_prompts=200))
    report("DDPO round with the round's reward model", ddpo_round.stats, time.monotonic() - started)

    # 3. DDPO with the shapes-world judge as the reward
    judge_project = project("loop-judge")
    from annotate.workflow_services import task_create
    from generation.shapes.world import prompt_captions

    for caption in prompt_captions(200, seed=7, split="train"):
        task_create(project=judge_project, prompt_text=caption, created_by=admin)
    started = time.monotonic()
    run = run_services.finetune_run_create(user=admin, base_version=base, method="ddpo", project=judge_project,
                                           reward_name="shapes_adherence", prompt_source="project", enqueue=False)
    run = run_services.finetune_run_execute(run_id=run.pk)
    evaluation = version_evaluation_run(version=run.result_version, baseline=base, user=admin,
                                        preference="larger_shapes", prompts=held_out_captions(200))
    report("DDPO with the shapes judge as reward", evaluation.results, time.monotonic() - started,
           adherence_gain=10)
    print(f"\nwork directory: {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
