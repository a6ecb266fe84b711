"""Generation throughput with the tiny pipeline: the whole path against a plain diffusers loop, and
coalescing against one job at a time.

Run it against private PostgreSQL and Redis (as the tests do):

    bash tests/services.sh .venv/bin/python bench/generation.py [--images 64] [--steps 30] [--side 64]

(a) images/s through the whole path (API call -> Celery worker process -> stored PNG + row) against a
    plain diffusers loop over the same prompts and seeds at the same batch size, as a ratio: the two
    alternate --repeats times and each path run is divided by the mean of the plain runs around it.
(b) 16 concurrent single-image jobs: a worker that coalesces (batch limit 8) against one that runs one
    job at a time (batch limit 1).
(c) CUDA only: (a) and (b) again with PICKWISE_DEVICE=cuda (skipped, and said so, without CUDA).

--sections picks some of them: ``--sections a`` runs (a) on the CPU only.

Both sides use one torch CPU thread (the worker through GENERATION_TORCH_THREADS), so the comparison is
of the paths, not of thread scheduling. The plain loop is diffusers as documented (its own ``no_grad``);
the worker renders under ``torch.inference_mode`` (same pixels), which on this tiny model's Python-bound
steps is worth about 7%. The CPU's speed drifts by 10-20% between runs here: give (a) 20 or more repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# The bench submits many jobs at once: lift the per-user limits for it (and its workers).
os.environ.update(
    GENERATION_RATE_LIMIT_PER_MINUTE="100000", GENERATION_MAX_QUEUED_JOBS_PER_USER="100000",
    GENERATION_MAX_IMAGES_PER_JOB="64", GENERATION_TORCH_THREADS="1",
)


def start_worker(*, batch_limit: int, device: str) -> subprocess.Popen[bytes]:
    from config.celery import app

    env = dict(os.environ, GENERATION_BATCH_LIMIT=str(batch_limit), PICKWISE_DEVICE=device)
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "gpu", "--pool", "prefork",
         "--concurrency", "1", "--loglevel", "WARNING", "-n", f"bench-{batch_limit}-{device}@%h"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    while not app.control.ping(timeout=1.0):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the bench worker did not start")
    return proc


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_done(job_ids: list[int], timeout: float = 1800) -> None:
    from generation.models import GenerationJob, JobStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = list(GenerationJob.objects.filter(pk__in=job_ids).values_list("status", flat=True))
        if all(s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED) for s in statuses):
            failed = GenerationJob.objects.filter(pk__in=job_ids).exclude(status=JobStatus.SUCCEEDED)
            if failed.exists():
                raise SystemExit(f"bench jobs failed: {list(failed.values_list('error', flat=True))[:3]}")
            return
        time.sleep(0.1)  # light polling: this process shares the CPU with the worker
    raise SystemExit("bench jobs did not finish in time")


def submit(client, prompts: list[str], seeds: list[list[int]], params: dict) -> list[int]:
    ids = []
    for prompt, job_seeds in zip(prompts, seeds, strict=True):
        response = client.post("/api/generation-jobs/", {"prompt": prompt, "model_version": "bench-tiny",
                                                         "seeds": job_seeds, "params": params}, format="json")
        assert response.status_code == 201, response.json()
        ids.append(response.json()["id"])
    return ids


def plain_loop(model_dir: Path, prompts: list[str], seeds: list[list[int]], params: dict, device: str) -> float:
    """Images/s of a bare diffusers loop: one pipeline call per batch, no Django, no storage."""
    import diffusers
    import torch

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None).to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)

    def run(batch_prompts: list[str], batch_seeds: list[int]) -> None:
        pipe(prompt=batch_prompts, num_inference_steps=params["steps"], guidance_scale=params["guidance"],
             width=params["width"], height=params["height"],
             generator=[torch.Generator("cpu").manual_seed(s) for s in batch_seeds], output_type="pil")

    run([prompts[0]] * len(seeds[0]), seeds[0])  # warm-up, as the worker gets one
    started = time.perf_counter()
    for prompt, batch_seeds in zip(prompts, seeds, strict=True):
        run([prompt] * len(batch_seeds), batch_seeds)
    if device == "cuda":
        torch.cuda.synchronize()
    return sum(map(len, seeds)) / (time.perf_counter() - started)


@contextmanager
def warm_worker(client, params: dict, *, batch_limit: int, device: str) -> Iterator[None]:
    """A bench worker that has already loaded the pipeline (one warm-up job), stopped afterwards."""
    proc = start_worker(batch_limit=batch_limit, device=device)
    try:
        wait_done(submit(client, ["warm-up"], [[0]], params))
        yield
    finally:
        stop_worker(proc)


def whole_path(client, prompts: list[str], seeds: list[list[int]], params: dict, *, batch_limit: int,
               device: str) -> float:
    with warm_worker(client, params, batch_limit=batch_limit, device=device):
        return timed_path(client, prompts, seeds, params)


def timed_path(client, prompts: list[str], seeds: list[list[int]], params: dict) -> float:
    """Images/s of submitting the jobs through the API until the running worker has stored them all."""
    from django.db.models import Max
    from django.utils import timezone

    from generation.models import GenerationJob

    started, started_at = time.perf_counter(), timezone.now()
    ids = submit(client, prompts, seeds, params)
    wait_done(ids)
    # The path ends when the last job's rows and status are committed (its finished_at, same host
    # clock), not when this process's 0.1 s poll happens to notice: that would add up to 0.1 s.
    last = GenerationJob.objects.filter(pk__in=ids).aggregate(t=Max("finished_at"))["t"]
    elapsed = min(time.perf_counter() - started, (last - started_at).total_seconds())
    breakdown(ids, elapsed)
    return sum(map(len, seeds)) / elapsed


def breakdown(job_ids: list[int], elapsed: float) -> None:
    """Where the wall time went: pipeline calls, the rest of each claim, and gaps between claims."""
    from django.db.models import Max, Min, Sum

    from generation.models import GeneratedImage, GenerationJob

    jobs = GenerationJob.objects.filter(pk__in=job_ids)
    pipeline = GeneratedImage.objects.filter(job__in=jobs).aggregate(s=Sum("generation_seconds"))["s"] or 0.0
    claims = {}
    for token, started, finished in jobs.values_list("lease_token", "started_at", "finished_at"):
        claims.setdefault(token, (started, finished))
    # Claims overlap (a claim's last store runs during the next one's pipeline call): this sums them.
    in_claims = sum((finished - started).total_seconds() for started, finished in claims.values())
    span = jobs.aggregate(a=Min("started_at"), b=Max("finished_at"))
    print(f"      wall {elapsed:.2f} s: {len(claims)} claims, first start to last finish "
          f"{(span['b'] - span['a']).total_seconds():.2f} s, inside claims {in_claims:.2f} s "
          f"(pipeline calls {pipeline:.2f} s)")


def section(client, model_dir: Path, args: argparse.Namespace, device: str) -> None:
    params = {"scheduler": "ddim", "steps": args.steps, "guidance": 5.0, "width": args.side, "height": args.side}
    if "a" in args.sections:
        path_against_plain(client, model_dir, args, params, device)
    if "b" in args.sections:
        coalescing(client, params, device)


def path_against_plain(client, model_dir: Path, args: argparse.Namespace, params: dict, device: str) -> None:
    import torch

    batch = args.batch
    jobs = args.images // batch
    prompts = [f"a red circle {i}" for i in range(jobs)]
    seeds = [[1000 * i + k for k in range(batch)] for i in range(jobs)]

    torch.set_num_threads(1)
    # The machine's speed drifts by 10-20% over a minute here, so the two sides alternate (plain, path,
    # plain, path, ...) on fresh prompts and each path run is compared with the mean of its neighbours.
    with warm_worker(client, params, batch_limit=batch, device=device):
        plains = [plain_loop(model_dir, prompts, seeds, params, device)]
        paths, ratios = [], []
        for repeat in range(args.repeats):
            fresh = [f"{prompt} r{repeat}" for prompt in prompts]
            paths.append(timed_path(client, fresh, seeds, params))
            plains.append(plain_loop(model_dir, prompts, seeds, params, device))
            ratios.append(paths[-1] / ((plains[-2] + plains[-1]) / 2))
    print(f"[{device}] (a) {jobs} jobs x {batch} images, {args.side}px, {args.steps} steps, batch {batch}, "
          f"{args.repeats} alternating repeats:")
    print(f"      plain diffusers loop  {statistics.median(plains):8.2f} images/s   (runs: "
          f"{', '.join(f'{v:.2f}' for v in plains)})")
    print(f"      API -> Celery -> PNG  {statistics.median(paths):8.2f} images/s   (runs: "
          f"{', '.join(f'{v:.2f}' for v in paths)})")
    print(f"      ratio to the neighbouring plain runs: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.3f}  (target >= 0.9)")


def coalescing(client, params: dict, device: str) -> None:
    singles = [f"a blue square {i}" for i in range(16)]
    single_seeds = [[i] for i in range(16)]
    coalesced = whole_path(client, singles, single_seeds, params, batch_limit=8, device=device)
    one_by_one = whole_path(client, singles, single_seeds, params, batch_limit=1, device=device)
    print(f"[{device}] (b) 16 concurrent single-image jobs:")
    print(f"      one job at a time     {one_by_one:8.2f} images/s")
    print(f"      coalesced (limit 8)   {coalesced:8.2f} images/s   speed-up {coalesced / one_by_one:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images in (a), split into jobs of --batch")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="alternating plain/path runs in (a)")
    parser.add_argument("--sections", default="abc", help="which sections to run: 'a' for (a) alone, 'ab' for both on CPU")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    if not settings.CELERY_BROKER_URL.startswith("redis"):
        raise SystemExit("run through tests/services.sh (PostgreSQL + Redis)")
    call_command("migrate", verbosity=0)
    from generation.services import model_version_register
    from generation.tiny import build_tiny_pipeline
    from tests.factories import api_client_for

    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_superuser": True})
    client = api_client_for(user)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_pipeline(Path(tmp) / "tiny")
        model_version_register(name="bench-tiny", update=True, source=str(model_dir), dtype="float32", scheduler="ddim",
                               steps=args.steps, guidance=5.0, width=args.side, height=args.side)
        section(client, model_dir, args, "cpu")
        # (c) The same on a CUDA device, where one exists.
        import torch

        if "c" not in args.sections:
            pass
        elif torch.cuda.is_available():
            section(client, model_dir, args, "cuda")
        else:
            print("[cuda] (c) skipped: no CUDA device here")


if __name__ == "__main__":
    main()
