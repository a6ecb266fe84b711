"""A reward model's scores against human rankings: pure functions, no Django.

Rankings are tie groups of item ids, best first (as in :mod:`annotate.workflow.agreement`); scores map
item ids to a float, or to ``None`` (or leave the item out) when the model has not scored it.

* :func:`model_ranking` — the model's own ordering: scored items by score, highest first
  (equal scores tie).
* :func:`disagreeing_pairs` — the item pairs a ranking orders one way and the model's scores
  the other. A tie in the ranking, equal scores, or an unscored item is never a disagreement.
* :func:`order_by_score` — items re-ordered by score, highest first; unscored ones keep their
  original order after the scored ones (the annotators' pre-sorted task page).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

from annotate.workflow.agreement import average_ranks

Item = Hashable
Ranking = Sequence[Sequence[Item]]
Scores = Mapping[Item, float | None]
T = TypeVar("T")


def _scored(scores: Scores, items: Sequence[Item]) -> dict[Item, float]:
    """The scored items of ``items``, in their order, with their scores."""
    found: dict[Item, float] = {}
    for item in items:
        value = scores.get(item)
        if value is not None:
            found[item] = float(value)
    return found


def model_ranking(scores: Scores, items: Sequence[Item] | None = None) -> list[list[Item]]:
    """Tie groups of the scored items (of ``items``, default every key of ``scores``), highest score first.

    Unscored items are left out; items with equal scores share a group, in their given order.
    """
    scored = _scored(scores, list(scores) if items is None else items)
    groups: list[list[Item]] = []
    last: float | None = None
    for item in sorted(scored, key=lambda it: -scored[it]):
        if last is not None and scored[item] == last:
            groups[-1].append(item)
        else:
            groups.append([item])
        last = scored[item]
    return groups


def disagreeing_pairs(ranking: Ranking, scores: Scores,
                      items: Sequence[Item] | None = None) -> list[tuple[Item, Item]]:
    """``(preferred, other)`` pairs where ``ranking`` puts ``preferred`` strictly above ``other``
    while the model scores ``other`` strictly higher.

    Only items the model scored take part. With ``items``, those the ranking leaves out (a
    partial or best-of-N answer) share its last place, as in :func:`annotate.workflow.agreement.consensus`;
    without, only the items the ranking names count. Pairs come in the ranking's order.
    """
    ranks = average_ranks(ranking, items)
    scored = _scored(scores, list(ranks))
    order = sorted(scored, key=lambda item: ranks[item])  # stable: a group keeps the ranking's own order
    pairs: list[tuple[Item, Item]] = []
    for i, preferred in enumerate(order):
        for other in order[i + 1:]:
            if ranks[preferred] < ranks[other] and scored[other] > scored[preferred]:
                pairs.append((preferred, other))
    return pairs


def order_by_score(items: Sequence[T], scores: Scores, key: Callable[[T], Item]) -> list[T]:
    """``items`` sorted by ``scores[key(item)]``, highest first; unscored items follow in their order."""
    values = [scores.get(key(item)) for item in items]
    scored = [(value, item) for value, item in zip(values, items, strict=True) if value is not None]
    scored.sort(key=lambda pair: -float(pair[0]))  # stable: equal scores keep their order
    return [item for _, item in scored] + [item for value, item in zip(values, items, strict=True) if value is None]
