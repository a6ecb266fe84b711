"""Preference functions for simulated annotators: a typed Protocol plus an explicit registry.

A preference function scores one image for its prompt, higher = preferred:
``(image: PIL.Image, prompt: str) -> float``. Built-ins:

- ``larger_shapes``: the share of the image that is not background (bigger shapes score higher);
- ``brighter``: the mean grey level in [0, 1];
- ``shape_centred``: 1 minus the normalised distance of the foreground's centroid from the centre;
- ``warmer``: red over blue, the mean of (R - B) in [-1, 1] (warm tones preferred).

In the shapes world a caption fixes each shape's colour, size class, grid cell and the background, so a
preference can only move what the caption leaves open: a shape's exact size, edges and tints (room for
``larger_shapes`` and ``warmer``) but barely its position (two pixels of jitter) or its grey level.

Any other callable is named by a dotted path, ``"package.module:function"`` or
``"package.module.function"``; :func:`build_preference` imports and checks it when a
:class:`SimulationConfig` is built, never mid-run. :func:`noisy_ranking` turns scores into a
ranking with Bradley-Terry noise at a temperature. Django-free.

A temperature is in its preference's own score units, so one temperature is very different noise for
two preferences. :func:`temperature_for_label_accuracy` sets the noise as a *label accuracy* instead (the
share of pairwise labels that agree with the preference), calibrated on the score differences of the
pairs the annotators will rank; :func:`expected_label_accuracy` is the other direction.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image
from scipy.special import expit


@runtime_checkable
class PreferenceFunction(Protocol):
    def __call__(self, image: Image.Image, prompt: str) -> float: ...


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def foreground_mask(image: Image.Image, *, threshold: float = 40.0) -> np.ndarray:
    """Pixels far (in RGB distance) from the background colour, taken as the median border pixel.

    The shapes world's two-tone backgrounds differ between the top and the bottom half, so each half
    is compared with the median of its own border pixels.
    """
    pixels = _pixels(image)
    height = pixels.shape[0]
    mask = np.zeros(pixels.shape[:2], dtype=bool)
    for top, bottom in ((0, height // 2), (height // 2, height)):
        half = pixels[top:bottom]
        border = np.concatenate([half[:, 0], half[:, -1], half[0 if top == 0 else -1]])
        background = np.median(border, axis=0)
        mask[top:bottom] = np.linalg.norm(half - background, axis=-1) > threshold
    return mask


def larger_shapes(image: Image.Image, prompt: str) -> float:
    """Share of the image covered by shapes (non-background pixels), in [0, 1]."""
    return float(foreground_mask(image).mean())


def brighter(image: Image.Image, prompt: str) -> float:
    """Mean grey level in [0, 1]."""
    return float(np.asarray(image.convert("L"), dtype=np.float64).mean() / 255.0)


def shape_centred(image: Image.Image, prompt: str) -> float:
    """1 at a foreground centred in the image, 0 at a corner (and 0 with no foreground)."""
    mask = foreground_mask(image)
    if not mask.any():
        return 0.0
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    dy, dx = (ys.mean() - (height - 1) / 2) / (height / 2), (xs.mean() - (width - 1) / 2) / (width / 2)
    return float(1.0 - min(1.0, np.hypot(dy, dx) / np.sqrt(2)))


def warmer(image: Image.Image, prompt: str) -> float:
    """Red over blue: the mean of (R - B) / 255, in [-1, 1]."""
    pixels = _pixels(image)
    return float((pixels[..., 0] - pixels[..., 2]).mean() / 255.0)


PREFERENCES: dict[str, PreferenceFunction] = {
    "larger_shapes": larger_shapes,
    "brighter": brighter,
    "shape_centred": shape_centred,
    "warmer": warmer,
}


def register_preference(name: str, fn: PreferenceFunction) -> None:
    if name in PREFERENCES:
        raise ValueError(f"preference {name!r} is already registered")
    if not callable(fn):
        raise ValueError(f"preference {name!r} must be callable (image, prompt) -> float")
    PREFERENCES[name] = fn


def _import_dotted(path: str) -> Callable[..., object]:
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"preference {path!r} is neither a registered name nor a dotted path 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"preference {path!r}: cannot import {module_name!r} ({exc})") from None
    fn = getattr(module, attribute, None)
    if fn is None:
        raise ValueError(f"preference {path!r}: {module_name!r} has no attribute {attribute!r}")
    if not callable(fn):
        raise ValueError(f"preference {path!r} is not callable")
    return fn


def build_preference(name: str) -> PreferenceFunction:
    """The preference for a registered name or a dotted path; ValueError naming the choices otherwise."""
    name = (name or "").strip()
    if name in PREFERENCES:
        return PREFERENCES[name]
    if "." not in name and ":" not in name:
        raise ValueError(f"preference must be one of {sorted(PREFERENCES)} or a dotted path, not {name!r}")
    fn = _import_dotted(name)
    return fn  # type: ignore[return-value]


def noisy_ranking(scores: Sequence[float], *, temperature: float, rng: np.random.Generator) -> list[int]:
    """Indices of ``scores`` best first, sampled from the Plackett-Luce model with utilities score/T.

    Adding Gumbel noise to ``score / temperature`` and sorting samples exactly that model, whose
    pairwise marginals are Bradley-Terry: P(i above j) = sigmoid((s_i - s_j) / T). Temperature 0
    ranks by score (ties broken by index, stably).
    """
    values = np.asarray(scores, dtype=np.float64)
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if temperature == 0:
        return [int(i) for i in np.argsort(-values, kind="stable")]
    noisy = values / temperature + rng.gumbel(size=values.shape)
    return [int(i) for i in np.argsort(-noisy, kind="stable")]


_MAX_HALVINGS = 400  # more than a float's range of exponents needs


def check_label_accuracy(label_accuracy: float) -> None:
    """ValueError unless ``label_accuracy`` is a share from 0.5 (labels of pure noise) to 1 (none wrong)."""
    if isinstance(label_accuracy, bool) or not isinstance(label_accuracy, int | float) or not (
            0.5 <= label_accuracy <= 1):
        raise ValueError("label_accuracy must be from 0.5 (labels of pure noise) to 1 (every label agrees with "
                         f"the preference), not {label_accuracy!r}")


def _gaps(differences: Sequence[float]) -> np.ndarray:
    """The pairs' absolute score differences, without the ties (a pair of equal scores has no right label)."""
    gaps = np.abs(np.asarray(differences, dtype=np.float64))
    if not np.isfinite(gaps).all():
        raise ValueError("score differences must be finite numbers")
    gaps = gaps[gaps > 0]
    if not gaps.size:
        raise ValueError("the preference gives every pair the same score: no label can be right or wrong")
    return gaps


def expected_label_accuracy(differences: Sequence[float], temperature: float) -> float:
    """The share of labels Bradley-Terry annotators at ``temperature`` get right, in expectation, over pairs
    whose scores differ by ``differences``: the mean of sigmoid(|d| / T). Pairs of equal score are left out.

    It is what :func:`noisy_ranking`'s rankings give over all the pairs they order (their pairwise
    marginals are Bradley-Terry); 1 at temperature 0, 0.5 at an infinite one.
    """
    gaps = _gaps(differences)
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if temperature == 0:
        return 1.0
    if math.isinf(temperature):
        return 0.5
    return float(np.mean(expit(gaps / temperature)))


def temperature_for_label_accuracy(differences: Sequence[float], label_accuracy: float, *,
                                   rtol: float = 1e-9) -> float:
    """The temperature at which :func:`expected_label_accuracy` over these pairs is ``label_accuracy``.

    Accuracy falls strictly from 1 to 0.5 as the temperature rises, so the root is unique: bracketed by
    halving and doubling from the median difference, then bisected on log T to a relative ``rtol``.
    1 gives 0 (annotators rank by score) and 0.5 gives ``math.inf`` (labels of pure noise).
    """
    check_label_accuracy(label_accuracy)
    gaps = _gaps(differences)
    if label_accuracy == 1:
        return 0.0
    if label_accuracy == 0.5:
        return math.inf
    low = high = float(np.median(gaps))
    for _ in range(_MAX_HALVINGS):  # lower temperatures label more pairs right
        if expected_label_accuracy(gaps, low) >= label_accuracy:
            break
        low /= 2
    for _ in range(_MAX_HALVINGS):
        if expected_label_accuracy(gaps, high) <= label_accuracy:
            break
        high *= 2
    for _ in range(_MAX_HALVINGS):
        if high / low - 1 <= rtol:
            break
        middle = math.sqrt(low * high)
        if expected_label_accuracy(gaps, middle) > label_accuracy:
            low = middle
        else:
            high = middle
    return math.sqrt(low * high)


@dataclass(frozen=True)
class SimulationConfig:
    """How simulated annotators rank."""

    preference: str = "larger_shapes"  # a name in PREFERENCES or a dotted path to a callable
    temperature: float = 0.02  # Bradley-Terry noise on the preference scale; 0 = always by score, inf = at random
    seed: int = 0  # the annotators' noise; annotator i draws from seed + i
    rationale: bool = True  # write a one-line rationale with every ranking

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, int | float) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, not {self.temperature!r}")
        build_preference(self.preference)  # validated now, not mid-run

    def preference_fn(self) -> PreferenceFunction:
        return build_preference(self.preference)


def label_accuracy(
    scores: Sequence[Sequence[float]], *, temperature: float, annotators: int = 1, seed: int | None = None
) -> float:
    """How often simulated annotators' pairwise labels agree with the true preference: the ceiling of
    what their labels can teach a reward model about one pair.

    ``scores`` holds each prompt's images' true scores; every pair of a prompt's images whose scores
    differ counts. With ``seed`` None the exact expectation, the mean of sigmoid(|s_i - s_j| / T) (the
    pairwise marginal of :func:`noisy_ranking`); with a seed, the share of right labels in ``annotators``
    rankings of every prompt drawn as :func:`noisy_ranking` draws them (annotator i from seed + i).
    """
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    rngs = [np.random.default_rng(seed + i) for i in range(annotators)] if seed is not None else []
    right, pairs = 0.0, 0
    for row in scores:
        values = np.asarray(row, dtype=np.float64)
        orders = [noisy_ranking(values, temperature=temperature, rng=rng) for rng in rngs]
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                delta = values[i] - values[j]
                if delta == 0:
                    continue
                if seed is None:
                    right += 1.0 if temperature == 0 else float(1 / (1 + np.exp(-abs(delta) / temperature)))
                    pairs += 1
                    continue
                for order in orders:
                    right += (order.index(i) < order.index(j)) == (delta > 0)
                    pairs += 1
    return right / pairs if pairs else float("nan")
