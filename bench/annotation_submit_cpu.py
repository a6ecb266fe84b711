"""Benchmark: the CPU one annotator-loop submit costs Django and PostgreSQL, measured in one process.

    bash tests/services.sh .venv/bin/python bench/annotation_submit_cpu.py [--submits 250] [--profile]

The loop bench (``bench/annotation_loop.py``) needs a quiet machine: its throughput and latencies
follow whatever else runs. The CPU a request costs follows it much less, so this one measures that:
it seeds a project (as the loop bench does), then calls the WSGI application directly (no HTTP
server, no load generator) for one ``tasks/next/`` and ``--submits`` submits, each answering with
the next task, and prints per submit: the SQL statements it ran (Django's execute wrapper, as the loop
bench counts them), this process's CPU (Django, DRF, the database driver) and the CPU of the PostgreSQL
backend serving the connection (from ``/proc``). ``--profile`` prints a cProfile of the submits,
timed in CPU seconds, by cumulative time. Run it twice, or beside another tree's copy, and compare.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--submits", type=int, default=250, help="measured submits (after 20 warm-up ones)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile (CPU time) of the submits")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        print("run through `bash tests/services.sh .venv/bin/python bench/annotation_submit_cpu.py`")
        return 2
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import django

    django.setup()
    import annotation_loop
    from django.core.management import call_command
    from django.db import connection

    from config.wsgi import application

    call_command("migrate", verbosity=0)
    project_id, (token,) = annotation_loop.seed(tasks=args.submits + 40, images=4, overlap=5, annotators=1)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")

    def call(path: str, body: dict | None) -> tuple[int, bytes, int]:
        data = json.dumps(body or {}).encode()
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
                   "HTTP_HOST": "127.0.0.1", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
                   "wsgi.input": io.BytesIO(data), "wsgi.errors": sys.stderr, "CONTENT_LENGTH": str(len(data)),
                   "CONTENT_TYPE": "application/json", "HTTP_AUTHORIZATION": f"Token {token}"}
        status: list[str] = []
        count = [0]

        def counter(execute, sql, params, many, context):
            count[0] += 1
            return execute(sql, params, many, context)

        with connection.execute_wrapper(counter):
            payload = b"".join(application(environ, lambda s, headers, exc_info=None: status.append(s)))
        return int(status[0][:3]), payload, count[0]

    status, payload, _ = call(f"/api/projects/{project_id}/tasks/next/", None)
    assert status == 200, payload
    task = json.loads(payload)
    sql_counts: list[int] = []

    def submit(n: int) -> None:
        nonlocal task
        body = {"ranking": [[image["id"]] for image in reversed(task["images"])], "idempotency_key": f"k-{n}"}
        status, payload, sql = call(f"/api/projects/{project_id}/tasks/{task['task_id']}/submit/", body)
        assert status == 200, payload
        sql_counts.append(sql)
        task = json.loads(payload)

    for n in range(20):
        submit(n)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()

    def backend_cpu_ms() -> float:
        fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")  # utime + stime

    profile = cProfile.Profile(time.process_time) if args.profile else None
    sql_counts.clear()
    own, server = time.process_time(), backend_cpu_ms()
    if profile:
        profile.enable()
    for n in range(20, 20 + args.submits):
        submit(n)
    if profile:
        profile.disable()
    own_ms = (time.process_time() - own) * 1000 / args.submits
    server_ms = (backend_cpu_ms() - server) / args.submits
    load = os.getloadavg()
    print(f"{args.submits} submits: SQL statements {min(sql_counts)}..{max(sql_counts)} each; CPU per submit: "
          f"{own_ms:.2f} ms Django process{' (profiled)' if profile else ''}, {server_ms:.2f} ms PostgreSQL backend; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if profile:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(60)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
