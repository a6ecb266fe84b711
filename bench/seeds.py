"""bench/loop.py's win rates over seeds (issue 26 item 2), from its printed logs.

    for s in 0 1 2; do .venv/bin/python bench/loop.py --preference warmer --sections ddpo control --seed $s \\
        > warmer-$s.log; done
    .venv/bin/python bench/seeds.py warmer-*.log

A section's own interval covers the evaluation's held-out captions for the version as trained; a round's own
randomness (its captions, images, labels and training) shows only across ``--seed`` values. A control trained
on pure noise still changes the model, and a change of any size that moves every image the same way (a little
warmer, say) wins nearly every paired comparison, so one control run's interval says whether that run's
change had a direction, not whether noise training favours the preference. That question is answered over
seeds: per preference and section, each seed's win rate and interval, their mean, spread and 95% t interval
over the seeds, and the targets. A round's target: every seed's interval above 50%. A control's target
(noise rewards, or labels of pure noise): 50% inside its t interval over the same seeds.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, as bench/loop.py is

from rlhf.loop.stats import mean_interval  # noqa: E402

HEADER = re.compile(r"^preference (?P<preference>\S+);.*; seed (?P<seed>\d+), eval seed (?P<eval_seed>\d+);")
RECIPE = re.compile(r"; DDPO on it (?P<ddpo>\{.*?\})(?:; |$)")
TITLE = re.compile(r"^== (?P<title>.*)$")
WIN = re.compile(r"^paired preference win rate.*?(?P<rate>\d\.\d+) \[(?P<low>\d\.\d+), (?P<high>\d\.\d+)\] n=(?P<n>\d+)")


@dataclass(frozen=True)
class Win:
    seed: int
    eval_seed: int
    rate: float
    low: float
    high: float
    n: int
    recipe: str
    log: str


def read_log(path: Path) -> tuple[str, list[tuple[str, Win]]]:
    """A log's preference and its sections' win rates, as (section title, win); a log with no header or no
    win rate is refused with its name."""
    header = None
    recipe = ""
    wins: list[tuple[str, Win]] = []
    title = None
    for text in path.read_text().splitlines():
        if header is None and (found := HEADER.match(text)):
            header = found
            recipe = found["ddpo"] if (found := RECIPE.search(text)) else ""
        elif found := TITLE.match(text):
            title = found["title"]
        elif title is not None and (found := WIN.match(text)):
            if header is None:
                raise ValueError(f"{path}: a win rate before bench/loop.py's header line")
            wins.append((title, Win(seed=int(header["seed"]), eval_seed=int(header["eval_seed"]),
                                    rate=float(found["rate"]), low=float(found["low"]), high=float(found["high"]),
                                    n=int(found["n"]), recipe=recipe, log=path.name)))
            title = None
    if header is None or not wins:
        raise ValueError(f"{path}: not a bench/loop.py log (no header line or no win rate)")
    return header["preference"], wins


def t_interval(values: list[float]) -> tuple[float, float] | None:
    """The mean win rate's 95% t interval over independent runs (``rlhf.loop.stats.mean_interval``), within
    [0, 1] (None for fewer than two runs)."""
    estimate = mean_interval(values)
    if estimate.low is None or estimate.high is None:
        return None
    return max(0.0, estimate.low), min(1.0, estimate.high)


def summarise(logs: list[Path]) -> tuple[list[str], bool]:
    """The printed summary and whether every target it checks passes."""
    groups: dict[tuple[str, str], list[Win]] = defaultdict(list)
    for path in logs:
        preference, wins = read_log(path)
        for title, win in wins:
            groups[(preference, re.sub(r" \([^()]*\)(?=,|:|$)", "", title, count=1))].append(win)
    lines: list[str] = []
    passed = True
    for (preference, title), wins in groups.items():
        wins.sort(key=lambda w: (w.seed, w.eval_seed))
        control = title.startswith("Control")
        lines += ["", f"== {preference}: {title}"]
        for recipe in sorted({w.recipe for w in wins if w.recipe}):
            lines.append(f"DDPO recipe {recipe} ({', '.join(w.log for w in wins if w.recipe == recipe)})")
        for win in wins:
            verdict = "" if control else ("  above 50%" if win.low > 0.5 else "  NOT above 50%")
            lines.append(f"seed {win.seed} (eval seed {win.eval_seed})".ljust(28)
                         + f"{win.rate:.3f} [{win.low:.3f}, {win.high:.3f}] n={win.n}{verdict}")
        rates = [w.rate for w in wins]
        seeds = ", ".join(str(w.seed) for w in wins)
        interval = t_interval(rates)
        spread = f", sd {statistics.stdev(rates):.3f}" if len(rates) > 1 else ""
        over = "-" if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"
        lines.append(f"over seeds {seeds}".ljust(28) + f"mean {statistics.fmean(rates):.3f}{spread}, "
                     f"95% t interval {over}")
        if control:
            ok = interval is not None and interval[0] <= 0.5 <= interval[1]
            lines.append("target: 50% inside the interval over seeds".ljust(60) + ("PASS" if ok else "FAIL"))
        else:
            ok = all(w.low > 0.5 for w in wins)
            lines.append(f"target: every seed's interval above 50% ({sum(w.low > 0.5 for w in wins)} of "
                         f"{len(wins)})".ljust(60) + ("PASS" if ok else "FAIL"))
        passed &= ok
    return lines, passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path, help="bench/loop.py's printed output, one file per run")
    args = parser.parse_args(argv)
    try:
        lines, passed = summarise(args.logs)
    except (OSError, ValueError) as exc:
        print(f"bench/seeds.py: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines).lstrip("\n"))
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
