"""Pair expansion, tie policies, weighting, vote aggregation, Bradley-Terry and splits, by hand."""

from __future__ import annotations

import math

import pytest

from rlhf.exports.aggregate import count_votes, fit_bradley_terry, task_agreement
from rlhf.exports.pairs import Pair, expand_ranking, weight_per_prompt
from rlhf.exports.splits import SplitSpec


def as_tuples(pairs):
    return [(p.image_0, p.image_1, p.label_0, p.label_1, p.tie) for p in pairs]


# Ranking: 1 best, then 2 and 3 tied, then 4.
GROUPS = [[1], [2, 3], [4]]


def test_full_ranking_with_a_tie_under_each_policy():
    strict = [(1, 2, 1.0, 0.0, False), (1, 3, 1.0, 0.0, False), (1, 4, 1.0, 0.0, False),
              (2, 4, 1.0, 0.0, False), (3, 4, 1.0, 0.0, False)]
    assert sorted(as_tuples(expand_ranking(GROUPS, tie_policy="drop"))) == sorted(strict)
    assert sorted(as_tuples(expand_ranking(GROUPS, tie_policy="soft"))) == sorted([*strict, (2, 3, 0.5, 0.5, True)])
    assert sorted(as_tuples(expand_ranking(GROUPS, tie_policy="mark"))) == sorted([*strict, (2, 3, 0.0, 0.0, True)])


def test_n_images_without_ties_give_n_choose_2_pairs():
    pairs = expand_ranking([[5], [3], [9], [1], [7]], tie_policy="drop")
    assert len(pairs) == math.comb(5, 2)
    assert all(p.label_0 == 1.0 for p in pairs)


def test_best_of_n_and_pairwise_expand_the_same_way():
    best_of_four = expand_ranking([[3]], unranked=[1, 2, 4], tie_policy="soft")
    assert sorted(as_tuples(best_of_four)) == [(3, 1, 1.0, 0.0, False), (3, 2, 1.0, 0.0, False),
                                               (3, 4, 1.0, 0.0, False)]
    assert as_tuples(expand_ranking([[8], [6]], tie_policy="soft")) == [(8, 6, 1.0, 0.0, False)]
    assert as_tuples(expand_ranking([[8, 6]], tie_policy="soft")) == [(8, 6, 0.5, 0.5, True)]
    assert expand_ranking([[8, 6]], tie_policy="drop") == []


def test_partial_ranking_forms_no_pairs_among_unranked():
    pairs = expand_ranking([[1], [2]], unranked=[3, 4], tie_policy="soft")
    assert len(pairs) == 1 + 2 + 2  # 1>2, 1>3, 1>4, 2>3, 2>4; nothing between 3 and 4
    assert not any({p.image_0, p.image_1} == {3, 4} for p in pairs)


@pytest.mark.parametrize(
    ("groups", "unranked", "message"),
    [([[1], [1]], [], "image 1 appears twice"), ([[1], []], [], "group 1 of the ranking is empty"),
     ([[1]], [1], "image 1 is both ranked and unranked")],
)
def test_malformed_rankings_are_refused(groups, unranked, message):
    with pytest.raises(ValueError, match=message):
        expand_ranking(groups, unranked=unranked, tie_policy="drop")


def test_unknown_tie_policy_is_refused():
    with pytest.raises(ValueError, match="tie_policy"):
        expand_ranking(GROUPS, tie_policy="coin")


def test_weighting_gives_each_prompt_total_weight_one():
    weighted = weight_per_prompt({
        "long": expand_ranking([[1], [2], [3], [4]], tie_policy="drop"),  # 6 pairs
        "short": expand_ranking([[5], [6]], tie_policy="drop"),  # 1 pair
    })
    assert [p.weight for p in weighted["long"]] == [pytest.approx(1 / 6)] * 6
    assert [p.weight for p in weighted["short"]] == [1.0]


def test_votes_and_majority_across_annotators():
    rankings = [
        expand_ranking([[1], [2]], tie_policy="soft"),
        expand_ranking([[1], [2]], tie_policy="soft"),
        expand_ranking([[2], [1]], tie_policy="soft"),
        expand_ranking([[1, 2]], tie_policy="soft"),
    ]
    votes = count_votes(p for r in rankings for p in r)[(1, 2)]
    assert (votes.low_wins, votes.high_wins, votes.ties) == (2, 1, 1)
    assert votes.majority == 1
    assert votes.agreement == pytest.approx(2 / 4)
    assert task_agreement(rankings[:2]) == 1.0
    assert task_agreement(rankings[:3]) == pytest.approx(2 / 3)
    assert task_agreement(rankings[:1]) is None


def test_bradley_terry_matches_the_hand_computed_fit():
    # A beats B 2-1 and B beats C 2-1: the MLE has p_A/p_B = p_B/p_C = 2, so with geometric
    # mean 1 the strengths are 2, 1, 1/2.
    A, B, C = 1, 2, 3
    pairs = [Pair(A, B, 1, 0, False)] * 2 + [Pair(B, A, 1, 0, False)] + \
            [Pair(B, C, 1, 0, False)] * 2 + [Pair(C, B, 1, 0, False)]
    fit = fit_bradley_terry(pairs, prior=0.0)
    assert fit.converged
    assert fit.strengths[A] == pytest.approx(2.0, rel=1e-6)
    assert fit.strengths[B] == pytest.approx(1.0, rel=1e-6)
    assert fit.strengths[C] == pytest.approx(0.5, rel=1e-6)


def test_bradley_terry_counts_a_tie_as_half_a_win():
    # A beats B once and they tie once: 1.5 wins against 0.5, so p_A / p_B = 3.
    fit = fit_bradley_terry([Pair(1, 2, 1, 0, False), Pair(1, 2, 0.5, 0.5, True)], prior=0.0)
    assert fit.strengths[1] / fit.strengths[2] == pytest.approx(3.0, rel=1e-6)


def test_bradley_terry_prior_keeps_an_unbeaten_image_finite():
    fit = fit_bradley_terry([Pair(1, 2, 1, 0, False)] * 3)
    assert math.isfinite(fit.log_strengths[1]) and fit.strengths[1] > fit.strengths[2]


def test_splits_are_deterministic_disjoint_and_roughly_proportional():
    spec = SplitSpec(train=0.8, validation=0.1, test=0.1, seed=7)
    prompts = [f"prompt {i}" for i in range(5000)]
    first = {p: spec.assign(p) for p in prompts}
    assert first == {p: spec.assign(p) for p in prompts}
    shares = {name: sum(1 for s in first.values() if s == name) / len(prompts) for name in ("train", "validation", "test")}
    assert shares["train"] == pytest.approx(0.8, abs=0.03)
    assert shares["validation"] == pytest.approx(0.1, abs=0.02)
    other_seed = SplitSpec(seed=8)
    assert any(first[p] != other_seed.assign(p) for p in prompts)


def test_split_fractions_are_validated():
    with pytest.raises(ValueError, match="add up to 1"):
        SplitSpec(train=0.9, validation=0.2, test=0.1)
