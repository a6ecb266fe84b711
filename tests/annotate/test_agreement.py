"""Agreement metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from annotate.workflow.agreement import (
    average_ranks,
    consensus,
    kendall_tau_b,
    kendalls_w,
    pairwise_agreement,
)


def test_tau_b_identical_and_reversed():
    a = [["a"], ["b"], ["c"], ["d"]]
    assert kendall_tau_b(a, a) == 1.0
    assert kendall_tau_b(a, list(reversed(a))) == -1.0


def test_tau_b_one_swap_of_four():
    # a>b>c>d vs b>a>c>d: 6 pairs, 5 concordant, 1 discordant -> (5-1)/6
    assert kendall_tau_b([["a"], ["b"], ["c"], ["d"]], [["b"], ["a"], ["c"], ["d"]]) == pytest.approx(4 / 6)


def test_tau_b_with_ties_hand_computed():
    # x = a>b=c>d ; y = a>b>c>d. Pairs: ab C, ac C, ad C, bc tied in x only, bd C, cd C.
    # C=5, D=0, n0=6, n1 (ties in x)=1, n2=0 -> 5 / sqrt(5*6)
    x = [["a"], ["b", "c"], ["d"]]
    y = [["a"], ["b"], ["c"], ["d"]]
    assert kendall_tau_b(x, y) == pytest.approx(5 / math.sqrt(30))


def test_tau_b_undefined_when_all_tied_or_too_few():
    assert kendall_tau_b([["a", "b"]], [["a"], ["b"]]) is None
    assert kendall_tau_b([["a"]], [["a"]]) is None


def test_tau_b_uses_only_common_items():
    assert kendall_tau_b([["a"], ["b"], ["z"]], [["a"], ["b"]]) == 1.0


def test_pairwise_agreement_hand_computed():
    # same x, y as above: 5 of 6 pairs agree (bc differs: tie vs b>c)
    assert pairwise_agreement([["a"], ["b", "c"], ["d"]], [["a"], ["b"], ["c"], ["d"]]) == pytest.approx(5 / 6)
    # ties in both count as agreement
    assert pairwise_agreement([["a", "b"]], [["b", "a"]]) == 1.0
    assert pairwise_agreement([["a"]], [["a"]]) is None


def test_average_ranks_ties_share_the_mean_and_missing_share_last():
    assert average_ranks([["a"], ["b", "c"], ["d"]]) == {"a": 1, "b": 2.5, "c": 2.5, "d": 4}
    assert average_ranks([["a"]], ["a", "b", "c"]) == {"a": 1, "b": 2.5, "c": 2.5}


def test_kendalls_w_perfect_and_none():
    r = [["a"], ["b"], ["c"]]
    assert kendalls_w([r, r, r]) == pytest.approx(1.0)
    assert kendalls_w([r]) is None


def test_kendalls_w_hand_computed_without_ties():
    # 3 raters, 3 items. ranks: r1 a1 b2 c3; r2 a1 b3 c2; r3 a2 b1 c3.
    # R = a4, b6, c8; mean 6; S = 4+0+4 = 8; W = 12*8 / (9*(27-3)) = 96/216
    rankings = [[["a"], ["b"], ["c"]], [["a"], ["c"], ["b"]], [["b"], ["a"], ["c"]]]
    assert kendalls_w(rankings) == pytest.approx(96 / 216)


def test_kendalls_w_hand_computed_with_tie_correction():
    # r1: a1 b2 c3 ; r2: a1 b2.5 c2.5 (b=c tie). R: a2, b4.5, c5.5; mean 4; S = 4+0.25+2.25 = 6.5
    # T = (2^3-2) = 6 ; W = 12*6.5 / (4*24 - 2*6) = 78/84
    rankings = [[["a"], ["b"], ["c"]], [["a"], ["b", "c"]]]
    assert kendalls_w(rankings) == pytest.approx(78 / 84)


def test_consensus_is_borda_by_mean_rank():
    rankings = [[["a"], ["b"], ["c"]], [["b"], ["a"], ["c"]], [["a"], ["c"], ["b"]]]
    # mean ranks: a (1+2+1)/3, b (2+1+3)/3, c (3+3+2)/3
    assert consensus(rankings) == [["a"], ["b"], ["c"]]
    assert consensus([[["a"], ["b"]], [["b"], ["a"]]]) == [["a", "b"]]
