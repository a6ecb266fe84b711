"""bench/loop.py for a preference the project does not ship: its arguments, and a reduced run of every section on
the tiny pipeline (a round of a few captions and a few training steps, as test_loop_round.py runs them)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import loop as bench
from bench import seeds

ROOT = Path(__file__).resolve().parents[2]
PREFERENCE = "tests.rlhf.test_loop_bench:redness"
TINY = {"scheduler": "ddim", "steps": 4, "guidance": 5.0, "width": 32, "height": 32}  # tests/rlhf/conftest.py's
DDPO_FAST = {"iterations": 1, "prompts_per_iteration": 2, "images_per_prompt": 2, "sample_steps": 2}
FAST = ["--dpo", '{"max_steps": 2, "batch_size": 4}', "--reward", '{"max_steps": 2, "batch_size": 4}',
        "--ddpo", json.dumps(DDPO_FAST), "--judge", json.dumps(DDPO_FAST), "--generation", json.dumps(TINY)]


def redness(image: Image.Image, prompt: str) -> float:
    """A preference the project does not ship: how much redder than green and blue the image is, in [-1, 1]."""
    pixels = np.asarray(image.convert("RGB"), dtype=float) / 255
    return float((pixels[..., 0] - (pixels[..., 1] + pixels[..., 2]) / 2).mean())


def usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        bench.parse_args(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_the_bench_validates_its_arguments_before_doing_anything(capsys):
    args = bench.parse_args(["--preference", PREFERENCE])
    assert (args.preference, args.label_accuracy, args.temperature) == (PREFERENCE, 0.6, None)
    assert args.sections == ["dpo", "ddpo", "control", "judge"] and (args.seed, args.eval_seed) == (0, 0)
    raw = bench.parse_args(["--temperature", "0.01", "--sections", "dpo", "dpo", "dpo-noise-labels"])
    assert (raw.label_accuracy, raw.temperature, raw.sections) == (None, 0.01, ["dpo", "dpo-noise-labels"])
    # DDPO sections run the product round's recipe unless told otherwise; the earlier policy gradient by name.
    assert args.ddpo == {} and bench.parse_args(["--ddpo", "round"]).ddpo == {}
    policy = bench.parse_args(["--ddpo", "policy_gradient"]).ddpo
    assert policy["objective"] == "policy_gradient" and policy["images_per_prompt"] == 4
    assert bench.parse_args(["--ddpo", '{"lr": 5e-4}']).ddpo == {"lr": 5e-4}

    assert "--preference: preference 'tests.rlhf.test_loop_bench:nope': 'tests.rlhf.test_loop_bench' has no " \
           "attribute 'nope'" in usage_error(["--preference", "tests.rlhf.test_loop_bench:nope"], capsys)
    assert "--preference: preference must be one of ['brighter', 'larger_shapes', 'shape_centred', 'warmer'] or a " \
           "dotted path, not 'reddest'" in usage_error(["--preference", "reddest"], capsys)
    assert "--label-accuracy: label_accuracy must be from 0.5 (labels of pure noise) to 1" in usage_error(
        ["--label-accuracy", "0.4"], capsys)
    assert "argument --temperature: not allowed with argument --label-accuracy" in usage_error(
        ["--label-accuracy", "0.7", "--temperature", "0.01"], capsys)
    assert "--temperature must be a finite number >= 0, not inf" in usage_error(["--temperature", "inf"], capsys)
    assert "argument --dpo: must be a JSON object of hyper-parameters, not '[1]'" in usage_error(
        ["--dpo", "[1]"], capsys)
    assert ("argument --ddpo: must be a recipe's name (round, policy_gradient) or a JSON object of "
            "hyper-parameters, not 'grpo'") in usage_error(["--ddpo", "grpo"], capsys)
    assert "--generation: unknown settings ['stepz']" in usage_error(["--generation", '{"stepz": 3}'], capsys)
    assert "--eval-seed must be >= 0" in usage_error(["--eval-seed", "-1"], capsys)
    assert "--rounds must be at least 1" in usage_error(["--rounds", "0"], capsys)


def run_bench(*argv: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "loop.py"), *argv], cwd=ROOT, env=env,  # noqa: S603
                          capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.parametrize(("sections", "recipe", "problem"), [
    (["control"], ["--ddpo", '{"iterations": 0}'], "--ddpo: iterations must be > 0, not 0."),
    (["dpo", "ddpo"], ["--reward", '{"max_steps": "many"}'], "--reward: max_steps has the wrong type: 'many'."),
])
def test_a_bad_recipe_stops_the_bench_before_it_makes_anything(tiny_base_dir, tmp_path, sections, recipe, problem):
    """Found before the bench migrates its database or generates a round's images (minutes of work)."""
    done = run_bench("--base", str(tiny_base_dir), "--preference", PREFERENCE, "--sections", *sections,
                     "--prompts", "2", *recipe, "--generation", json.dumps(TINY), tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"bench/loop.py: error: {problem}"
    assert done.stdout == ""
    assert list(tmp_path.glob("pickwise-loop-bench-*")) == []  # the work directory is gone


def test_every_section_of_a_reduced_bench_uses_the_chosen_preference(tiny_base_dir, tmp_path):
    done = run_bench("--base", str(tiny_base_dir), "--preference", PREFERENCE, "--label-accuracy", "0.8",
                     "--sections", *bench.SECTIONS, "--prompts", "4", "--keep", *FAST, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no library warnings, no progress bars
    out = done.stdout
    titles = re.findall(r"^== (.*)$", out, flags=re.MULTILINE)
    assert titles == [
        f"DPO round ({PREFERENCE})", f"DDPO round with the round's reward model ({PREFERENCE})",
        f"Control: DDPO with the ddpo section's recipe on rewards of pure noise ({PREFERENCE})",
        f"Control: DPO round on labels of pure noise ({PREFERENCE})",
        f"Control: DDPO round with the round's reward model on labels of pure noise ({PREFERENCE})",
        f"DDPO with the shapes judge as reward (preference figures: {PREFERENCE})"]
    sections = out.split("\n== ")[1:]
    for section in sections:  # every section: base and tuned means, absolute and relative change, effect size
        for name in ("paired preference win rate", "preference score, baseline mean", "preference score, tuned mean",
                     "preference score change (mean paired)", "relative change (of the baseline mean)",
                     "standardised effect size (d_av)", "end to end (minutes"):
            assert name in section, (name, section)
        assert re.search(r"end to end \(minutes.*\) +\d+\.\d wall, \d+\.\d CPU", section)
    workdir = Path(re.search(r"^work directory kept: (.*)$", out, flags=re.MULTILINE).group(1))
    db = sqlite3.connect(workdir / "bench.sqlite3")
    try:
        evaluations = [json.loads(c) for (c,) in db.execute("SELECT config FROM rlhf_versionevaluation")]
        rounds = {json.loads(c)["method"] + ("-noise-labels" if json.loads(c)["label_accuracy"] == 0.5 else ""):
                  (json.loads(c), json.loads(s)) for c, s in db.execute("SELECT config, stats FROM rlhf_loopround")}
        rationales = [r for (r,) in db.execute("SELECT rationale FROM annotate_annotation")]
        rewards = [r for (r,) in db.execute("SELECT reward_name FROM rlhf_finetunerun WHERE method = 'ddpo'")]
    finally:
        db.close()
    assert [e["preference"] for e in evaluations] == [PREFERENCE] * 6  # one evaluation per section
    assert sorted(rounds) == ["ddpo", "ddpo-noise-labels", "dpo", "dpo-noise-labels"]
    assert len(rationales) == 4 * 4 * 3 and all(r.startswith(f"Simulated annotator preferring {PREFERENCE} (T=")
                                                for r in rationales)  # 4 rounds of 4 captions x 3 annotators
    assert sorted(rewards) == ["", "", "noise", "shapes_overall"]  # the rounds' reward models, the control, the judge
    for section, (config, stats) in rounds.items():
        assert config["preference"] == PREFERENCE
        text = sections[["dpo", "ddpo", "", "dpo-noise-labels", "ddpo-noise-labels"].index(section)]
        if section.endswith("noise-labels"):
            assert stats["temperature"] is None and stats["label_accuracy_target"] == 0.5
            assert "inf (labels of pure noise), calibrated to label accuracy 0.5" in text
        else:
            assert stats["temperature"] > 0 and stats["label_accuracy_target"] == 0.8
            assert f"{stats['temperature']:.4g}, calibrated to label accuracy 0.8" in text
        # Label accuracy and agreement, rounded, as the round stored them.
        assert f"{stats['label_accuracy']:.3f} of {stats['label_pairs']} pairs" in text
        assert re.search(r"inter-annotator agreement \(pairwise\) +\d\.\d{3}$", text, flags=re.MULTILINE)
        assert stats["agreement"] == round(stats["agreement"], 4)
        if config["method"] == "dpo":
            fit = stats["dpo_heldout"]
            assert f"{fit['accuracy']:.3f} [{fit['low']:.3f}, {fit['high']:.3f}] n={fit['n']}" in text
        else:
            assert "reward model's validation accuracy (DDPO's reward)" in text

    # bench/seeds.py reads these logs: this run as seed 0 and again as seed 1 (its figures, another header).
    logs = [tmp_path / "seed-0.log", tmp_path / "seed-1.log"]
    logs[0].write_text(out)
    logs[1].write_text(out.replace("; seed 0, eval seed 0;", "; seed 1, eval seed 0;", 1))
    lines, _ = seeds.summarise(logs)
    summary = "\n".join(lines)
    for title, section in zip(titles, sections, strict=True):
        rate = re.search(r"^paired preference win rate.*?(\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] n=\d+)", section,
                         flags=re.MULTILINE).group(1)
        name = re.sub(rf" \((preference figures: )?{re.escape(PREFERENCE)}\)", "", title)
        block = summary.split(f"== {PREFERENCE}: {name}\n")[1].split("\n== ")[0]
        assert re.search(rf"^seed 0 \(eval seed 0\) +{re.escape(rate)}", block, flags=re.MULTILINE), block
        assert re.search(rf"^seed 1 \(eval seed 0\) +{re.escape(rate)}", block, flags=re.MULTILINE), block
        mean = float(rate[:5])
        assert f"mean {mean:.3f}, sd 0.000, 95% t interval [{mean:.3f}, {mean:.3f}]" in block
        target = block.strip().splitlines()[-1]
        if title.startswith("Control"):  # two identical runs: an interval of one point, 50% inside only if equal
            assert target.endswith("PASS" if mean == 0.5 else "FAIL"), block
        else:
            low = float(re.search(r"\[(\d\.\d{3}),", rate).group(1))
            assert target.endswith("PASS" if low > 0.5 else "FAIL"), block
    assert seeds.main([str(tmp_path / "nothing.log")]) == 2


def test_rounds_are_reported_against_their_input_and_the_base_with_the_rounds_targets(tiny_base_dir, tmp_path):
    done = run_bench("--base", str(tiny_base_dir), "--preference", PREFERENCE, "--sections", "dpo", "--rounds", "2",
                     "--prompts", "3", "--keep", *FAST, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    titles = re.findall(r"^== (.*)$", out, flags=re.MULTILINE)
    assert titles == [f"DPO round ({PREFERENCE}), round 1 (against the base)",
                      f"DPO round ({PREFERENCE}), round 2 (against round 1's version)",
                      f"DPO round ({PREFERENCE}): round 2's version against the base",
                      f"DPO round ({PREFERENCE}): 2 rounds, each continuing the last"]
    workdir = Path(re.search(r"^work directory kept: (.*)$", out, flags=re.MULTILINE).group(1))
    db = sqlite3.connect(workdir / "bench.sqlite3")
    try:
        stats = [json.loads(s) for (s,) in db.execute("SELECT stats FROM rlhf_loopround ORDER BY number")]
    finally:
        db.close()
    table = out.split("each continuing the last\n")[1]
    for number, round_stats in enumerate(stats, start=1):
        own, base = round_stats["win_rate"], round_stats["against_base"]["win_rate"]
        row = re.search(rf"^{number} +(.*)$", table, flags=re.MULTILINE).group(1)
        assert row.startswith(f"{own['rate']:.3f} [{own['low']:.3f}, {own['high']:.3f}]")
        assert f"{base['rate']:.3f} [{base['low']:.3f}, {base['high']:.3f}]" in row
    lows = " ".join(f"{s['win_rate']['low']:.3f}" for s in stats)
    assert re.search(rf"^every round beats its input version \(CI low > 0\.5\) +{lows} +FAIL$", table,
                     flags=re.MULTILINE)  # three captions: intervals far too wide to clear 0.5
    last = stats[-1]["against_base"]["win_rate"]
    assert re.search(r"^round 2 against the base \(target >= 0\.90\) +"
                     + re.escape(f"{last['rate']:.3f} [{last['low']:.3f}, {last['high']:.3f}]")
                     + (" +PASS$" if last["rate"] >= 0.9 else " +FAIL$"), table, flags=re.MULTILINE)
    assert re.search(r"^adherence against the base \(points, target >= -5 every round\) ", table, flags=re.MULTILINE)
    assert re.search(r"^all rounds \(minutes, target < 60\) +\d+\.\d wall, \d+\.\d CPU +PASS$", table,
                     flags=re.MULTILINE)
