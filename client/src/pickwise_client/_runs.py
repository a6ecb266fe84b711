"""Reward-model runs, reward models and fine-tune runs (``/api/reward-runs/``, ``/api/reward-models/``,
``/api/finetune-runs/``). ML engineers and admins of the run's project only."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar, cast

from pickwise_client import _wait
from pickwise_client._base import Resource, only_given
from pickwise_client.errors import JobFailedError, WaitTimeoutError
from pickwise_client.types import FINISHED_STATUSES, FineTuneRun, RewardModel, RewardRun, RewardScores

R = TypeVar("R", RewardRun, FineTuneRun)

SCORE_TIMEOUT_S = 90.0  # the server waits up to 60 s for its gpu worker's scores


def metrics_line(point: Mapping[str, Any], total_steps: int | None = None) -> str:
    """``step 3/4  loss 0.6931  accuracy 0.5000``: one history point for people."""
    step = point.get("step", "?")
    head = f"step {step}/{total_steps}" if total_steps else f"step {step}"
    rest = [f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
            for key, value in point.items() if key != "step"]
    return "  ".join([head, *rest])


class _Runs(Resource, Generic[R]):
    kind = ""
    path = ""

    def list(self, *, project: int | None = None) -> Iterator[R]:
        """Runs of the projects where you may train, newest first (``project`` keeps one project's)."""
        for run in self._http.paginate(self.path, {"project": project}):
            if project is None or run.get("project") == project:
                yield cast(R, run)

    def get(self, run: int) -> R:
        return cast(R, self._http.get(f"{self.path}{int(run)}/"))

    def cancel(self, run: int) -> R:
        """Cancel a queued or running run (a running one stops at its next step)."""
        return cast(R, self._http.post(f"{self.path}{int(run)}/cancel/"))

    def retry(self, run: int) -> R:
        """Queue a failed, cancelled or abandoned run again; it resumes from its last checkpoint."""
        return cast(R, self._http.post(f"{self.path}{int(run)}/retry/"))

    def watch(self, run: int, *, poll_interval: float = 2.0, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield each new point of the run's metrics history (``{"step": 3, "loss": ..., ...}``) as the
        worker logs it, until the run finishes. Long runs keep a thinned history, so steps may skip."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_step = -1
        while True:
            current = self.get(run)
            for point in current["history"]:
                if int(point.get("step", 0)) > last_step:
                    last_step = int(point.get("step", 0))
                    yield point
            if current["status"] in FINISHED_STATUSES:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(f"{self.kind} {run}: still {current['status']} after {timeout:g} s "
                                       "(it keeps going on the server)")
            self._context.sleep(poll_interval)

    def wait(self, run: int, *, timeout: float | None = None, poll_interval: float = 2.0, progress: bool = True,
             raise_on_failure: bool = True) -> R:
        """Block until the run finishes, with a progress bar of its steps and latest metrics; raises
        :class:`~pickwise_client.JobFailedError` when it failed or was cancelled."""

        def position(current: R) -> tuple[float, float, str]:
            metrics = current["last_metrics"] or {}
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
            return current["step"], current["total_steps"] or 0, shown or current["status"]

        done = _wait.poll(lambda: self.get(run), finished=lambda r: r["status"] in FINISHED_STATUSES,
                          position=position, description=f"{self.kind} {run}", unit="step", progress=progress,
                          timeout=timeout, poll_interval=poll_interval, sleep=self._context.sleep)
        if raise_on_failure and done["status"] != "succeeded":
            raise JobFailedError(self.kind, cast(dict[str, Any], done))
        return done


class RewardRuns(_Runs[RewardRun]):
    """Train a PickScore-style reward model on an export (Bradley-Terry on pickapic pairs,
    Plackett-Luce on listwise rankings). A run that succeeds registers a reward model."""

    kind = "reward run"
    path = "api/reward-runs/"

    def create(self, export: int, *, backbone: str = "", preset: str = "tiny",
               hyperparameters: Mapping[str, Any] | None = None, name: str = "") -> RewardRun:
        """Queue a run. ``backbone``: empty for the preset's own, ``tiny``, ``shapes_vae``, ``shapes_conv``,
        a reward-model or CLIP directory on the server or a CLIP hub id in its cache; ``preset``: ``tiny``,
        ``shapes`` (the latent reward model on the shapes model's VAE) or ``pickscore``; ``hyperparameters`` overrides any ``RewardModelConfig``
        field (``{"max_steps": 200, "learning_rate": 1e-5}``)."""
        return cast(RewardRun, self._http.post(self.path, {
            "export": export, "backbone": backbone, "preset": preset,
            "hyperparameters": dict(hyperparameters or {}), "name": name}))


IdList = list[str]  # (a module-level name: ``list`` is a method name inside the classes)


class RewardModels(Resource):
    """Reward models registered by successful reward runs."""

    def list(self) -> Iterator[RewardModel]:
        return cast(Iterator[RewardModel], self._http.paginate("api/reward-models/"))

    def get(self, model: int) -> RewardModel:
        return cast(RewardModel, self._http.get(f"api/reward-models/{int(model)}/"))

    def score(self, model: int, image_ids: Sequence[str], *, prompt: str = "") -> RewardScores:
        """Scores of images you may see, in the order given, under ``prompt`` (or each image's own
        prompt when empty, which also stores them). Computed by the server's gpu worker; retried on 503."""
        return cast(RewardScores, self._http.post(
            f"api/reward-models/{int(model)}/score/", {"image_ids": [str(i) for i in image_ids], "prompt": prompt},
            idempotent=True, timeout=SCORE_TIMEOUT_S))

    def score_in_background(self, model: int, image_ids: Sequence[str]) -> IdList:
        """Queue scoring of images under their own prompts and return at once (the ids queued)."""
        body = self._http.post(f"api/reward-models/{int(model)}/score/",
                               {"image_ids": [str(i) for i in image_ids], "background": True}, idempotent=True)
        return cast(IdList, body["queued"])


class FineTuneRuns(_Runs[FineTuneRun]):
    """Train a LoRA on a base model version: Diffusion-DPO on an export's pairs, or DDPO with a reward.
    A run that succeeds registers a LoRA model version (``result_version``)."""

    kind = "fine-tune run"
    path = "api/finetune-runs/"

    def create(
        self,
        base_version: str | int,
        method: str,
        *,
        export: int | None = None,
        project: int | None = None,
        reward: str | None = None,
        reward_version: int | None = None,
        prompt_source: str | None = None,
        preset: str = "tiny",
        hyperparameters: Mapping[str, Any] | None = None,
        eval_prompts: Sequence[str] | None = None,
        name: str = "",
    ) -> FineTuneRun:
        """Queue a run. ``method="dpo"`` needs ``export``; ``method="ddpo"`` needs a ``reward`` (brightness,
        jpeg_compressibility, shapes_adherence, shapes_overall) or a ``reward_version`` (a reward model id)
        and prompts from ``prompt_source`` (``project`` with ``project=...``, or ``export``).
        ``base_version`` is a model version name or id (a LoRA version continues that adapter)."""
        body = only_given(
            base_version=str(base_version), method=method, export=export, project=project, reward=reward,
            reward_version=reward_version, prompt_source=prompt_source, preset=preset,
            hyperparameters=dict(hyperparameters or {}),
            eval_prompts=list(eval_prompts) if eval_prompts is not None else None, name=name)
        return cast(FineTuneRun, self._http.post(self.path, body))
