"""Agreement between rankings: pure functions, no Django.

A *ranking* is a list of groups of item ids, best first; the items inside one group are
tied: ``[[7], [3, 9], [4]]`` says 7 beats 3 and 9, which tie, and both beat 4. This is the
representation :class:`annotate.models.Annotation` stores in ``ranking``.

* :func:`kendall_tau_b` — Kendall's tau-b between two rankings (ties corrected), over the
  items both rank.
* :func:`pairwise_agreement` — the share of item pairs on which two rankings state the same
  relation (a beats b, b beats a, or a tie).
* :func:`kendalls_w` — Kendall's coefficient of concordance for m rankings of the same items,
  with the tie correction; items a ranking leaves out share its last place.
* :func:`consensus` — the Borda (mean-rank) consensus of several rankings.
* :func:`disagreement` — how much several rankings of one task disagree: one minus their mean
  pairwise agreement.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from itertools import combinations
from statistics import median

Item = Hashable
Ranking = Sequence[Sequence[Item]]


def positions(ranking: Ranking) -> dict[Item, int]:
    """Item -> index of its group (0 = best)."""
    return {item: index for index, group in enumerate(ranking) for item in group}


def average_ranks(ranking: Ranking, items: Sequence[Item] | None = None) -> dict[Item, float]:
    """Item -> 1-based rank, tied items sharing the mean of the places they span.

    With ``items``, those the ranking leaves out share the places after the last group.
    """
    ranks: dict[Item, float] = {}
    place = 1
    for group in ranking:
        size = len(group)
        for item in group:
            ranks[item] = place + (size - 1) / 2
        place += size
    if items is not None:
        missing = [item for item in items if item not in ranks]
        for item in missing:
            ranks[item] = place + (len(missing) - 1) / 2
        ranks = {item: ranks[item] for item in items}
    return ranks


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def _pair_counts(a: Ranking, b: Ranking) -> tuple[int, int, int, int, int]:
    """(concordant, discordant, tied only in a, tied only in b, tied in both) over common items."""
    pa, pb = positions(a), positions(b)
    common = [item for item in pa if item in pb]
    concordant = discordant = tie_a = tie_b = tie_both = 0
    for x, y in combinations(common, 2):
        sa, sb = _sign(pa[x] - pa[y]), _sign(pb[x] - pb[y])
        if sa == 0 and sb == 0:
            tie_both += 1
        elif sa == 0:
            tie_a += 1
        elif sb == 0:
            tie_b += 1
        elif sa == sb:
            concordant += 1
        else:
            discordant += 1
    return concordant, discordant, tie_a, tie_b, tie_both


def kendall_tau_b(a: Ranking, b: Ranking) -> float | None:
    """Kendall's tau-b; ``None`` when it is undefined (fewer than 2 common items, or one ranking all ties)."""
    concordant, discordant, tie_a, tie_b, tie_both = _pair_counts(a, b)
    n0 = concordant + discordant + tie_a + tie_b + tie_both
    denominator = math.sqrt((n0 - tie_a - tie_both) * (n0 - tie_b - tie_both))
    if denominator == 0:
        return None
    return (concordant - discordant) / denominator


def pairwise_agreement(a: Ranking, b: Ranking) -> float | None:
    """Share of common item pairs with the same relation in both rankings; ``None`` without pairs."""
    concordant, discordant, tie_a, tie_b, tie_both = _pair_counts(a, b)
    total = concordant + discordant + tie_a + tie_b + tie_both
    if total == 0:
        return None
    return (concordant + tie_both) / total


def disagreement(rankings: Sequence[Ranking]) -> float | None:
    """One minus the mean :func:`pairwise_agreement` over every pair of ``rankings``: 0 when they all
    state the same relation on every item pair, 1 when no two agree on any; ``None`` for fewer than two
    rankings (or no pair of them sharing an item pair)."""
    scores = [pairwise_agreement(a, b) for a, b in combinations(rankings, 2)]
    mean = mean_or_none(scores)
    return None if mean is None else 1.0 - mean


def kendalls_w(rankings: Sequence[Ranking], items: Sequence[Item] | None = None) -> float | None:
    """Kendall's W with the tie correction; ``None`` for fewer than 2 rankings or 2 items.

    ``items`` defaults to every item any ranking names; a ranking's missing items share its
    last place.

        W = 12 S / (m^2 (n^3 - n) - m * sum_j T_j),   T_j = sum over tie groups of (t^3 - t)
    """
    if items is None:
        items = list(dict.fromkeys(item for ranking in rankings for group in ranking for item in group))
    m, n = len(rankings), len(items)
    if m < 2 or n < 2:
        return None
    item_set = set(items)
    totals = dict.fromkeys(items, 0.0)
    tie_sum = 0.0
    for ranking in rankings:
        groups = [[item for item in group if item in item_set] for group in ranking]
        groups = [group for group in groups if group]
        ranked = {item for group in groups for item in group}
        missing = [item for item in items if item not in ranked]
        if missing:
            groups.append(missing)
        for group in groups:
            tie_sum += len(group) ** 3 - len(group)
        for item, rank in average_ranks(groups).items():
            totals[item] += rank
    mean = m * (n + 1) / 2
    s = sum((total - mean) ** 2 for total in totals.values())
    denominator = m * m * (n**3 - n) - m * tie_sum
    if denominator <= 0:
        return None
    return 12 * s / denominator


def consensus(rankings: Sequence[Ranking], items: Sequence[Item] | None = None) -> list[list[Item]]:
    """Borda consensus: items ordered by mean rank (missing items share last place); equal means tie."""
    if items is None:
        items = list(dict.fromkeys(item for ranking in rankings for group in ranking for item in group))
    if not rankings:
        return [list(items)] if items else []
    totals = dict.fromkeys(items, 0.0)
    for ranking in rankings:
        for item, rank in average_ranks(ranking, items).items():
            totals[item] += rank
    groups: list[list[Item]] = []
    last: float | None = None
    for item in sorted(items, key=lambda it: (totals[it], str(it))):
        if last is not None and math.isclose(totals[item], last):
            groups[-1].append(item)
        else:
            groups.append([item])
        last = totals[item]
    return groups


def mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def median_or_none(values: Sequence[float]) -> float | None:
    return median(values) if values else None
