"""Run one round of a project's loop in this process (generation, simulated annotation, export,
optional reward model, fine-tune, evaluation) and make its new version the current one."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from core.exceptions import ApplicationError
from generation.models import ModelVersion
from projects.models import Project
from rlhf.loop.rounds import RoundConfig, round_run


class Command(BaseCommand):
    help = "Run the next round of a project's loop (blocking; the same services as the product)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--project", type=int, required=True)
        parser.add_argument("--user", required=True, help="username the round acts as (a project admin)")
        parser.add_argument("--start-version", default="", help="model version name for the first round")
        parser.add_argument("--prompts", type=int, default=200)
        parser.add_argument("--images", type=int, default=4)
        parser.add_argument("--annotators", type=int, default=3)
        parser.add_argument("--preference", default="larger_shapes")
        parser.add_argument("--temperature", type=float, default=0.02,
                            help="the annotators' Bradley-Terry noise, in the preference's score units")
        parser.add_argument("--label-accuracy", type=float, default=None,
                            help="or the share of their pairwise labels that agree with the preference (0.5-1), "
                                 "calibrated on the round's images; replaces --temperature")
        parser.add_argument("--method", default="dpo", choices=["dpo", "ddpo"])
        parser.add_argument("--reward-model", action="store_true", help="train a reward model (DDPO needs it)")
        parser.add_argument("--hyperparameters", default="{}", help="fine-tune overrides as JSON")
        parser.add_argument("--reward-hyperparameters", default="{}", help="reward-model overrides as JSON")
        parser.add_argument("--eval-prompts", type=int, default=64)

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(pk=options["project"]).first()
        user = get_user_model().objects.filter(username=options["user"]).first()
        if project is None or user is None:
            raise CommandError("Unknown project or user.")
        start = None
        if options["start_version"]:
            start = ModelVersion.objects.filter(name=options["start_version"]).first()
            if start is None:
                raise CommandError(f"No model version {options['start_version']!r}")
        try:
            config = RoundConfig(
                prompts=options["prompts"], images_per_prompt=options["images"], annotators=options["annotators"],
                preference=options["preference"], temperature=options["temperature"],
                label_accuracy=options["label_accuracy"], method=options["method"],
                reward_model=options["reward_model"], hyperparameters=json.loads(options["hyperparameters"]),
                reward_hyperparameters=json.loads(options["reward_hyperparameters"]),
                eval_prompts=options["eval_prompts"],
            )
            loop_round = round_run(project=project, user=user, config=config, start_version=start,
                                   log=self.stdout.write)
        except (ValueError, ApplicationError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"Round {loop_round.number}: {loop_round.output_version} "
                                             + json.dumps(loop_round.stats, default=str)))
