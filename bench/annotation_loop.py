"""Benchmark: the annotator loop through the API under gunicorn on PostgreSQL.

    bash tests/services.sh .venv/bin/python bench/annotation_loop.py [--seconds 60] [--workers 5]

Seeds a project with ``--tasks`` tasks of ``--images`` pre-generated images each and overlap
``--overlap``, and ``--annotators`` annotators with API tokens, and ANALYZEs the bulk load;
starts gunicorn on the test database; then every annotator loops with no think time:
``POST tasks/next/`` once, then ``POST tasks/<id>/submit/`` with a full ranking, which answers with the
next task (one round trip per annotation). With ``--rate R`` the annotators instead submit on a fixed
schedule that offers R annotations/s in all (open loop: a submit that starts late because the server fell
behind counts its wait in its latency, so a slow server cannot hide its queue). No think time measures the
most the server can take, where latency is all queueing; a rate measures latency at a given load. Prints throughput
(annotations per second), p50/p95/p99 latency per operation and the SQL statements each
request ran (counted inside the gunicorn worker by a Django execute wrapper; the
transaction's BEGIN/COMMIT, issued by the driver, and Django's once-per-request connection
health check are not among them), then checks the data: no task above k, nobody twice on a
task, exactly the acknowledged rankings stored.

Targets (issue 4): >= 110 annotations/s, p99 < 200 ms per operation, <= 8 SQL statements per
operation, not growing with images, tasks or annotators. The first is read with no think time, the second at
``--rate 110 --warmup 15`` (a schedule carries the cold workers' first-second backlog for a while: warm up longer).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# --- the app gunicorn serves: Django, plus a per-request SQL statement count header ------------


def counting_application(environ, start_response):  # pragma: no cover - runs inside gunicorn
    from django.db import connection

    global _django_app
    if _django_app is None:
        from config.wsgi import application

        _django_app = application
    count = [0]
    cpu_started = time.process_time()

    def counter(execute, sql, params, many, context):
        count[0] += 1
        return execute(sql, params, many, context)

    def counted_start_response(status, headers, exc_info=None):
        cpu_ms = (time.process_time() - cpu_started) * 1000
        return start_response(status, [*headers, ("X-SQL-Count", str(count[0])), ("X-CPU-ms", f"{cpu_ms:.2f}")],
                              exc_info)

    with connection.execute_wrapper(counter):
        return _django_app(environ, counted_start_response)


_django_app = None
_cpu_ms: list[tuple[str, float]] = []  # (operation, web-worker CPU ms) of this client process


# --- seeding -----------------------------------------------------------------------------------


def seed(*, tasks: int, images: int, overlap: int, annotators: int) -> tuple[int, list[str]]:
    import hashlib
    import random

    from django.contrib.auth.models import Group, User
    from rest_framework.authtoken.models import Token

    from annotate.models import AnnotationTask, ProjectWorkflow, Prompt, TaskImage
    from generation.models import GeneratedImage, GenerationJob, ModelVersion
    from projects.models import Project, ProjectMembership
    from projects.roles import GROUP_NAMES, Role

    run = secrets.token_hex(3)
    project = Project.objects.create(name=f"bench-{run}")
    ProjectWorkflow.objects.create(project=project, overlap=overlap, images_per_task=images)
    version, _ = ModelVersion.objects.get_or_create(name="bench-shapes", defaults={"source": "bench/none"})
    prompts = Prompt.objects.bulk_create(
        Prompt(project=project, text=f"bench prompt {i}", text_sha256=hashlib.sha256(f"{run}{i}".encode()).hexdigest())
        for i in range(tasks)
    )
    rng = random.Random(0)
    task_rows = AnnotationTask.objects.bulk_create(
        AnnotationTask(project=project, prompt=p, position=i + 1, random_key=rng.randint(0, 2**31 - 1))
        for i, p in enumerate(prompts)
    )
    jobs = GenerationJob.objects.bulk_create(
        GenerationJob(project=project, model_version=version, prompt=p.text, params={}, params_hash="0" * 64,
                      num_images=images, seeds=list(range(images)), status="succeeded", progress=1.0)
        for p in prompts
    )
    image_rows = GeneratedImage.objects.bulk_create(
        GeneratedImage(job=job, index=i, model_version=version, prompt=job.prompt, seed=i, params={},
                       storage_key=f"bench/{run}/{job.pk}/{i}.png", sha256="0" * 64, width=64, height=64,
                       size_bytes=100, generation_seconds=0.0)
        for job in jobs for i in range(images)
    )
    TaskImage.objects.bulk_create(
        TaskImage(task=task, image=image_rows[t * images + i], position=i)
        for t, task in enumerate(task_rows) for i in range(images)
    )
    group = Group.objects.get(name=GROUP_NAMES[Role.ANNOTATOR])
    tokens = []
    for n in range(annotators):
        user = User.objects.create(username=f"bench-{run}-{n}")
        user.groups.add(group)
        ProjectMembership.objects.create(project=project, user=user, role=Role.ANNOTATOR)
        tokens.append(Token.objects.create(user=user).key)
    return project.pk, tokens


# --- load ------------------------------------------------------------------------------------


def _request(port: int, path: str, token: str, body: dict | None, method: str = "POST"
             ) -> tuple[int, bytes, int, float]:
    global _cpu_ms
    data = json.dumps(body or {}).encode() if method == "POST" else None
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=data, headers={"Authorization": f"Token {token}",
                                                       "Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        sql = int(response.getheader("X-SQL-Count", "-1"))
        _cpu_ms.append((path.rstrip("/").rsplit("/", 1)[-1], float(response.getheader("X-CPU-ms", "0"))))
    finally:
        conn.close()
    return response.status, payload, sql, time.perf_counter() - started


def _annotator(port: int, project_id: int, token: str, start_at: float, measure_from: float, deadline: float,
               out: list, interval: float = 0.0, phase: float = 0.0) -> None:
    while time.time() < start_at:
        time.sleep(0.001)
    n = 0
    next_at = start_at + phase  # with an interval: when this annotator's next submit is due
    task = None  # the next task, when the last submit handed it out (one round trip per annotation)
    while time.time() < deadline:
        measured = time.time() >= measure_from
        if task is None:
            status, payload, sql, took = _request(port, f"/api/projects/{project_id}/tasks/next/", token, None)
            if measured:
                out.append(("next", took, sql, status))
            if status == 204:
                return
            if status != 200:
                out.append(("error", 0.0, sql, status))
                return
            task = json.loads(payload)
        ranking = [[image["id"]] for image in reversed(task["images"])]
        n += 1
        body = {"ranking": ranking, "idempotency_key": f"{token[:8]}-{task['task_id']}-{n}"}
        late = 0.0
        if interval:
            wait = next_at - time.time()
            if wait > 0:
                time.sleep(wait)
            late = max(0.0, time.time() - next_at)  # queued at the client because the server fell behind
            next_at += interval
        status, payload, sql, took = _request(port, f"/api/projects/{project_id}/tasks/{task['task_id']}/submit/",
                                              token, body)
        took += late
        if status in (200, 204):
            out.append(("ack", 0.0, sql, status))
        if time.time() >= measure_from and measured:
            out.append(("submit", took, sql, status))
        elif status not in (200, 204):
            out.append(("error", 0.0, sql, status))
        if status != 200:
            return
        task = json.loads(payload)


def _load_process(args: tuple) -> list:
    port, project_id, tokens, start_at, measure_from, deadline, interval, phases = args
    out: list = []
    threads = [threading.Thread(target=_annotator, args=(port, project_id, t, start_at, measure_from, deadline, out,
                                                         interval, phase))
               for t, phase in zip(tokens, phases, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.extend(("cpu-" + op, cpu, 0, 0) for op, cpu in _cpu_ms)
    return out


def _wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"gunicorn did not listen on {port}")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--overlap", type=int, default=5)
    parser.add_argument("--annotators", type=int, default=32)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--workers", type=int, default=5, help="gunicorn sync workers")
    parser.add_argument("--clients", type=int, default=4, help="load-generator processes")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0,
                        help="annotations/s offered in all, on a fixed schedule (0: no think time, as fast as served)")
    args = parser.parse_args()

    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        print("run through `bash tests/services.sh .venv/bin/python bench/annotation_loop.py` (needs PostgreSQL)")
        return 2
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    t0 = time.time()
    project_id, tokens = seed(tasks=args.tasks, images=args.images, overlap=args.overlap,
                              annotators=args.annotators)
    print(f"seeded {args.tasks} tasks x {args.images} images, overlap {args.overlap}, "
          f"{args.annotators} annotators in {time.time() - t0:.1f}s")
    # Fresh planner statistics, as a database in service has: without them the first minute
    # measures plans for empty tables (autovacuum would analyse the bulk load mid-run).
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    connection.close()

    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    gunicorn = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "--chdir", str(ROOT), "--pythonpath", str(ROOT / "bench"),
         "-w", str(args.workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning", "--backlog", "2048",
         "annotation_loop:counting_application"],
        cwd=ROOT, env=dict(os.environ),
    )
    try:
        _wait_for_port(port)
        # one request per worker process imports Django before the clock starts
        for _ in range(args.workers * 2):
            _request(port, "/api/me/", tokens[0], None, method="GET")
        start_at = time.time() + 1.0
        measure_from = start_at + args.warmup
        deadline = measure_from + args.seconds
        # With a rate, annotator i submits every `interval` seconds, its phase spread evenly over one interval.
        interval = args.annotators / args.rate if args.rate else 0.0
        phases = [i * interval / args.annotators for i in range(args.annotators)]
        shares = [(tokens[i::args.clients], phases[i::args.clients]) for i in range(args.clients)]
        with multiprocessing.get_context("fork").Pool(args.clients) as pool:
            results = pool.map(_load_process, [(port, project_id, share, start_at, measure_from, deadline, interval,
                                                share_phases) for share, share_phases in shares])
    finally:
        gunicorn.terminate()
        gunicorn.wait(timeout=30)

    rows = [row for result in results for row in result]
    errors = [row for row in rows if row[0] == "error" or (not row[0].startswith("cpu-") and row[3] not in (200, 201, 204))]
    pace = f"offered {args.rate:g} annotations/s" if args.rate else "no think time"
    print(f"\nannotator loop: {args.annotators} annotators, {pace}, {args.workers} gunicorn workers, "
          f"{os.cpu_count()} CPUs, {args.seconds:.0f} s measured after {args.warmup:.0f} s warm-up")
    submits = [row for row in rows if row[0] == "submit" and row[3] in (200, 201)]
    print(f"throughput: {len(submits) / args.seconds:.1f} annotations/s ({len(submits)} stored in the window)")
    print(f"{'operation':<10}{'count':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}{'SQL/op':>12}")
    for op in ("next", "submit"):
        ok = [row for row in rows if row[0] == op and row[3] in (200, 201)]
        if not ok:
            continue
        took = [row[1] for row in ok]
        sql = sorted({row[2] for row in ok})
        sql_text = str(sql[0]) if len(sql) == 1 else f"{sql[0]}..{sql[-1]}"
        print(f"{op:<10}{len(ok):>8}{_pct(took, 50):>10.1f}{_pct(took, 95):>10.1f}{_pct(took, 99):>10.1f}"
              f"{max(took) * 1000:>10.1f}{sql_text:>12}")
    for op in ("next", "submit"):
        cpu = [row[1] for row in rows if row[0] == "cpu-" + op]
        if cpu:
            print(f"web-worker CPU per {op}: median {statistics.median(cpu):.1f} ms (Django + DRF, this process only)")
    load = os.getloadavg()
    print(f"load average during the run (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if errors:
        print(f"errors: {len(errors)} (first: {errors[0]})")

    # integrity of what the run stored
    from django.db.models import Count

    from annotate.models import Annotation, AnnotationTask

    per_task = AnnotationTask.objects.filter(project_id=project_id).annotate(
        n=Count("annotations", filter=django.db.models.Q(annotations__status="submitted"))
    ).values_list("n", flat=True)
    worst = max(per_task)
    pairs = Annotation.objects.filter(project_id=project_id).values("task_id", "annotator_id").annotate(
        n=Count("pk")).filter(n__gt=1).count()
    stored = Annotation.objects.filter(project_id=project_id).count()
    print(f"integrity: most annotations on one task {worst} (k={args.overlap}); (task, annotator) pairs twice: "
          f"{pairs}; annotations stored in total: {stored}")
    acks = sum(1 for row in rows if row[0] == "ack")
    print(f"acknowledged (201) submits in the whole run: {acks}; stored: {stored} "
          f"({'equal' if acks == stored else 'MISMATCH'})")
    return 0 if worst <= args.overlap and pairs == 0 and not errors and acks == stored else 1


if __name__ == "__main__":
    raise SystemExit(main())
