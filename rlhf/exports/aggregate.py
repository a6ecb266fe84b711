"""Aggregation across annotators: pair votes, Bradley-Terry strengths and per-task agreement."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rlhf.exports.pairs import Pair


@dataclass
class PairVotes:
    """Votes on one unordered pair (low id, high id)."""

    low: Hashable
    high: Hashable
    low_wins: int = 0
    high_wins: int = 0
    ties: int = 0

    @property
    def total(self) -> int:
        return self.low_wins + self.high_wins + self.ties

    @property
    def majority(self) -> Hashable | None:
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


def count_votes(pairs: Iterable[Pair]) -> dict[tuple[Hashable, Hashable], PairVotes]:
    votes: dict[tuple[Hashable, Hashable], PairVotes] = {}
    for pair in pairs:
        low, high = sorted((pair.image_0, pair.image_1), key=str)
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
    strengths: dict[Hashable, float]  # exp-scale, geometric mean 1
    iterations: int
    converged: bool
    log_strengths: dict[Hashable, float] = field(default_factory=dict)


class ComparisonLog:
    """Compact record of every comparison, for a Bradley-Terry fit over millions of pairs.

    Stores three int arrays (first image, second image, outcome) instead of Python objects;
    outcome is 1 when the first image won and 0 for a tie.
    """

    def __init__(self) -> None:
        self.ids: dict[Hashable, int] = {}  # image id (int or UUID string) -> dense index
        self._first: list[np.ndarray] = []
        self._second: list[np.ndarray] = []
        self._tie: list[np.ndarray] = []
        self._pending: list[tuple[int, int, bool]] = []

    def add(self, pair: Pair) -> None:
        first = self.ids.setdefault(pair.image_0, len(self.ids))
        second = self.ids.setdefault(pair.image_1, len(self.ids))
        self._pending.append((first, second, pair.tie))
        if len(self._pending) >= 65_536:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            block = np.asarray(self._pending, dtype=np.int64)
            self._first.append(block[:, 0])
            self._second.append(block[:, 1])
            self._tie.append(block[:, 2].astype(bool))
            self._pending = []

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._flush()
        if not self._first:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=bool)
        return np.concatenate(self._first), np.concatenate(self._second), np.concatenate(self._tie)


def fit_bradley_terry(
    pairs: Iterable[Pair] | ComparisonLog, *, max_iter: int = 500, tol: float = 1e-9, prior: float = 0.1
) -> BradleyTerryFit:
    """Bradley-Terry strengths by Hunter's (2004) MM algorithm; a tie counts half a win each way.

    ``prior`` adds that many virtual half-wins between every compared pair, which keeps the
    fit finite for an image that always won or always lost (set 0 for the plain MLE).
    Memory is a few arrays the size of the number of comparisons.
    """
    if isinstance(pairs, ComparisonLog):
        log = pairs
    else:
        log = ComparisonLog()
        for pair in pairs:
            log.add(pair)
    first, second, tie = log.arrays()
    if first.size == 0:
        return BradleyTerryFit({}, 0, True)
    ids, index = np.unique(np.concatenate([first, second]), return_inverse=True)
    a, b = index[: first.size], index[first.size :]
    # Collapse repeated comparisons of one unordered pair into counts.
    low, high = np.minimum(a, b), np.maximum(a, b)
    key = low * ids.size + high
    unique_key, pair_index = np.unique(key, return_inverse=True)
    games = np.bincount(pair_index).astype(float)
    wins = np.bincount(a, weights=np.where(tie, 0.5, 1.0), minlength=ids.size)
    wins += np.bincount(b, weights=np.where(tie, 0.5, 0.0), minlength=ids.size)
    pair_low, pair_high = unique_key // ids.size, unique_key % ids.size
    if prior:
        games = games + 2 * prior
        wins = wins + prior * (np.bincount(pair_low, minlength=ids.size) + np.bincount(pair_high, minlength=ids.size))
    wins = np.maximum(wins, 1e-12)
    strength = np.ones(ids.size)
    converged = False
    iteration = 0
    for iteration in range(1, max_iter + 1):  # noqa: B007 - reported below
        share = games / (strength[pair_low] + strength[pair_high])
        denominator = np.bincount(pair_low, weights=share, minlength=ids.size)
        denominator += np.bincount(pair_high, weights=share, minlength=ids.size)
        updated = wins / denominator
        updated /= np.exp(np.mean(np.log(updated)))
        delta = float(np.max(np.abs(np.log(updated) - np.log(strength))))
        strength = updated
        if delta < tol:
            converged = True
            break
    by_index = {index: identifier for identifier, index in log.ids.items()}
    identifiers = [by_index[int(i)] for i in ids]
    return BradleyTerryFit(
        strengths=dict(zip(identifiers, strength.tolist(), strict=True)),
        iterations=iteration,
        converged=converged,
        log_strengths=dict(zip(identifiers, np.log(strength).tolist(), strict=True)),
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
