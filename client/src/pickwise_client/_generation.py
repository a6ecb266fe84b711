"""Model versions, generation jobs and images (``/api/model-versions/``, ``/api/generation-jobs/``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from pickwise_client import _wait
from pickwise_client._base import Resource, only_given
from pickwise_client.errors import JobFailedError, NotFoundError
from pickwise_client.types import GenerationJob, ModelVersion


class ModelVersions(Resource):
    """The enabled model versions (base pipelines and LoRAs) with their default parameters."""

    def list(self) -> list[ModelVersion]:
        return cast(list[ModelVersion], self._http.get("api/model-versions/"))

    def get(self, name_or_id: str | int) -> ModelVersion:
        """The enabled version with this name or id; :class:`~pickwise_client.NotFoundError` when none."""
        for version in self.list():
            if str(name_or_id) in (version["name"], str(version["id"])):
                return version
        raise NotFoundError(f"No enabled model version {str(name_or_id)!r}.", status=404, field="model_version",
                            method="GET", url="/api/model-versions/")


class GenerationJobs(Resource):
    """Image generation on the server's ``gpu`` workers."""

    def create(self, prompt: str, model_version: str | int, *, num_images: int | None = None,
               seeds: Sequence[int] | None = None, params: Mapping[str, Any] | None = None,
               project: int | None = None, idempotency_key: str | None = None) -> GenerationJob:
        """Queue a job. ``params`` overrides the version's defaults (scheduler, steps, guidance, width,
        height, negative_prompt). With an ``idempotency_key`` the call is retried on 429/503 (and a
        repeat returns the same job); without one a 429 is raised with ``retry_after``."""
        return cast(GenerationJob, self._http.post("api/generation-jobs/", only_given(
            prompt=prompt, model_version=str(model_version), num_images=num_images,
            seeds=list(seeds) if seeds is not None else None, params=dict(params) if params else None,
            project=project, idempotency_key=idempotency_key), idempotent=idempotency_key is not None))

    def list(self) -> list[GenerationJob]:
        """Your 50 most recent jobs."""
        return cast(list[GenerationJob], self._http.get("api/generation-jobs/"))

    def get(self, job: int) -> GenerationJob:
        return cast(GenerationJob, self._http.get(f"api/generation-jobs/{int(job)}/"))

    def cancel(self, job: int) -> GenerationJob:
        return cast(GenerationJob, self._http.post(f"api/generation-jobs/{int(job)}/cancel/", idempotent=True))

    def wait(self, job: int, *, timeout: float | None = None, poll_interval: float = 0.5, progress: bool = True,
             raise_on_failure: bool = True) -> GenerationJob:
        """Block until the job finishes; raises :class:`~pickwise_client.JobFailedError` when it failed."""
        done = _wait.poll(
            lambda: self.get(job), finished=lambda j: bool(j["finished"]),
            position=lambda j: (round(100 * j["progress"], 1), 100, j["status"]),
            description=f"generation job {job}", progress=progress, timeout=timeout, poll_interval=poll_interval,
            sleep=self._context.sleep)
        if raise_on_failure and done["status"] != "succeeded":
            raise JobFailedError("generation job", cast(dict[str, Any], done))
        return done


class Images(Resource):
    """Generated images you may see (you asked for them, or you are a member of their project)."""

    def _path(self, image: str) -> str:
        return image if "/" in image else f"generation/images/{image}.png"

    def read(self, image: str) -> bytes:
        """The PNG bytes of an image, by id or by the ``url`` the API gave."""
        with self._http.stream(self._path(image), follow_redirects=True) as response:
            return response.read()

    def save(self, image: str, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.write_bytes(self.read(image))
        return target
