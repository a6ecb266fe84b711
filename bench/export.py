"""Export benchmark: N pairs (paths only) from PostgreSQL to Pick-a-Pic Parquet; wall time and peak memory.

Run through the test services so PostgreSQL is up:

    bash tests/services.sh .venv/bin/python bench/export.py --pairs 10000 100000 1000000
    bash tests/services.sh .venv/bin/python bench/export.py --pairs 100000 --destination object_store

``--destination object_store`` streams the export into a bucket of moto's S3 server on loopback (started
here, in the parent process, so the objects' memory is not the export's).

Each size gets a fresh database (``pickwise_bench_<n>``) seeded with bulk inserts: rankings of
four images (six pairs each) by five annotators per task. The export itself runs in a child
process so that its peak RSS is the export's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

IMAGES_PER_TASK = 4
OVERLAP = 5
PAIRS_PER_RANKING = IMAGES_PER_TASK * (IMAGES_PER_TASK - 1) // 2


def database_url(pairs: int) -> str:
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    return f"{base}/pickwise_bench_{pairs}"


def seed(pairs: int) -> None:
    """Create and fill the bench database (runs in a child process with DATABASE_URL set)."""
    import django

    django.setup()
    import uuid

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import transaction
    from django.utils import timezone
    from tqdm import tqdm

    from annotate.models import Annotation, AnnotationTask, ProjectWorkflow, Prompt, TaskAssignment, TaskImage
    from generation.models import GeneratedImage, GenerationJob, ModelVersion
    from projects.models import Project

    call_command("migrate", verbosity=0)
    user_model = get_user_model()
    annotators = [user_model.objects.create(username=f"bench{i}") for i in range(OVERLAP)]
    project = Project.objects.create(name="bench")
    ProjectWorkflow.objects.create(project=project, overlap=OVERLAP, images_per_task=IMAGES_PER_TASK)
    version = ModelVersion.objects.create(name="bench-model", source="bench/none", dtype="float32")
    tasks_needed = -(-pairs // (PAIRS_PER_RANKING * OVERLAP))
    now = timezone.now()
    chunk = 2000
    for start in tqdm(range(0, tasks_needed, chunk), desc=f"seeding {pairs} pairs", unit="tasks",
                      unit_scale=chunk):
        count = min(chunk, tasks_needed - start)
        with transaction.atomic():
            prompts = Prompt.objects.bulk_create(
                Prompt(project=project, text=f"bench prompt {start + i}", text_sha256=uuid.uuid4().hex * 2)
                for i in range(count))
            tasks = AnnotationTask.objects.bulk_create(
                AnnotationTask(project=project, prompt=p, position=start + i, random_key=i, taken_count=OVERLAP,
                               is_open=False) for i, p in enumerate(prompts))
            jobs = GenerationJob.objects.bulk_create(
                GenerationJob(project=project, model_version=version, prompt=p.text, params={}, params_hash="0" * 64,
                              num_images=IMAGES_PER_TASK, seeds=list(range(IMAGES_PER_TASK)), status="succeeded")
                for p in prompts)
            images = GeneratedImage.objects.bulk_create(
                GeneratedImage(job=job, index=k, model_version=version, prompt=job.prompt, seed=k, params={},
                               storage_key=f"bench/{job.pk}/{k}.png", sha256="0" * 64, width=64, height=64,
                               size_bytes=1, generation_seconds=0.0)
                for job in jobs for k in range(IMAGES_PER_TASK))
            TaskImage.objects.bulk_create(
                TaskImage(task=task, image=images[i * IMAGES_PER_TASK + k], position=k)
                for i, task in enumerate(tasks) for k in range(IMAGES_PER_TASK))
            assignments = TaskAssignment.objects.bulk_create(
                TaskAssignment(task=task, project=project, annotator=user, status="submitted",
                               lease_expires_at=now, finished_at=now)
                for task in tasks for user in annotators)
            task_images = {task.pk: images[i * IMAGES_PER_TASK:(i + 1) * IMAGES_PER_TASK]
                           for i, task in enumerate(tasks)}
            rater = {user.pk: r for r, user in enumerate(annotators)}
            Annotation.objects.bulk_create(
                Annotation(task_id=a.task_id, project=project, annotator_id=a.annotator_id, assignment=a,
                           ranking=_ranking(task_images[a.task_id], rater[a.annotator_id]),
                           idempotency_key=f"bench-{a.pk}")
                for a in assignments)


def _ranking(images: list, rater: int) -> list[list[str]]:
    """Annotators mostly agree: each rotates the order by its index modulo 2."""
    order = images[rater % 2:] + images[:rater % 2]
    return [[str(image.pk)] for image in order]


def export(pairs: int) -> dict[str, float]:
    """Build one export in this process and report wall time and peak RSS (child process)."""
    import resource

    import django

    django.setup()
    from django.conf import settings

    from projects.models import Project
    from rlhf.datasets.services import export_request_parse, preference_export_build
    from rlhf.models import PreferenceExport

    project = Project.objects.get(name="bench")
    request = export_request_parse({"format": "pickapic", "include_images": False,
                                    "destination": os.environ.get("BENCH_DESTINATION", "server")})
    export_row = PreferenceExport.objects.create(
        project=project, format=request.format, include_images=False, tie_policy=request.tie_policy,
        filters=request.filters.as_json(),
        storage_url=settings.EXPORT_STORAGE_URL if request.destination == "object_store" else "")
    started = time.perf_counter()
    done = preference_export_build(export_id=export_row.pk)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"pairs": done.counts["pairs"], "seconds": seconds, "peak_rss_mb": peak_mb, "status": done.status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--child", choices=["seed", "export"])
    parser.add_argument("--size", type=int)
    parser.add_argument("--destination", default="server", choices=["server", "object_store"])
    args = parser.parse_args()
    if args.child == "seed":
        seed(args.size)
        return
    if args.child == "export":
        print(json.dumps(export(args.size)))
        return
    admin_url = os.environ["DATABASE_URL"]
    scratch = Path(tempfile.mkdtemp(prefix="pickwise-bench-export-"))
    store_env = _object_store() if args.destination == "object_store" else {}
    rows = []
    for pairs in args.pairs:
        name = f"pickwise_bench_{pairs}"
        with_db = dict(os.environ, DATABASE_URL=database_url(pairs), PICKWISE_EXPORT_DIR=str(scratch / name),
                       BENCH_DESTINATION=args.destination, **store_env)
        _psql(admin_url, f"DROP DATABASE IF EXISTS {name}")
        _psql(admin_url, f"CREATE DATABASE {name}")
        subprocess.run([sys.executable, __file__, "--child", "seed", "--size", str(pairs)], env=with_db, check=True)
        result = subprocess.run([sys.executable, __file__, "--child", "export", "--size", str(pairs)], env=with_db,
                                check=True, capture_output=True, text=True)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['pairs']:>9} pairs  {row['seconds']:7.1f} s  {row['pairs'] / row['seconds']:9.0f} pairs/s  "
              f"peak RSS {row['peak_rss_mb']:6.0f} MB  ({row['status']})", flush=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        ratio = (last["seconds"] / first["seconds"]) / (last["pairs"] / first["pairs"])
        print(f"time scaling vs linear from {first['pairs']} to {last['pairs']} pairs: {ratio:.2f}x (1.00 = linear)")


def _object_store() -> dict[str, str]:
    """moto's S3 server on loopback with a bucket, as the settings of an export's object store."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket="bench-exports")  # noqa: S106
    return {"EXPORT_STORAGE_URL": "s3://bench-exports/exports", "EXPORT_S3_ENDPOINT_URL": endpoint,
            "EXPORT_S3_REGION_NAME": "us-east-1", "EXPORT_S3_ACCESS_KEY_ID": "bench",
            "EXPORT_S3_SECRET_ACCESS_KEY": "bench"}


def _psql(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgres://", "postgresql://"), autocommit=True) as connection:
        connection.execute(sql)


if __name__ == "__main__":
    main()
