"""Aggregation across annotators: pair votes, Bradley-Terry strengths and per-task agreement."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rlhf.exports.pairs import Pair


@dataclass
class PairVotes:
    """Votes on one unordered pair (low id, high id)."""

    low: int
    high: int
    low_wins: int = 0
    high_wins: int = 0
    ties: int = 0

    @property
    def total(self) -> int:
        return self.low_wins + self.high_wins + self.ties

    @property
    def majority(self) -> int | None:
        """The image most annotators preferred, or None for a draw."""
        if self.low_wins > self.high_wins:
            return self.low
        if self.high_wins > self.low_wins:
            return self.high
        return None

    @property
    def agreement(self) -> float:
        """Share of votes that went with the most common answer (win, loss or tie)."""
        return max(self.low_wins, self.high_wins, self.ties) / self.total if self.total else 0.0


def count_votes(pairs: Iterable[Pair]) -> dict[tuple[int, int], PairVotes]:
    votes: dict[tuple[int, int], PairVotes] = {}
    for pair in pairs:
        low, high = sorted((pair.image_0, pair.image_1))
        entry = votes.setdefault((low, high), PairVotes(low, high))
        if pair.tie:
            entry.ties += 1
        elif pair.image_0 == low:
            entry.low_wins += 1
        else:
            entry.high_wins += 1
    return votes


@dataclass
class BradleyTerryFit:
    strengths: dict[int, float]  # exp-scale, geometric mean 1
    iterations: int
    converged: bool
    log_strengths: dict[int, float] = field(default_factory=dict)


def fit_bradley_terry(
    pairs: Iterable[Pair], *, max_iter: int = 500, tol: float = 1e-9, prior: float = 0.1
) -> BradleyTerryFit:
    """Bradley-Terry strengths by Hunter's (2004) MM algorithm; a tie counts half a win each way.

    ``prior`` adds that many virtual half-wins between every compared pair, which keeps the
    fit finite for an image that always won or always lost (set 0 for the plain MLE).
    """
    wins: dict[int, float] = defaultdict(float)
    games: dict[tuple[int, int], float] = defaultdict(float)
    for pair in pairs:
        a, b = pair.image_0, pair.image_1
        key = (min(a, b), max(a, b))
        games[key] += 1.0
        if pair.tie:
            wins[a] += 0.5
            wins[b] += 0.5
        else:
            wins[a] += 1.0
            wins[b] += 0.0
    if prior:
        for a, b in list(games):
            games[(a, b)] += 2 * prior
            wins[a] += prior
            wins[b] += prior
    items = sorted({i for key in games for i in key})
    if not items:
        return BradleyTerryFit({}, 0, True)
    neighbours: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for (a, b), n in games.items():
        neighbours[a].append((b, n))
        neighbours[b].append((a, n))
    strength = dict.fromkeys(items, 1.0)
    converged = False
    iteration = 0
    for iteration in range(1, max_iter + 1):  # noqa: B007 - reported below
        updated = {}
        for i in items:
            denominator = sum(n / (strength[i] + strength[j]) for j, n in neighbours[i])
            updated[i] = max(wins[i], 1e-12) / denominator
        log_mean = sum(math.log(v) for v in updated.values()) / len(updated)
        updated = {i: v / math.exp(log_mean) for i, v in updated.items()}
        delta = max(abs(math.log(updated[i]) - math.log(strength[i])) for i in items)
        strength = updated
        if delta < tol:
            converged = True
            break
    return BradleyTerryFit(
        strengths=strength,
        iterations=iteration,
        converged=converged,
        log_strengths={i: math.log(v) for i, v in strength.items()},
    )


def task_agreement(rankings: Sequence[Sequence[Pair]]) -> float | None:
    """Mean, over the image pairs two or more annotators judged, of the majority answer's share.

    1.0 when every annotator ordered every pair alike; None when fewer than two rankings.
    """
    if len(rankings) < 2:
        return None
    votes = count_votes(pair for ranking in rankings for pair in ranking)
    shared = [v.agreement for v in votes.values() if v.total >= 2]
    return sum(shared) / len(shared) if shared else None
