"""Image-editing throughput: img2img and inpainting images/s through the worker's code against a plain diffusers
loop on the same model, settings, prompts and seeds.

Run it against private PostgreSQL and Redis (as the tests do):

    bash tests/services.sh .venv/bin/python bench/edit_throughput.py [--model shapes|tiny] [--jobs 6] [--repeats 5]

The worker side is what a Celery task runs, in this process: ``worker.run_job`` for each job (claim under a
lease, read the source and mask from storage, the pipeline built by ``from_pipe`` from the loaded
text-to-image pipeline, rendering, PNG encoding, storage writes and rows on the storer's thread, finish), on
jobs just created by ``generation_job_create(edit=...)`` (validation, content-keyed source and mask). In
production the web process creates jobs while the worker renders, so creation is timed apart and printed. The plain side is diffusers
as documented: ``StableDiffusionImg2ImgPipeline`` / ``StableDiffusionInpaintPipeline.from_pretrained`` of the
same directory, one call per job with the same batch size, scheduler, steps, guidance, strength and per-image
generators. The two alternate ``--repeats`` times and each worker run is divided by the mean of the plain runs
around it (the CPU's speed drifts between runs on a shared machine). Both use one torch thread.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.update(
    GENERATION_RATE_LIMIT_PER_MINUTE="100000", GENERATION_MAX_QUEUED_JOBS_PER_USER="100000",
    GENERATION_MAX_IMAGES_PER_JOB="64", GENERATION_TORCH_THREADS="1", PICKWISE_DEVICE="cpu",
)


def source_and_mask(side: int) -> tuple[bytes, bytes]:
    from PIL import Image

    source = Image.new("RGB", (side, side), (245, 245, 245))
    source.paste((40, 80, 220), (side // 4, side // 4, side // 2, side // 2))
    mask = Image.new("L", (side, side), 0)
    mask.paste(255, (side // 8, side // 8, side * 5 // 8, side * 5 // 8))
    out = []
    for image in (source, mask):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out[0], out[1]


CREATE_SECONDS: list[float] = []


def worker_side(user, version, kind: str, prompts: list[str], seeds: list[list[int]], strength: float,
                source: bytes, mask: bytes) -> float:
    """Images/s of creating the jobs and running them through the worker's code until all are stored."""
    from generation import services, worker
    from generation.editing import EditRequest

    edit = EditRequest(kind, source, mask=mask if kind == "inpaint" else None, strength=strength)  # type: ignore[arg-type]
    created = time.perf_counter()
    jobs = [services.generation_job_create(user=user, model_version=version, prompt=prompt, seeds=job_seeds,
                                           edit=edit) for prompt, job_seeds in zip(prompts, seeds, strict=True)]
    # In production the web process creates jobs while the worker renders earlier ones; here creation is
    # serial, so it is timed apart (CREATE_SECONDS) and the rate is of the worker's part.
    started = time.perf_counter()
    CREATE_SECONDS.append(started - created)
    with worker.Storer() as storer:
        for job in jobs:
            result = worker.run_job(job.pk, batch_limit=len(seeds[0]), storer=storer)
            assert result.outcome in ("storing", "succeeded"), result
    elapsed = time.perf_counter() - started
    for job in jobs:
        job.refresh_from_db()
        assert job.status == "succeeded", job.error
    if os.environ.get("BENCH_BREAKDOWN"):
        from django.db.models import Sum

        from generation.models import GeneratedImage

        pipeline = GeneratedImage.objects.filter(job__in=jobs).aggregate(s=Sum("generation_seconds"))["s"]
        print(f"      wall {elapsed:.2f} s, pipeline calls {pipeline:.2f} s")
    return sum(map(len, seeds)) / elapsed


class Plain:
    """A bare diffusers loop: one pipeline call per job, no Django, no storage."""

    def __init__(self, model_dir: str, kind: str, params: dict, strength: float, source: bytes, mask: bytes) -> None:
        import diffusers
        from PIL import Image

        cls = diffusers.StableDiffusionImg2ImgPipeline if kind == "img2img" else diffusers.StableDiffusionInpaintPipeline
        self.pipe = cls.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
            self.pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2)
        self.kind, self.params, self.strength = kind, params, strength
        self.source = Image.open(io.BytesIO(source)).convert("RGB")
        self.mask = Image.open(io.BytesIO(mask)).convert("L")

    def run(self, prompt: str, seeds: list[int]) -> None:
        import torch

        n = len(seeds)
        extra = {"mask_image": [self.mask] * n} if self.kind == "inpaint" else {}
        self.pipe(prompt=[prompt] * n, image=[self.source] * n, strength=self.strength,
                  num_inference_steps=self.params["steps"], guidance_scale=self.params["guidance"],
                  generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], output_type="pil", **extra)

    def images_per_s(self, prompts: list[str], seeds: list[list[int]]) -> float:
        started = time.perf_counter()
        for prompt, job_seeds in zip(prompts, seeds, strict=True):
            self.run(prompt, job_seeds)
        return sum(map(len, seeds)) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes", choices=["shapes", "tiny"])
    parser.add_argument("--jobs", type=int, default=6, help="jobs per run")
    parser.add_argument("--batch", type=int, default=4, help="images per job (one pipeline call)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strength", type=float, default=0.75)
    parser.add_argument("--kinds", default="img2img,inpaint")
    args = parser.parse_args()

    import django
    import torch

    torch.set_num_threads(1)
    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    if not settings.CELERY_BROKER_URL.startswith("redis"):
        raise SystemExit("run through tests/services.sh (PostgreSQL + Redis)")
    call_command("migrate", verbosity=0)
    from generation import worker
    from generation.services import model_version_register

    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_superuser": True})
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "shapes":
            from generation.shapes.model import DEFAULT_GUIDANCE, DEFAULT_STEPS, WEIGHTS_DIR

            model_dir, side = str(WEIGHTS_DIR), 64
            params = {"scheduler": "dpmpp_2m", "steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE,
                      "width": side, "height": side}
        else:
            from generation.tiny import build_tiny_pipeline

            model_dir, side = str(build_tiny_pipeline(Path(tmp) / "tiny")), 32
            params = {"scheduler": "dpmpp_2m", "steps": 20, "guidance": 5.0, "width": side, "height": side}
        version = model_version_register(name=f"bench-edit-{args.model}", update=True, source=model_dir,
                                         dtype="float32", **params)
        source, mask = source_and_mask(side)
        seeds = [[1000 * j + k for k in range(args.batch)] for j in range(args.jobs)]
        for kind in args.kinds.split(","):
            plain = Plain(model_dir, kind, params, args.strength, source, mask)
            prompts = [f"a large red circle in the center on a white background {j}" for j in range(args.jobs)]
            # Warm-up: both sides load and run once (the worker's cache keeps its pipeline).
            plain.run(prompts[0], seeds[0])
            worker_side(user, version, kind, prompts[:1], seeds[:1], args.strength, source, mask)
            plains = [plain.images_per_s(prompts, seeds)]
            ours, ratios = [], []
            for repeat in range(args.repeats):
                fresh = [f"{prompt} r{repeat}" for prompt in prompts]  # new jobs each run, nothing to skip
                ours.append(worker_side(user, version, kind, fresh, seeds, args.strength, source, mask))
                plains.append(plain.images_per_s(prompts, seeds))
                ratios.append(ours[-1] / ((plains[-2] + plains[-1]) / 2))
            print(f"{kind} ({args.model}, {side}px, {params['steps']} steps, strength {args.strength}, "
                  f"{args.jobs} jobs x {args.batch} images, {args.repeats} alternating repeats):")
            print(f"    plain diffusers loop   {statistics.median(plains):7.2f} images/s  "
                  f"(runs: {', '.join(f'{v:.2f}' for v in plains)})")
            print(f"    worker code            {statistics.median(ours):7.2f} images/s  "
                  f"(runs: {', '.join(f'{v:.2f}' for v in ours)})")
            per_job = statistics.median(CREATE_SECONDS[-args.repeats:]) / args.jobs
            print(f"    creating a job (validation, content-keyed files, row), not in the rate above: "
                  f"{1000 * per_job:.1f} ms median")
            print(f"    ratio to the neighbouring plain runs: {', '.join(f'{r:.3f}' for r in ratios)}; "
                  f"median {statistics.median(ratios):.3f}  (target >= 0.9)")
        worker.reset_pipeline_cache()


if __name__ == "__main__":
    main()
