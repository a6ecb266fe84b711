"""Reward-model scores in the annotation workflow: a typed plug-in that a higher layer registers.

Annotation sits below training, so it never imports the reward models. Four places of the workflow
use them all the same: the review page shows a reward model's stored scores beside each image and
queues scoring of the rest; a project may pre-sort its annotators' candidates by one reward model
(chosen in the project's settings; its scores order the task page, and new task images are queued
for scoring). ``rlhf`` implements :class:`RewardScores` and registers it in its ``AppConfig.ready()``
with :func:`register_reward_scores`; without one, the workflow offers no reward models
(:class:`NoRewardScores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from django.apps import apps

if TYPE_CHECKING:  # apps.py files import this module before the models may load: types only
    from django.db.models import QuerySet

    from projects.models import Project


class RewardScores(Protocol):
    """What the workflow asks of a reward-model layer. Versions are that layer's objects, with at least
    ``pk``, ``name`` and ``project`` (for the pages); ``user=None`` is trusted code."""

    def version_queryset(self) -> QuerySet[Any]:
        """Every version (the settings API validates ids against it)."""

    def versions_for(self, *, user: Any) -> list[Any]:
        """The versions ``user`` may score with, newest first."""

    def scores(self, *, version_id: int, image_ids: Sequence[Any]) -> dict[str, float]:
        """Stored scores ``{image id: score}`` of those images (unscored images are absent): one query."""

    def request_scoring(self, *, user: Any, version_id: int, image_ids: Sequence[str]) -> list[str]:
        """Queue scoring of the images ``version_id`` has not scored yet; returns their ids. ``user`` must
        be allowed to use the version (``ApplicationError`` on ``reward`` otherwise)."""

    def presort_version(self, *, project: Project) -> Any | None:
        """The version that pre-sorts ``project``'s candidates, or None."""

    def presort_set(self, *, project: Project, version_id: int | None, user: Any) -> None:
        """Pre-sort by ``version_id`` (None: stop). A new choice must be a version ``user`` may use
        (``ApplicationError`` on ``presort_reward_version``); keeping the current one needs no right."""

    def presort_scores(self, *, project: Project, image_ids: Sequence[Any]) -> dict[str, float]:
        """The pre-sort version's stored scores of those images (empty without a pre-sort): one query."""

    def task_images_added(self, *, project: Project, image_ids: Sequence[Any]) -> None:
        """New candidates joined a task of ``project``: queue their pre-sort scoring (on commit)."""


class NoRewardScores:
    """The workflow without a reward-model layer: nothing to score with, nothing pre-sorted."""

    def version_queryset(self) -> QuerySet[Any]:
        # Any empty queryset will do: every id "does not exist".
        return apps.get_model("annotate", "ProjectWorkflow").objects.none()

    def versions_for(self, *, user: Any) -> list[Any]:
        return []

    def scores(self, *, version_id: int, image_ids: Sequence[Any]) -> dict[str, float]:
        return {}

    def request_scoring(self, *, user: Any, version_id: int, image_ids: Sequence[str]) -> list[str]:
        return []

    def presort_version(self, *, project: Project) -> Any | None:
        return None

    def presort_set(self, *, project: Project, version_id: int | None, user: Any) -> None:
        return None

    def presort_scores(self, *, project: Project, image_ids: Sequence[Any]) -> dict[str, float]:
        return {}

    def task_images_added(self, *, project: Project, image_ids: Sequence[Any]) -> None:
        return None


_registered: dict[str, RewardScores] = {}


def register_reward_scores(provider: RewardScores) -> None:
    """Make ``provider`` the workflow's reward-model scores (a second registration replaces the first)."""
    _registered["provider"] = provider


def reward_scores() -> RewardScores:
    return _registered.get("provider") or NoRewardScores()
