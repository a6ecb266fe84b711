from __future__ import annotations

from django.apps import AppConfig

from annotate.workflow.scoring import register_reward_scores


class RlhfConfig(AppConfig):
    name = "rlhf"
    verbose_name = "Preferences and training"

    def ready(self) -> None:
        # Both need the models, which load only after apps.py: imported here.
        from rlhf import tasks  # noqa: F401 - registers the Celery tasks
        from rlhf.runs.scoring import WorkflowRewardScores

        register_reward_scores(WorkflowRewardScores())
