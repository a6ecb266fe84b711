"""Export a project's rankings from the shell, with a progress bar (same services as the browser)."""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from core.exceptions import ApplicationError
from projects.access import user_can
from projects.models import Project
from rlhf.datasets import services as export_services
from rlhf.models import PreferenceExport, RunStatus


class Command(BaseCommand):
    help = "Export a project's preferences (e.g. --format pickapic --tie-policy soft) and print where they are."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--project", type=int, required=True, help="project id")
        parser.add_argument("--user", required=True, help="username of an ML engineer or admin of the project")
        parser.add_argument("--format", required=True, choices=PreferenceExport.Format.values)
        parser.add_argument("--tie-policy", default="soft", choices=PreferenceExport.TiePolicy.values)
        parser.add_argument("--weight-per-prompt", action="store_true")
        parser.add_argument("--no-images", action="store_true", help="paths only, no image bytes")
        parser.add_argument("--min-agreement", type=float)
        parser.add_argument("--gold", default="exclude", choices=["exclude", "include", "only"])
        parser.add_argument("--date-from")
        parser.add_argument("--date-to")
        parser.add_argument("--split-seed", type=int, default=0)
        parser.add_argument("--destination", default="server", choices=export_services.DESTINATIONS,
                            help="object_store: stream into the bucket of EXPORT_STORAGE_URL")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            project = Project.objects.get(pk=options["project"])
            user = get_user_model().objects.get(username=options["user"])
        except (Project.DoesNotExist, get_user_model().DoesNotExist) as exc:
            raise CommandError(str(exc)) from None
        if not user_can(user=user, action="export", project=project):
            raise CommandError(f"{user} may not export from project {project.name!r}")
        try:
            request = export_services.export_request_parse({
                "format": options["format"], "tie_policy": options["tie_policy"],
                "weight_per_prompt": options["weight_per_prompt"], "include_images": not options["no_images"],
                "min_agreement": options["min_agreement"], "gold": options["gold"],
                "date_from": options["date_from"], "date_to": options["date_to"],
                "split_seed": options["split_seed"], "destination": options["destination"],
            })
        except ApplicationError as exc:
            raise CommandError(f"--{(exc.field or '').replace('_', '-')}: {exc.message}") from None
        export = PreferenceExport.objects.create(
            project=project, created_by=user, format=request.format, tie_policy=request.tie_policy,
            weight_per_prompt=request.weight_per_prompt, include_images=request.include_images,
            filters=request.filters.as_json(),
            storage_url=settings.EXPORT_STORAGE_URL if request.destination == "object_store" else "",
        )
        # Build in this process (no worker needed) while a thread shows the stored progress.
        done = threading.Event()
        errors: list[BaseException] = []

        def build() -> None:
            try:
                export_services.preference_export_build(export_id=export.pk)
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                done.set()

        worker = threading.Thread(target=build, daemon=True)
        worker.start()
        with tqdm(total=100, unit="%", desc=f"export {export.pk}") as bar:
            while not done.wait(0.5):
                export.refresh_from_db(fields=["progress"])
                bar.update(int(export.progress * 100) - bar.n)
            bar.update(100 - bar.n)
        worker.join()
        export.refresh_from_db()
        if errors or export.status != RunStatus.SUCCEEDED:
            raise CommandError(f"export {export.pk} {export.status}: {export.error or errors}")
        where = export_services.export_data_url(export) or export_services.export_directory(export)
        self.stdout.write(self.style.SUCCESS(
            f"export {export.pk}: {export.counts} → {where}"
        ))
