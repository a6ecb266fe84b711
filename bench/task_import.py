"""Benchmark: importing tasks with their images from a zip (default 5,000 tasks x 4 images).

    bash tests/services.sh nice .venv/bin/python bench/task_import.py [--tasks 5000 --images 4 --side 256]

Makes ``--tasks x --images`` distinct JPEGs (``--side`` pixels square) in a zip and a CSV table naming
them, then runs the import the way ``manage.py import_tasks`` does (the same service as the API and the
worker, in this process) into a project on PostgreSQL with media on local disk. Prints the time to check
and store the images, the time of the one-transaction commit, the whole, tasks and images per second,
the peak resident memory, and the load average; then checks the rows and files it made.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_inputs(folder: Path, *, tasks: int, images: int, side: int) -> tuple[Path, Path, int]:
    """``tasks.csv`` and ``images.zip`` in ``folder``; returns them and the zip's size."""
    from PIL import Image, ImageDraw

    archive = folder / "images.zip"
    lines = ["key,prompt," + ",".join(f"image_{j}" for j in range(images))]
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as bundle:
        for t in range(tasks):
            names = []
            for j in range(images):
                n = t * images + j
                picture = Image.new("RGB", (side, side), (n % 251, (n // 251) % 251, (7 * j) % 251))
                ImageDraw.Draw(picture).rectangle((side // 4, side // 4, side // 2, side // 2),
                                                  fill=((n * 13) % 256, (n * 7) % 256, (n * 3) % 256))
                buffer = io.BytesIO()
                picture.save(buffer, format="JPEG", quality=85)
                name = f"set/{t:05d}-{j}.jpg"
                bundle.writestr(name, buffer.getvalue())
                names.append(name)
            lines.append(f"task-{t},a prompt number {t % 977}," + ",".join(names))
    table = folder / "tasks.csv"
    table.write_text("\n".join(lines) + "\n")
    return table, archive, archive.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--side", type=int, default=256)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    scratch = Path(tempfile.mkdtemp(prefix="pickwise-import-bench-"))
    os.environ["MEDIA_ROOT"] = str(scratch / "media")
    import django

    django.setup()
    import psutil
    from django.core.files import File
    from django.db import connection
    from django.test.runner import DiscoverRunner
    from django.test.utils import setup_test_environment

    setup_test_environment()
    runner = DiscoverRunner(verbosity=0, interactive=False)
    old = runner.setup_databases()
    try:
        if connection.vendor != "postgresql":
            raise SystemExit("run it through tests/services.sh (PostgreSQL)")
        from annotate.models import AnnotationTask, TaskImage, TaskImport
        from annotate.workflow.imports import services
        from generation.models import GeneratedImage
        from projects.models import Project, ProjectMembership
        from projects.roles import Role
        from tests.annotate.factories_workflow import set_workflow
        from tests.factories import UserFactory

        started = time.perf_counter()
        table, archive, zip_bytes = make_inputs(scratch, tasks=args.tasks, images=args.images, side=args.side)
        print(f"made {args.tasks * args.images:,} images ({zip_bytes / 2**20:.0f} MB zip) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        admin = UserFactory(username="bench-admin", role=Role.ADMIN)
        project = Project.objects.create(name="Import bench")
        ProjectMembership.objects.create(project=project, user=admin, role=Role.ADMIN)
        set_workflow(project, images_per_task=args.images)

        process = psutil.Process()
        baseline = peak = process.memory_info().rss
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.05):
                peak = max(peak, process.memory_info().rss)

        threading.Thread(target=sample, daemon=True).start()
        phases: dict[str, float] = {}

        def progress(current: TaskImport) -> None:
            if current.phase.startswith("Creating") and "commit" not in phases:
                phases["commit"] = time.perf_counter()

        started = time.perf_counter()
        with archive.open("rb") as handle:
            task_import = services.task_import_create(
                project=project, user=admin, table_path=str(table), local=True,
                images_zip=File(handle, name="images.zip"))
        result = services.task_import_start(task_import=task_import, inline=True, progress=progress)
        finished = time.perf_counter()
        done.set()
        assert result.status == "succeeded", (result.error, result.report.get("errors", [])[:3])
        total = finished - started
        commit = finished - phases.get("commit", finished)
        images = args.tasks * args.images
        load = os.getloadavg()
        print(f"tasks {args.tasks:,}  images {images:,}  check and store {total - commit:.1f} s  "
              f"commit {commit:.1f} s  total {total:.1f} s")
        print(f"{args.tasks / total:,.0f} tasks/s  {images / total:,.0f} images/s  "
              f"{zip_bytes / 2**20 / total:.1f} MB/s of zip")
        print(f"resident memory: {baseline / 2**20:.0f} MB before, {peak / 2**20:.0f} MB at the peak; "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
        assert AnnotationTask.objects.filter(project=project).count() == args.tasks
        assert TaskImage.objects.filter(task__project=project).count() == images
        assert GeneratedImage.objects.filter(project=project).count() == images
        stored = sum(1 for p in (scratch / "media" / "external").rglob("*") if p.is_file())
        assert stored == images, stored
        return 0
    finally:
        runner.teardown_databases(old)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
