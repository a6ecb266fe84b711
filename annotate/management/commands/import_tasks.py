"""Import tasks with their candidate images from the shell, with a progress bar (the same service as the
browser and the API, run in this process: no worker needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotate.models import TaskImport
from annotate.workflow.imports import services as import_services
from annotate.workflow.imports.table import FORMATS
from core.exceptions import ApplicationError
from generation.models import JobStatus
from projects.access import user_can
from projects.models import Project


class Command(BaseCommand):
    help = ("Create tasks with images you already have: a CSV, JSONL or Parquet table (Pick-a-Pic's columns "
            "too) or a Hugging Face dataset folder, with images inside it, in a folder or in a zip.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("table", help="the table file, or a dataset folder (save_to_disk or Parquet files)")
        parser.add_argument("--project", type=int, required=True, help="project id")
        parser.add_argument("--user", required=True, help="username of an admin of the project")
        parser.add_argument("--images", help="a folder or a .zip the table's image names are in "
                                             "(default: the table's own folder)")
        parser.add_argument("--format", choices=FORMATS, help="default: from the file name")
        parser.add_argument("--name", default="", help="name of the prompt set (default: the file name)")
        parser.add_argument("--key-column", default="", help="the column of each task's own key")
        parser.add_argument("--deduplicate", action="store_true",
                            help="skip rows whose prompt is repeated in the table or already in the project")
        parser.add_argument("--dry-run", action="store_true", help="check every row and image; write nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            project = Project.objects.get(pk=options["project"])
            user = get_user_model().objects.get(username=options["user"])
        except (Project.DoesNotExist, get_user_model().DoesNotExist) as exc:
            raise CommandError(str(exc)) from None
        if not user_can(user=user, action="manage", project=project):
            raise CommandError(f"{user} may not import tasks into project {project.name!r}")
        images = Path(options["images"]) if options["images"] else None
        zip_file = images.open("rb") if images is not None and images.suffix.lower() == ".zip" else None
        try:
            task_import = import_services.task_import_create(
                project=project, user=user, name=options["name"], fmt=options["format"],
                dry_run=options["dry_run"], table_path=options["table"], local=True,
                options=import_services.ImportOptions(deduplicate=options["deduplicate"],
                                                      key_column=options["key_column"]),
                images_path=str(images) if images is not None and zip_file is None else "",
                images_zip=_named(zip_file) if zip_file is not None else None,
            )
        except ApplicationError as exc:
            raise CommandError(f"{exc.field or 'input'}: {exc.message}") from None
        finally:
            if zip_file is not None:
                zip_file.close()
        with tqdm(total=100, unit="%", desc=f"import {task_import.pk}") as bar:
            def progress(current: TaskImport) -> None:
                bar.set_postfix_str(current.phase, refresh=False)
                bar.update(max(0, round(current.progress * 100) - bar.n))

            result = import_services.task_import_start(task_import=task_import, inline=True, progress=progress)
            bar.update(100 - bar.n if result.status == JobStatus.SUCCEEDED else 0)
        self._report(result)

    def _report(self, result: TaskImport) -> None:
        report = result.report or {}
        for error in report.get("errors", []):
            where = f"line {error['line']}" if error["line"] else "table"
            column = f" [{error['column']}]" if error.get("column") else ""
            self.stderr.write(f"{where}{column}: {error['message']}")
        if result.status != JobStatus.SUCCEEDED:
            raise CommandError(result.error or f"import {result.pk} {result.status}")
        if result.dry_run:
            self.stdout.write(f"Dry run: {report.get('rows', 0)} rows and {report.get('images', 0)} images are fine; "
                              "nothing was written.")
        else:
            self.stdout.write(f"Imported {report.get('tasks', 0)} tasks ({report.get('new_images', 0)} new images) "
                              f"as prompt set {result.prompt_set_id}.")


def _named(handle: Any) -> File:
    return File(handle, name=Path(handle.name).name)
