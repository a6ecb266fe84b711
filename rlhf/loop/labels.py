"""A round's label noise: the annotators' temperature calibrated to a target label accuracy on the round's own
images, and what the round's rankings then show (their label accuracy and inter-annotator agreement).

The *label accuracy* of a ranking is the share of the image pairs it orders that it orders as the
preference does (pairs the preference scores alike have no right answer and are left out;
:func:`rlhf.loop.stats.ranking_label_counts`). Agreement is the mean pairwise agreement between two
annotators' rankings of one task (:func:`annotate.agreement.pairwise_agreement`), over the round's tasks
and every pair of their annotators, so a later round's figure is its own, not the project's so far.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from django.core.files.storage import default_storage
from PIL import Image

from annotate.models import Annotation, AnnotationStatus, TaskImage
from annotate.workflow.agreement import pairwise_agreement
from rlhf.loop.stats import ranking_label_counts
from rlhf.preferences import build_preference, temperature_for_label_accuracy

TaskScores = Mapping[int, Mapping[str, float]]  # task id -> image id (as rankings name it) -> preference score


def _load_image(storage_key: str) -> Image.Image:
    with default_storage.open(storage_key, "rb") as handle:
        image = Image.open(handle)
        image.load()
    return image.convert("RGB")


def task_image_scores(*, task_ids: Iterable[int], preference: str) -> dict[int, dict[str, float]]:
    """Every image of the tasks scored by the preference for its task's prompt (one query for the images)."""
    fn = build_preference(preference)
    rows = (TaskImage.objects.filter(task_id__in=list(task_ids)).order_by("task_id", "position")
            .values_list("task_id", "image_id", "image__storage_key", "task__prompt__text"))
    scores: dict[int, dict[str, float]] = {}
    for task_id, image_id, storage_key, prompt in rows:
        scores.setdefault(task_id, {})[str(image_id)] = float(fn(_load_image(storage_key), prompt))
    return scores


def candidate_differences(scores: TaskScores) -> list[float]:
    """The score difference of every pair of images that share a task: the pairs annotators rank."""
    return [a - b for by_image in scores.values() for a, b in combinations(by_image.values(), 2)]


def calibrated_temperature(scores: TaskScores, label_accuracy: float) -> float:
    """The temperature at which the annotators' labels of these tasks agree with the preference on
    ``label_accuracy`` of the pairs, in expectation (``math.inf`` at 0.5: labels of pure noise)."""
    try:
        return temperature_for_label_accuracy(candidate_differences(scores), label_accuracy)
    except ValueError as exc:
        raise ValueError(f"cannot calibrate the annotators to label accuracy {label_accuracy}: {exc}") from None


@dataclass(frozen=True)
class LabelFigures:
    label_accuracy: float | None  # share of judged pairs ranked as the preference ranks them
    judged_pairs: int  # pairs the rankings order whose scores differ
    agreement: float | None  # mean pairwise agreement between two annotators of a task

    def as_stats(self) -> dict[str, Any]:
        """Rounded as a round's stats keep them (and people read them)."""
        return {"label_accuracy": None if self.label_accuracy is None else round(self.label_accuracy, 4),
                "label_pairs": self.judged_pairs,
                "agreement": None if self.agreement is None else round(self.agreement, 4)}


def label_figures(*, task_ids: Iterable[int], scores: TaskScores) -> LabelFigures:
    """Label accuracy and agreement of the submitted rankings of these tasks."""
    rankings: dict[int, list[Any]] = {}
    for task_id, ranking in (Annotation.objects.filter(task_id__in=list(task_ids),
                                                       status=AnnotationStatus.SUBMITTED)
                             .order_by("task_id", "annotator_id").values_list("task_id", "ranking")):
        rankings.setdefault(task_id, []).append(ranking)
    right = judged = 0
    agreements: list[float] = []
    for task_id, task_rankings in rankings.items():
        for ranking in task_rankings:
            counts = ranking_label_counts(ranking, scores.get(task_id, {}))
            right, judged = right + counts[0], judged + counts[1]
        for a, b in combinations(task_rankings, 2):
            value = pairwise_agreement(a, b)
            if value is not None:
                agreements.append(value)
    return LabelFigures(label_accuracy=right / judged if judged else None, judged_pairs=judged,
                        agreement=sum(agreements) / len(agreements) if agreements else None)
