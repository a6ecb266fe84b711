"""Evaluate a model version against its parent (or --baseline) on held-out shapes captions, fixed seeds."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from core.exceptions import ApplicationError
from generation.models import ModelVersion
from rlhf.loop.evaluate import version_evaluation_run
from rlhf.models import RewardModelVersion


class Command(BaseCommand):
    help = ("Paired evaluation of a version against its parent on held-out prompts with fixed seeds: preference "
            "(or reward-model) score, shapes-judge adherence, win rate with a 95% interval, and the mean paired "
            "changes with theirs.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("version", help="model version name")
        parser.add_argument("--baseline", default="", help="baseline version name (default: the parent)")
        parser.add_argument("--preference", default="larger_shapes")
        parser.add_argument("--reward-version", type=int, default=None, help="score with a reward model instead")
        parser.add_argument("--prompts", type=int, default=64, help="held-out captions")
        parser.add_argument("--seeds", default="0", help="comma-separated seeds")

    def handle(self, *args: Any, **options: Any) -> None:
        version = ModelVersion.objects.filter(name=options["version"]).first()
        baseline = ModelVersion.objects.filter(name=options["baseline"]).first() if options["baseline"] else None
        if version is None or (options["baseline"] and baseline is None):
            raise CommandError("Unknown model version.")
        reward = None
        if options["reward_version"]:
            reward = RewardModelVersion.objects.filter(pk=options["reward_version"]).first()
            if reward is None:
                raise CommandError("Unknown reward version.")
        try:
            evaluation = version_evaluation_run(
                version=version, baseline=baseline, user=None, preference=options["preference"],
                reward_version=reward, n_prompts=options["prompts"],
                seeds=[int(s) for s in options["seeds"].split(",") if s.strip()])
        except (ValueError, ApplicationError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(json.dumps({"evaluation": evaluation.pk, **evaluation.results}, indent=2))
