"""Pair expansion: one ranking of N images → its ordered (chosen, rejected) pairs.

A ranking is a list of *groups*, best first; images in one group are tied. Images the
annotator left unranked (a partial ranking, or the losers of a best-of-N pick) go in
``unranked``: every ranked image beats every unranked one, and no pair is formed among the
unranked themselves, since the annotator said nothing about their order.

Tie policies (chosen per export):
- ``drop``: tied pairs are left out.
- ``soft``: tied pairs are kept with labels 0.5/0.5 (PickScore's convention).
- ``mark``: tied pairs are kept with ``tie=True`` and labels 0/0, so a reader that treats
  ``label_0 == 1`` as "image 0 preferred" never mistakes a tie for a preference.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

TiePolicy = Literal["drop", "soft", "mark"]
TIE_POLICIES: tuple[str, ...] = ("drop", "soft", "mark")


@dataclass(frozen=True)
class Pair:
    image_0: Hashable  # the preferred image for a strict pair (label_0 = 1); int or UUID string
    image_1: Hashable
    label_0: float
    label_1: float
    tie: bool
    weight: float = 1.0


def validate_groups(groups: Sequence[Sequence[Hashable]], unranked: Iterable[Hashable] = ()) -> None:
    seen: set[Hashable] = set()
    for index, group in enumerate(groups):
        if not group:
            raise ValueError(f"group {index} of the ranking is empty")
        for image in group:
            if image in seen:
                raise ValueError(f"image {image} appears twice in the ranking")
            seen.add(image)
    for image in unranked:
        if image in seen:
            raise ValueError(f"image {image} is both ranked and unranked")
        seen.add(image)


def expand_ranking(
    groups: Sequence[Sequence[Hashable]], *, tie_policy: TiePolicy, unranked: Sequence[Hashable] = ()
) -> list[Pair]:
    """All C(N,2) pairs the ranking decides (fewer for ties under ``drop`` and for unranked images)."""
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie_policy must be one of {', '.join(TIE_POLICIES)}, got {tie_policy!r}")
    validate_groups(groups, unranked)
    pairs: list[Pair] = []
    ordered = [list(group) for group in groups]
    ordered_with_rest = [*ordered, list(unranked)] if unranked else ordered
    for better_index, better in enumerate(ordered):
        if len(better) > 1 and tie_policy != "drop":
            for a, b in combinations(better, 2):
                if tie_policy == "soft":
                    pairs.append(Pair(a, b, 0.5, 0.5, tie=True))
                else:
                    pairs.append(Pair(a, b, 0.0, 0.0, tie=True))
        for worse in ordered_with_rest[better_index + 1 :]:
            for a in better:
                for b in worse:
                    pairs.append(Pair(a, b, 1.0, 0.0, tie=False))
    return pairs


def weight_per_prompt(pairs_by_prompt: dict[Hashable, list[Pair]]) -> dict[Hashable, list[Pair]]:
    """Weight each pair 1/(pairs of its prompt) so that long rankings do not dominate."""
    weighted: dict[Hashable, list[Pair]] = {}
    for prompt, pairs in pairs_by_prompt.items():
        share = 1.0 / len(pairs) if pairs else 0.0
        weighted[prompt] = [
            Pair(p.image_0, p.image_1, p.label_0, p.label_1, p.tie, weight=share) for p in pairs
        ]
    return weighted
