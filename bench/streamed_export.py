"""Benchmark: the one-request streamed export of a project's annotations (time and peak memory).

    bash tests/services.sh nice .venv/bin/python bench/streamed_export.py [--tasks 1000 --annotators 1000]

Seeds one project on PostgreSQL with ``--tasks`` x ``--annotators`` submitted annotations (one per task
and annotator, four images a task; written with ``INSERT ... SELECT``, so seeding takes seconds, not
hours), then downloads ``GET /api/projects/<id>/annotations/export/`` (JSON Lines) through Django's
request handler in this process, reading the stream as a client would, while a thread samples this
process's resident memory. Prints rows, bytes, seconds, rows per second, and the resident memory
before and at its peak during the download (the target: under 200 MB peak for 1M annotations), then
checks the row count.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def seed_annotations(project, *, tasks: int, annotators: int, images: int = 4) -> int:  # noqa: ANN001
    """``tasks`` tasks of ``images`` external images (rows only, no files) and one submitted annotation per
    task and annotator, in a handful of SQL statements (PostgreSQL). Returns how many annotations."""
    import hashlib

    from django.contrib.auth import get_user_model
    from django.db import connection

    from annotate.models import Annotation, AnnotationTask, Prompt, TaskAssignment, TaskImage
    from generation.models import GeneratedImage, ImageOrigin

    user_model = get_user_model()
    prefix = f"bench-{project.pk}-"
    users = user_model.objects.bulk_create(
        [user_model(username=f"{prefix}{i}", password="!") for i in range(annotators)],  # noqa: S106 - unusable
        batch_size=5000)
    prompts = Prompt.objects.bulk_create([Prompt(project=project, text=f"caption {i}", text_sha256=f"{i:064d}")
                                          for i in range(tasks)], batch_size=5000)
    task_rows = AnnotationTask.objects.bulk_create(
        [AnnotationTask(project=project, prompt=prompt, position=i + 1, random_key=i, external_key=f"k{i}",
                        metadata={"row": i}) for i, prompt in enumerate(prompts)], batch_size=5000)
    image_rows = GeneratedImage.objects.bulk_create([
        GeneratedImage(origin=ImageOrigin.EXTERNAL, project=project, external_source="upload",
                       external_name=f"{t}-{j}.png", storage_key=f"external/bench/{t}-{j}.png",
                       sha256=hashlib.sha256(f"{project.pk}-{t}-{j}".encode()).hexdigest(), width=64, height=64,
                       size_bytes=100)
        for t in range(tasks) for j in range(images)], batch_size=5000)
    TaskImage.objects.bulk_create([TaskImage(task=task, image=image_rows[t * images + j], position=j)
                                   for t, task in enumerate(task_rows) for j in range(images)], batch_size=5000)
    a, r, ti = TaskAssignment._meta.db_table, Annotation._meta.db_table, TaskImage._meta.db_table
    user_ids = [u.pk for u in users] or list(user_model.objects.filter(username__startswith=prefix)
                                                .values_list("pk", flat=True))
    task_ids = [t.pk for t in task_rows]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {a} (task_id, project_id, annotator_id, status, lease_expires_at, skip_reason, "  # noqa: S608
            "created_at, updated_at, finished_at) SELECT t, %s, u, 'submitted', now(), '', now(), now(), now() "
            "FROM unnest(%s::bigint[]) AS t CROSS JOIN unnest(%s::integer[]) AS u",
            [project.pk, task_ids, user_ids])
        cursor.execute(
            f"INSERT INTO {r} (task_id, project_id, annotator_id, assignment_id, status, ranking, answers, "  # noqa: S608
            "rationale, duration_ms, idempotency_key, review_note, created_at, updated_at) "
            "SELECT x.task_id, x.project_id, x.annotator_id, x.id, 'submitted', k.ranking, '{}'::jsonb, "
            "'because', 1500, 'bench-' || x.id, '', now(), now() "
            f"FROM {a} x JOIN (SELECT task_id, jsonb_agg(jsonb_build_array(image_id::text) ORDER BY position) "
            f"AS ranking FROM {ti} WHERE task_id = ANY(%s) GROUP BY task_id) k ON k.task_id = x.task_id "
            "WHERE x.project_id = %s",
            [task_ids, project.pk])
        cursor.execute(f"ANALYZE {a}; ANALYZE {r}")
    return tasks * annotators


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--annotators", type=int, default=1000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import psutil
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    from django.test.runner import DiscoverRunner

    runner = DiscoverRunner(verbosity=0, interactive=False)
    old = runner.setup_databases()
    try:
        if connection.vendor != "postgresql":
            raise SystemExit("run it through tests/services.sh: the seeding needs PostgreSQL")
        from rest_framework.test import APIClient

        from projects.models import Project, ProjectMembership
        from projects.roles import Role
        from tests.factories import UserFactory

        engineer = UserFactory(username="bench-ml", role=Role.ML_ENGINEER)
        project = Project.objects.create(name="Streamed export bench")
        ProjectMembership.objects.create(project=project, user=engineer, role=Role.ML_ENGINEER)
        started = time.perf_counter()
        total = seed_annotations(project, tasks=args.tasks, annotators=args.annotators)
        print(f"seeded {total:,} annotations in {time.perf_counter() - started:.1f} s", flush=True)

        client = APIClient()
        client.force_authenticate(engineer)
        process = psutil.Process()
        baseline = process.memory_info().rss
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.02):
                peak = max(peak, process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        response = client.get(f"/api/projects/{project.pk}/annotations/export/")
        rows = size = 0
        for block in response.streaming_content:
            size += len(block)
            rows += block.count(b"\n")
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        load = os.getloadavg()
        print(f"rows {rows:,}  bytes {size:,}  seconds {seconds:.1f}  rows/s {rows / seconds:,.0f}")
        print(f"resident memory: {baseline / 2**20:.0f} MB before, {peak / 2**20:.0f} MB at the peak "
              f"(+{(peak - baseline) / 2**20:.0f} MB); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        assert rows == total, f"{rows} rows for {total} annotations"
        return 0
    finally:
        runner.teardown_databases(old)


if __name__ == "__main__":
    raise SystemExit(main())
