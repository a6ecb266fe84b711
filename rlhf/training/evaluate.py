"""Reward-model evaluation: PickScore's tie-aware pairwise accuracy and friends.

Tie-aware accuracy (our reading of Kirstain et al. 2023, "Pick-a-Pic", §5). For a pair with rewards
``r0, r1`` the model's preference probability is ``p0 = softmax([r0, r1])[0]``. The model *predicts a tie*
when ``|p0 - p1| < threshold`` (``p1 = 1 - p0``), else it predicts the image with the higher probability.
The human label is a tie when ``label_0 == 0.5``. Each pair then scores

* 1   when both are ties, or both prefer the same image;
* 0.5 when exactly one of the two (model or human) is a tie;
* 0   when they prefer different images.

Accuracy is the (weighted) mean score. The threshold is tuned on the validation split
(:func:`tune_tie_threshold`) and then applied unchanged to the test split. With ``threshold = 0`` the
model never predicts a tie, so a tied human label always scores 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def predicted_labels(p0: ArrayLike, threshold: float) -> FloatArray:
    """1.0 (image 0), 0.0 (image 1) or 0.5 (tie: ``|p0 - p1| < threshold``)."""
    p = np.asarray(p0, dtype=np.float64)
    return np.where(np.abs(2 * p - 1) < threshold, 0.5, np.where(p > 0.5, 1.0, 0.0))


def pair_scores(predicted: ArrayLike, label_0: ArrayLike) -> FloatArray:
    """Per-pair tie-aware score of predicted vs human labels (each 1, 0 or 0.5)."""
    pred = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(label_0, dtype=np.float64)
    pred_tie, true_tie = pred == 0.5, true == 0.5
    return np.where(
        pred_tie & true_tie, 1.0, np.where(pred_tie ^ true_tie, 0.5, (pred == true).astype(float))
    )


def tie_aware_accuracy(
    p0: ArrayLike, label_0: ArrayLike, threshold: float = 0.0, weight: ArrayLike | None = None
) -> float:
    scores = pair_scores(predicted_labels(p0, threshold), label_0)
    if scores.size == 0:
        return float("nan")
    return float(np.average(scores, weights=None if weight is None else np.asarray(weight, dtype=np.float64)))


def tune_tie_threshold(
    p0: ArrayLike, label_0: ArrayLike, weight: ArrayLike | None = None
) -> tuple[float, float]:
    """The threshold maximising tie-aware accuracy on these (validation) pairs, and that accuracy.

    Candidates are 0 and the midpoints between consecutive distinct ``|p0 - p1|`` values, so every
    distinct split of the pairs into "tie"/"not tie" is tried; the smallest best threshold wins.
    """
    gaps = np.unique(np.abs(2 * np.asarray(p0, dtype=np.float64) - 1))
    candidates = np.concatenate([[0.0], (gaps[:-1] + gaps[1:]) / 2, gaps[-1:] + 1e-9]) if gaps.size else [0.0]
    best_t, best_acc = 0.0, -1.0
    for t in candidates:
        acc = tie_aware_accuracy(p0, label_0, float(t), weight)
        if acc > best_acc + 1e-12:
            best_t, best_acc = float(t), acc
    return best_t, best_acc


def accuracy_by_model(
    p0: ArrayLike, label_0: ArrayLike, model_0: Sequence[str], model_1: Sequence[str], threshold: float
) -> dict[str, dict[str, float]]:
    """Tie-aware accuracy over the pairs each model version took part in (a pair counts for both sides)."""
    scores = pair_scores(predicted_labels(p0, threshold), label_0)
    groups: dict[str, list[float]] = {}
    for s, a, b in zip(scores, model_0, model_1, strict=True):
        for model in {a, b}:
            groups.setdefault(model, []).append(float(s))
    return {m: {"accuracy": float(np.mean(v)), "pairs": float(len(v))} for m, v in sorted(groups.items())}


@dataclass(frozen=True)
class CalibrationBin:
    lower: float  # bin edges on the predicted probability that image 0 wins
    upper: float
    count: int
    mean_predicted: float  # mean p0 in the bin
    observed: float  # mean label_0 in the bin (a tie counts 0.5)


def calibration_bins(p0: ArrayLike, label_0: ArrayLike, n_bins: int = 10) -> list[CalibrationBin]:
    """Reliability-diagram bins; empty bins are left out."""
    p = np.asarray(p0, dtype=np.float64)
    y = np.asarray(label_0, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = index == b
        if mask.any():
            bins.append(
                CalibrationBin(
                    float(edges[b]),
                    float(edges[b + 1]),
                    int(mask.sum()),
                    float(p[mask].mean()),
                    float(y[mask].mean()),
                )
            )
    return bins


def expected_calibration_error(bins: Sequence[CalibrationBin]) -> float:
    total = sum(b.count for b in bins)
    return sum(b.count * abs(b.mean_predicted - b.observed) for b in bins) / total if total else float("nan")


@dataclass(frozen=True)
class AgreementCeiling:
    oracle: float  # best tie-aware accuracy any predictor can reach against one random annotator per pair
    inter_annotator: float  # tie-aware agreement of two different random annotators (pairs with >= 2 votes)


def agreement_ceiling(
    votes_0: ArrayLike, votes_1: ArrayLike, votes_tie: ArrayLike | None = None
) -> AgreementCeiling:
    """How well a reward model could possibly do, given per-pair vote counts.

    For a pair with ``v0`` votes for image 0, ``v1`` for image 1 and ``vt`` ties (``n`` in all), a
    predictor that says "0" scores ``(v0 + vt/2) / n`` in expectation against a random annotator,
    "1" scores ``(v1 + vt/2) / n`` and "tie" scores ``(vt + (v0 + v1)/2) / n``; the oracle takes the best.
    Inter-annotator agreement scores two distinct annotators against each other with the same rule.
    """
    v0 = np.asarray(votes_0, dtype=np.float64)
    v1 = np.asarray(votes_1, dtype=np.float64)
    vt = np.zeros_like(v0) if votes_tie is None else np.asarray(votes_tie, dtype=np.float64)
    n = v0 + v1 + vt
    keep = n > 0
    v0, v1, vt, n = v0[keep], v1[keep], vt[keep], n[keep]
    oracle = np.maximum.reduce([v0 + vt / 2, v1 + vt / 2, vt + (v0 + v1) / 2]) / n
    multi = n >= 2
    same = v0 * (v0 - 1) + v1 * (v1 - 1) + vt * (vt - 1)  # ordered pairs of distinct annotators that agree
    half = 2 * vt * (v0 + v1)  # ordered pairs where exactly one says tie
    inter = (same + 0.5 * half)[multi] / (n * (n - 1))[multi]
    return AgreementCeiling(
        oracle=float(oracle.mean()) if oracle.size else float("nan"),
        inter_annotator=float(inter.mean()) if inter.size else float("nan"),
    )
