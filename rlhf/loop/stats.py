"""Statistics of the loop, Django-free: Wilson intervals, paired win rates and mean differences, means, relative
changes and standardised effect sizes with their intervals, the label accuracy of rankings, a Bradley-Terry
leaderboard."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
from scipy import stats as scipy_stats

from rlhf.exports.aggregate import fit_bradley_terry
from rlhf.exports.pairs import Pair

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000  # paired bootstrap of the ratio-type figures (relative change, effect size)


def wilson_interval(successes: float, n: float, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (``successes`` may be fractional: a tie counts half)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class WinRate:
    """A against B: ``rate = (wins + ties / 2) / n`` with its Wilson 95% interval."""

    wins: int
    losses: int
    ties: int
    rate: float
    low: float
    high: float

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "n": self.n}


def win_rate(wins: int, losses: int, ties: int = 0) -> WinRate:
    n = wins + losses + ties
    successes = wins + 0.5 * ties
    rate = successes / n if n else 0.5
    low, high = wilson_interval(successes, n)
    return WinRate(wins=wins, losses=losses, ties=ties, rate=rate, low=low, high=high)


def paired_win_rate(new: Sequence[float], old: Sequence[float], *, tolerance: float = 1e-9) -> WinRate:
    """``new[i]`` against ``old[i]`` (the same prompt and seed): wins, losses, ties within ``tolerance``."""
    if len(new) != len(old):
        raise ValueError(f"{len(new)} new scores but {len(old)} old ones")
    wins = sum(1 for a, b in zip(new, old, strict=True) if a - b > tolerance)
    losses = sum(1 for a, b in zip(new, old, strict=True) if b - a > tolerance)
    return win_rate(wins, losses, len(new) - wins - losses)


@dataclass(frozen=True)
class MeanDifference:
    """The mean of paired differences ``new[i] - old[i]`` with its Student-t 95% interval (None below 2 pairs)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def paired_difference(new: Sequence[float], old: Sequence[float]) -> MeanDifference:
    """How far ``new`` moved from ``old``, pair by pair: how big the change is, where a win rate says only
    how often it went one way. For 0/1 verdicts (the judge's) it is the change in the pass rate."""
    if len(new) != len(old):
        raise ValueError(f"{len(new)} new scores but {len(old)} old ones")
    if not len(new):
        raise ValueError("no pairs to compare")
    differences = np.asarray(new, dtype=float) - np.asarray(old, dtype=float)
    n, mean = len(differences), float(differences.mean())
    if n < 2:
        return MeanDifference(mean=mean, low=None, high=None, n=n)
    half = float(scipy_stats.t.ppf(0.975, n - 1) * differences.std(ddof=1) / math.sqrt(n))
    return MeanDifference(mean=mean, low=mean - half, high=mean + half, n=n)


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% interval (None where it has none) over ``n`` observations."""

    value: float
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def mean_interval(values: Sequence[float]) -> Estimate:
    """The mean with its Student-t 95% interval (none below two values)."""
    data = np.asarray(values, dtype=float)
    if not data.size:
        raise ValueError("no values to average")
    n, mean = data.size, float(data.mean())
    if n < 2:
        return Estimate(value=mean, low=None, high=None, n=n)
    half = float(scipy_stats.t.ppf(0.975, n - 1) * data.std(ddof=1) / math.sqrt(n))
    return Estimate(value=mean, low=mean - half, high=mean + half, n=n)


def _relative(new_means: np.ndarray, old_means: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(old_means != 0, (new_means - old_means) / np.abs(old_means), np.nan)


def _standardised(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """d_av along the last axis: mean paired difference over the root mean of the two variances."""
    spread = np.sqrt((new.var(axis=-1, ddof=1) + old.var(axis=-1, ddof=1)) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(spread > 0, (new.mean(axis=-1) - old.mean(axis=-1)) / spread, np.nan)


def _paired_bootstrap(new: Sequence[float], old: Sequence[float], figure: str, *, resamples: int,
                      seed: int) -> Estimate | None:
    a, b = np.asarray(new, dtype=float), np.asarray(old, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} new scores but {b.size} old ones")
    if a.size < 2:
        return None
    if figure == "relative":
        value = float(_relative(np.array(a.mean()), np.array(b.mean())))
    else:
        value = float(_standardised(a, b))
    if math.isnan(value):
        return None
    index = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    if figure == "relative":
        draws = _relative(a[index].mean(axis=1), b[index].mean(axis=1))
    else:
        draws = _standardised(a[index], b[index])
    draws = draws[np.isfinite(draws)]
    if not draws.size:
        return Estimate(value=value, low=None, high=None, n=int(a.size))
    low, high = np.percentile(draws, [2.5, 97.5])
    return Estimate(value=value, low=float(low), high=float(high), n=int(a.size))


def relative_change(new: Sequence[float], old: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = 0) -> Estimate | None:
    """``(mean(new) - mean(old)) / |mean(old)|`` of paired scores, with a paired-bootstrap percentile 95%
    interval (the pairs resampled together, ``resamples`` times from ``seed``). None when the old mean is 0
    or there are fewer than two pairs."""
    return _paired_bootstrap(new, old, "relative", resamples=resamples, seed=seed)


def standardised_difference(new: Sequence[float], old: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                            seed: int = 0) -> Estimate | None:
    """The standardised mean difference of paired scores, Cohen's d_av: the mean paired change over the
    root mean of the two versions' variances, ``mean(new - old) / sqrt((var(new) + var(old)) / 2)``, so it
    reads on the usual d scale (0.2 small, 0.8 large) whatever the score's units. Its 95% interval is a
    paired-bootstrap percentile one. None when neither version's scores vary or below two pairs."""
    return _paired_bootstrap(new, old, "standardised", resamples=resamples, seed=seed)


def ranking_label_counts(ranking: Sequence[Sequence[Hashable]], scores: Mapping[Hashable, float], *,
                         tolerance: float = 0.0) -> tuple[int, int]:
    """(right, judged): of the pairs a ranking orders (best group first; items it leaves out share last
    place; items in one group are not ordered), those whose scores differ by more than ``tolerance``, and
    how many of them the ranking puts the higher-scored item first in. Items without a score are ignored."""
    place = {item: index for index, group in enumerate(ranking) for item in group}
    last = len(ranking)
    items = [item for item in scores if item in place] + [item for item in scores if item not in place]
    right = judged = 0
    for x, y in combinations(items, 2):
        px, py = place.get(x, last), place.get(y, last)
        gap = scores[x] - scores[y]
        if px == py or abs(gap) <= tolerance:
            continue
        judged += 1
        right += (px < py) == (gap > 0)
    return right, judged


@dataclass(frozen=True)
class Vote:
    """One arena vote: ``winner`` is ``"a"``, ``"b"`` or ``"tie"``."""

    a: Hashable
    b: Hashable
    winner: str


@dataclass(frozen=True)
class LeaderboardRow:
    version: Hashable
    rating: float  # Elo-style: 400 * log10(strength) + 1000
    strength: float
    wins: int
    losses: int
    ties: int

    @property
    def games(self) -> int:
        return self.wins + self.losses + self.ties


def leaderboard(votes: Iterable[Vote], *, prior: float = 0.1) -> list[LeaderboardRow]:
    """A Bradley-Terry fit over every version compared (ties count half each way), best first.

    The rating is on the Elo scale (400 points = ten-fold odds), centred at 1000.
    """
    votes = list(votes)
    pairs = []
    record: dict[Hashable, list[int]] = {}
    for vote in votes:
        if vote.winner not in ("a", "b", "tie"):
            raise ValueError(f"unknown winner {vote.winner!r}")
        for version in (vote.a, vote.b):
            record.setdefault(version, [0, 0, 0])
        if vote.winner == "tie":
            pairs.append(Pair(vote.a, vote.b, 0.5, 0.5, True))
            record[vote.a][2] += 1
            record[vote.b][2] += 1
        else:
            winner, loser = (vote.a, vote.b) if vote.winner == "a" else (vote.b, vote.a)
            pairs.append(Pair(winner, loser, 1.0, 0.0, False))
            record[winner][0] += 1
            record[loser][1] += 1
    fit = fit_bradley_terry(pairs, prior=prior)
    rows = [
        LeaderboardRow(version=v, strength=s, rating=1000.0 + 400.0 * math.log10(s),
                       wins=record[v][0], losses=record[v][1], ties=record[v][2])
        for v, s in fit.strengths.items()
    ]
    return sorted(rows, key=lambda row: (-row.strength, str(row.version)))


def head_to_head(votes: Iterable[Vote], first: Hashable, second: Hashable) -> WinRate:
    """``first`` against ``second`` over the votes between exactly those two."""
    wins = losses = ties = 0
    for vote in votes:
        if {vote.a, vote.b} != {first, second}:
            continue
        if vote.winner == "tie":
            ties += 1
        elif (vote.winner == "a") == (vote.a == first):
            wins += 1
        else:
            losses += 1
    return win_rate(wins, losses, ties)
