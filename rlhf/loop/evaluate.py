"""A model version against a baseline (its parent by default) on held-out prompts with fixed seeds.

Both versions render every prompt x seed with the same generation parameters; each pair of images
(same prompt, same seed) is scored by the preference function (or a reward model), judged by the
shapes-world judge when the prompts are shapes captions, and compared: the paired win rate with its
Wilson 95% interval says how often the version beats the baseline on the preference, and the mean paired
change with its t interval how far it moved (a version that shifts every image a hair wins most pairs).
Beside them: each version's mean score (t interval), the change relative to the baseline's mean and the
standardised effect size (Cohen's d_av), both with paired-bootstrap intervals.

Every interval is over the n held-out (caption, seed) pairs of one evaluation: it covers drawing those
pairs from the shapes world's captions, for the versions as trained. It does not cover how the versions
came to be (a round's captions, images, labels and training), which only other rounds show.
:func:`evaluation_captions` draws another held-out set for each ``eval_seed``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from PIL import Image

from core.exceptions import ApplicationError
from generation import inference, worker
from generation.models import ModelVersion
from generation.shapes.judge import judge
from generation.shapes.world import HELD_OUT_SEED, held_out_captions, parse_caption, prompt_captions
from projects.models import Project
from rlhf.loop import stats
from rlhf.models import RunStatus, VersionEvaluation
from rlhf.preferences import build_preference
from rlhf.training.rewards import build_reward


def evaluation_captions(n: int, *, eval_seed: int = 0) -> list[str]:
    """``n`` held-out captions of draw ``eval_seed``: 0 is :func:`held_out_captions`, every other seed another
    draw from the same stream (far from the seeds rounds and training runs draw their prompts with)."""
    if eval_seed < 0:
        raise ValueError(f"eval_seed must be >= 0, not {eval_seed}")
    return held_out_captions(n) if eval_seed == 0 else prompt_captions(n, seed=HELD_OUT_SEED + eval_seed)


class RenderMemo:
    """This process's latest renders, so that an evaluation whose side another evaluation rendered already
    takes those images (a round's input version is the last round's new version, on the same captions and
    seeds; the base is rendered once for every round against it). Keyed by everything that decides the
    pixels (the weights' spec, the resolved params, prompts, seeds and batch size: sampling is deterministic
    given them); the oldest renders go first once the images kept exceed ``max_pixels``."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self._renders: OrderedDict[Hashable, list[Image.Image]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _pixels(images: Sequence[Image.Image]) -> int:
        return sum(image.width * image.height for image in images)

    def get(self, key: Hashable) -> list[Image.Image] | None:
        with self._lock:
            images = self._renders.get(key)
            if images is None:
                return None
            self._renders.move_to_end(key)
            return list(images)

    def put(self, key: Hashable, images: Sequence[Image.Image]) -> None:
        if self._pixels(images) > self.max_pixels:  # one render over the budget alone is not kept
            return
        with self._lock:
            self._renders[key] = list(images)
            self._renders.move_to_end(key)
            while sum(map(self._pixels, self._renders.values())) > self.max_pixels:
                self._renders.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._renders.clear()

    def __len__(self) -> int:
        return len(self._renders)


# 32 Mpx: about 96 MB of RGB, e.g. 8,192 images of the shapes model (64 px) or 128 at 512 px.
RENDERS = RenderMemo(max_pixels=32 * 1024 * 1024)


def render(version: ModelVersion, prompts: Sequence[str], seeds: Sequence[int], *,
           params: dict[str, Any] | None = None, batch: int = 8) -> list[Image.Image]:
    """Every prompt x seed (prompt-major) by ``version`` with its default params (plus ``params``); a render
    this process made already with the same weights, params, prompts, seeds and batch comes from ``RENDERS``."""
    cache = worker.pipeline_cache()
    spec = worker.spec_for(version, device_type=cache.device.type)
    resolved = inference.GenerationParams.from_dict({**version.default_params().to_dict(), **(params or {})})
    key = (spec, resolved, tuple(prompts), tuple(seeds), batch)
    kept = RENDERS.get(key)
    if kept is not None:
        return kept
    loaded = cache.get(spec)
    requests = [inference.GenerationRequest(prompt=p, seeds=list(seeds), params=resolved, spec=spec)
                for p in prompts]
    rows = inference.generate_batch(loaded, requests, max_batch=batch)
    images = [generated.image for row in rows for generated in row]
    RENDERS.put(key, images)
    return images


def _verdicts(images: Sequence[Image.Image], captions: Sequence[str]) -> list[bool] | None:
    """The shapes-world judge's overall verdict on each image, or None when the captions are not the world's."""
    try:
        for caption in set(captions):
            parse_caption(caption)
    except ValueError:
        return None  # not shapes-world captions: the judge does not apply
    return [judge(image, caption).overall for image, caption in zip(images, captions, strict=True)]


@dataclass(frozen=True)
class EvaluationResult:
    n: int
    score_name: str
    score_version: float
    score_baseline: float
    win: stats.WinRate
    score_change: stats.MeanDifference
    version_mean: stats.Estimate  # the version's mean score with its t interval
    baseline_mean: stats.Estimate
    relative_change: stats.Estimate | None  # the change over |the baseline's mean| (None at a mean of 0)
    effect_size: stats.Estimate | None  # Cohen's d_av of the paired scores (None when neither varies)
    adherence_version: float | None
    adherence_baseline: float | None
    adherence_change: stats.MeanDifference | None  # in the judge's pass rate, pair by pair
    fixed: int | None  # pairs the version passes and the baseline fails
    broken: int | None  # and the other way round

    def as_dict(self) -> dict[str, Any]:
        adherence = self.adherence_change
        return {"n": self.n, "score_name": self.score_name, "score_version": self.score_version,
                "score_baseline": self.score_baseline, "score_delta": self.score_change.mean,
                "score_delta_interval": [self.score_change.low, self.score_change.high],
                "score_version_interval": [self.version_mean.low, self.version_mean.high],
                "score_baseline_interval": [self.baseline_mean.low, self.baseline_mean.high],
                **_estimate("score_relative", self.relative_change),
                **_estimate("score_effect_size", self.effect_size),
                "win_rate": self.win.as_dict(), "adherence_version": self.adherence_version,
                "adherence_baseline": self.adherence_baseline,
                "adherence_delta": None if adherence is None else adherence.mean,
                "adherence_delta_interval": None if adherence is None else [adherence.low, adherence.high],
                "adherence_fixed": self.fixed, "adherence_broken": self.broken}


def _estimate(key: str, estimate: stats.Estimate | None) -> dict[str, Any]:
    if estimate is None:
        return {key: None, f"{key}_interval": None}
    return {key: estimate.value, f"{key}_interval": [estimate.low, estimate.high]}


def compare(new: Sequence[Image.Image], old: Sequence[Image.Image], captions: Sequence[str], *,
            scorer: Any, score_name: str) -> EvaluationResult:
    """Paired comparison of two image lists (same captions and seeds, in the same order)."""
    new_scores = np.asarray(scorer(list(new), list(captions)), dtype=float)
    old_scores = np.asarray(scorer(list(old), list(captions)), dtype=float)
    new_ok, old_ok = _verdicts(new, captions), _verdicts(old, captions)
    adherence: dict[str, Any] = dict.fromkeys(
        ("adherence_version", "adherence_baseline", "adherence_change", "fixed", "broken"))
    if new_ok is not None and old_ok is not None:
        adherence = {"adherence_version": float(np.mean(new_ok)), "adherence_baseline": float(np.mean(old_ok)),
                     "adherence_change": stats.paired_difference(new_ok, old_ok),
                     "fixed": sum(a and not b for a, b in zip(new_ok, old_ok, strict=True)),
                     "broken": sum(b and not a for a, b in zip(new_ok, old_ok, strict=True))}
    return EvaluationResult(
        n=len(captions), score_name=score_name, score_version=float(new_scores.mean()),
        score_baseline=float(old_scores.mean()), win=stats.paired_win_rate(new_scores, old_scores),
        score_change=stats.paired_difference(new_scores, old_scores),
        version_mean=stats.mean_interval(new_scores), baseline_mean=stats.mean_interval(old_scores),
        relative_change=stats.relative_change(new_scores, old_scores),
        effect_size=stats.standardised_difference(new_scores, old_scores), **adherence,
    )


def scorer_for(*, preference: str = "", reward_path: str = "") -> tuple[Any, str]:
    """A batch scorer ``(images, prompts) -> scores``: a preference function, or a reward model's scores."""
    if reward_path:
        return build_reward("reward_model", reward_path), "reward model"
    fn = build_preference(preference)
    return (lambda images, prompts: [float(fn(i, p)) for i, p in zip(images, prompts, strict=True)]), preference


SAMPLE_SIDES = ("version", "baseline")


def evaluation_sample_key(evaluation_id: int, side: str, index: int) -> str:
    """Storage key of sample ``index`` (the ``index``-th caption x seed pair) of one side of an evaluation."""
    if side not in SAMPLE_SIDES:
        raise ValueError(f"side must be one of {list(SAMPLE_SIDES)}, not {side!r}")
    return f"evaluations/{evaluation_id}/{side}-{index}.png"


def _keep_samples(evaluation_id: int, pairs: Sequence[tuple[str, int]], new: Sequence[Image.Image],
                  old: Sequence[Image.Image], count: int) -> list[dict[str, Any]]:
    """Store the first ``count`` pairs' images of both versions (deterministic keys: a re-run overwrites)."""
    samples = []
    for index, (caption, seed) in enumerate(pairs[:count]):
        for side, images in (("version", new), ("baseline", old)):
            key = evaluation_sample_key(evaluation_id, side, index)
            if default_storage.exists(key):
                default_storage.delete(key)
            default_storage.save(key, ContentFile(inference.image_to_png_bytes(images[index])))
        samples.append({"index": index, "prompt": caption, "seed": seed})
    return samples


@transaction.atomic
def _save(evaluation_id: int, **fields: Any) -> None:
    VersionEvaluation.objects.filter(pk=evaluation_id).update(**fields, updated_at=timezone.now())


def version_evaluation_run(
    *, version: ModelVersion, user: User | None, baseline: ModelVersion | None = None, project: Project | None = None,
    preference: str = "larger_shapes", reward_version: Any = None, prompts: Sequence[str] | None = None,
    n_prompts: int = 64, seeds: Sequence[int] = (0,), params: dict[str, Any] | None = None, samples: int = 0,
) -> VersionEvaluation:
    """Evaluate ``version`` against ``baseline`` (its parent by default) in this process; returns the row.

    ``samples``: keep the images of the first this many (caption, seed) pairs of both versions in storage
    (:func:`evaluation_sample_key`), listed in the results' ``samples`` (the rounds' side-by-side grid)."""
    if samples < 0:
        raise ApplicationError(f"samples must be >= 0, not {samples}", field="samples")
    baseline = baseline or version.parent
    if baseline is None:
        raise ApplicationError(f"{version.name} has no parent; name a baseline version.", field="baseline")
    try:
        scorer, score_name = scorer_for(preference=preference if reward_version is None else "",
                                        reward_path=reward_version.path if reward_version is not None else "")
    except ValueError as exc:
        raise ApplicationError(str(exc), field="preference") from None
    captions = list(prompts) if prompts else held_out_captions(n_prompts)
    config = {"preference": score_name if reward_version is None else f"reward_version:{reward_version.pk}",
              "prompts": captions, "seeds": list(seeds), "params": params or {}}
    evaluation = VersionEvaluation.objects.create(version=version, baseline=baseline, project=project,
                                                  created_by=user, config=config, status=RunStatus.RUNNING)
    try:
        pairs = [c for c in captions for _ in seeds]
        new = render(version, captions, seeds, params=params)
        old = render(baseline, captions, seeds, params=params)
        result = compare(new, old, pairs, scorer=scorer, score_name=score_name)
        kept = _keep_samples(evaluation.pk, [(c, s) for c in captions for s in seeds], new, old, samples)
    except Exception as exc:
        _save(evaluation.pk, status=RunStatus.FAILED, error=str(exc)[:2000], finished_at=timezone.now())
        raise
    _save(evaluation.pk, status=RunStatus.SUCCEEDED, results={**result.as_dict(), "samples": kept},
          finished_at=timezone.now())
    evaluation.refresh_from_db()
    return evaluation
