"""Work a project's queue with simulated annotators (the same services the browser uses)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from core.exceptions import ApplicationError
from projects.models import Project
from rlhf.loop.simulate import annotators_simulate, simulated_annotators_ensure
from rlhf.preferences import PREFERENCES, SimulationConfig


class Command(BaseCommand):
    help = ("Simulated annotators work a project's queue: next task, generate, rank by a preference with "
            "Bradley-Terry noise, rationale, submit. --annotators K creates/uses sim-annotator-1..K; "
            "--users a,b names existing accounts.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--project", type=int, required=True, help="project id")
        parser.add_argument("--annotators", type=int, default=0, help="create/use K simulated accounts")
        parser.add_argument("--users", default="", help="comma-separated existing usernames instead")
        parser.add_argument("--prefix", default="sim-annotator", help="username prefix of simulated accounts")
        parser.add_argument("--preference", default="larger_shapes",
                            help=f"one of {', '.join(sorted(PREFERENCES))}, or a dotted path module:function")
        parser.add_argument("--temperature", type=float, default=0.02, help="Bradley-Terry noise (0 = none)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--max-annotations", type=int, default=None)
        parser.add_argument("--model-version", type=int, default=None, help="generate with this version id")

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(pk=options["project"]).first()
        if project is None:
            raise CommandError(f"No project {options['project']}")
        try:
            config = SimulationConfig(preference=options["preference"], temperature=options["temperature"],
                                      seed=options["seed"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        try:
            if options["users"]:
                names = [n.strip() for n in options["users"].split(",") if n.strip()]
                users = list(get_user_model().objects.filter(username__in=names))
                missing = sorted(set(names) - {u.username for u in users})
                if missing:
                    raise CommandError(f"No such user(s): {', '.join(missing)}")
            elif options["annotators"]:
                users = simulated_annotators_ensure(project=project, count=options["annotators"],
                                                    prefix=options["prefix"])
            else:
                raise CommandError("Give --annotators K or --users a,b.")
            report = annotators_simulate(
                project=project, users=users, config=config, max_annotations=options["max_annotations"],
                model_version_id=options["model_version"],
                on_progress=lambda n: self.stdout.write(f"\r{n} annotations", ending="") if n % 10 == 0 else None,
            )
        except ApplicationError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write("")
        self.stdout.write(self.style.SUCCESS(
            f"{report.annotations} annotations ({report.generation_jobs} generation jobs) in "
            f"{report.seconds:.1f} s: " + ", ".join(f"{u} {n}" for u, n in report.per_annotator.items())
        ))
