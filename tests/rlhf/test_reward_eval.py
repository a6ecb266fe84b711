"""Tie-aware accuracy, threshold tuning, calibration and agreement ceiling on worked examples."""

from __future__ import annotations

import pytest

from rlhf.training.evaluate import (
    accuracy_by_model,
    agreement_ceiling,
    calibration_bins,
    pair_scores,
    predicted_labels,
    tie_aware_accuracy,
    tune_tie_threshold,
)

# p0 and |p0 - p1| = |2 p0 - 1| for each pair:
#   0.90 -> 0.80, 0.55 -> 0.10, 0.20 -> 0.60, 0.58 -> 0.16, 0.80 -> 0.60
P0 = [0.9, 0.55, 0.2, 0.58, 0.8]
LABEL_0 = [1.0, 0.5, 1.0, 1.0, 0.5]


def test_pair_scores_rule() -> None:
    # (pred, true): agree, both tie, disagree, pred tie only, true tie only
    assert pair_scores([1.0, 0.5, 0.0, 0.5, 1.0], [1.0, 0.5, 1.0, 1.0, 0.5]).tolist() == [1, 1, 0, 0.5, 0.5]


def test_tie_aware_accuracy_worked_example() -> None:
    # threshold 0.2: predicted [1, tie, 0, tie, 1] -> scores [1, 1, 0, 0.5, 0.5] -> 3.0 / 5
    assert predicted_labels(P0, 0.2).tolist() == [1.0, 0.5, 0.0, 0.5, 1.0]
    assert tie_aware_accuracy(P0, LABEL_0, 0.2) == pytest.approx(0.6)
    # threshold 0: never a predicted tie -> [1, 0.5, 0, 1, 0.5] -> 3.0 / 5
    assert tie_aware_accuracy(P0, LABEL_0, 0.0) == pytest.approx(0.6)
    # weights count pairs proportionally
    assert tie_aware_accuracy(P0, LABEL_0, 0.0, weight=[1, 1, 3, 1, 1]) == pytest.approx(3.0 / 7)


def test_threshold_tuning_finds_the_best_split() -> None:
    # gaps sorted: 0.10 (true tie), 0.16 (right), 0.60 (wrong), 0.60 (true tie), 0.80 (right)
    #   t = 0           -> [1, 0.5, 0, 1, 0.5]   = 3.0
    #   t in (.10, .16] -> [1, 1, 0, 1, 0.5]     = 3.5
    #   t in (.16, .60] -> [1, 1, 0, 0.5, 0.5]   = 3.0
    #   t in (.60, .80] -> [1, 1, 0.5, 0.5, 1]   = 4.0   <- best; candidates are midpoints, so 0.70
    #   t > .80         -> [0.5, 1, 0.5, 0.5, 1] = 3.5
    threshold, accuracy = tune_tie_threshold(P0, LABEL_0)
    assert threshold == pytest.approx(0.7)
    assert accuracy == pytest.approx(0.8)


def test_accuracy_by_model_counts_a_pair_for_both_sides() -> None:
    result = accuracy_by_model([0.9, 0.2], [1.0, 1.0], ["a", "a"], ["b", "a"], threshold=0.0)
    assert result == {"a": {"accuracy": 0.5, "pairs": 2.0}, "b": {"accuracy": 1.0, "pairs": 1.0}}


def test_calibration_bins() -> None:
    bins = calibration_bins([0.05, 0.15, 0.95], [0.0, 1.0, 1.0], n_bins=2)
    assert [(b.lower, b.upper, b.count) for b in bins] == [(0.0, 0.5, 2), (0.5, 1.0, 1)]
    assert bins[0].mean_predicted == pytest.approx(0.1)
    assert bins[0].observed == pytest.approx(0.5)
    assert bins[1].observed == 1.0


def test_agreement_ceiling() -> None:
    # pair A: 3 vs 1 votes, no ties  -> oracle says "0": 3/4; two annotators agree 6 of 12 ordered pairs
    # pair B: 1 vs 1, 2 tie votes     -> oracle says "tie": (2 + 1) / 4; agreement (2 + 0.5 * 8) / 12
    # pair C: a single vote           -> oracle 1; no inter-annotator pair
    ceiling = agreement_ceiling([3, 1, 1], [1, 1, 0], [0, 2, 0])
    assert ceiling.oracle == pytest.approx((0.75 + 0.75 + 1.0) / 3)
    assert ceiling.inter_annotator == pytest.approx(0.5)
