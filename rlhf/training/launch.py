"""One rank of a distributed training run: ``python -m rlhf.training.launch <spec.json>``.

The worker starts it through ``torch.distributed.run`` (one process per rank, gloo on CPU, nccl on CUDA;
accelerate's ``Accelerator`` reads the rendezvous from the environment torchrun sets). Django-free, like the
trainers it runs. The spec (JSON) names:

* ``trainer``: ``"dpo"``, ``"ddpo"`` or ``"reward"``; ``config``: the trainer's config fields;
* ``data_path`` (DPO and reward), ``output_dir`` (every rank the same: checkpoints are written by the main
  process and resumed by all);
* ``events``: a file the main process (rank 0) appends JSON lines to, one per event, which the worker tails:
  ``{"event": "phase", "name"}``, ``{"event": "log", "step", "metrics"}``, ``{"event": "checkpoint", "step",
  "dir"}`` and last ``{"event": "result", "dir", "step", "stopped", "last_metrics", ...}``;
* ``errors_dir``: where a rank that raises writes ``error-<rank>.json`` (``type``, ``message``, ``oom``)
  before it exits non-zero;
* ``owner_pid`` (optional): the worker process; when it is gone, the ranks stop as on a cancel.

Over several machines each machine's torchrun (the run's worker on machine 0, a node worker on each other
one, ``rlhf.runs.distributed``) runs this module with a spec of its own; ``RANK`` is the global rank, so only
global rank 0, on machine 0, writes events, and every machine's ranks read ``data_path`` and resume from
``output_dir`` (shared storage, the same paths everywhere).

SIGTERM (the worker forwards a cancel to the whole process group) asks every rank to stop: the ranks agree
on it after the step in flight (an all-reduce, so none is left waiting for the others), write a checkpoint
and exit 0 with ``stopped: true``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRAINERS = ("dpo", "ddpo", "reward")
EVENTS_FILE = "events.jsonl"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


class Events:
    """JSON lines for the worker, written by the main process only (other ranks write nothing)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path if rank() == 0 else None

    def write(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps({"event": event, **fields}, default=_json_default) + "\n")
            handle.flush()


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return float(value)


class StopFlag:
    """Set by SIGTERM or by the worker's exit; :meth:`agreed` is the flag all ranks agree on."""

    def __init__(self, owner_pid: int | None) -> None:
        self.requested = False
        self.owner_pid = owner_pid
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True

    def _owner_gone(self) -> bool:
        if not self.owner_pid:
            return False
        try:
            os.kill(self.owner_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def agreed(self) -> bool:
        """True on every rank once any rank was asked to stop (all ranks call this at the same point)."""
        import torch
        import torch.distributed as dist

        local = self.requested or self._owner_gone()
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return local
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([1.0 if local else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def build_config(trainer: str, data: Mapping[str, Any]) -> Any:
    from rlhf.training import configs

    fields = dict(data)
    if trainer == "reward":
        return configs.RewardModelConfig(**fields)
    fields["lora_targets"] = tuple(fields.get("lora_targets") or configs.DEFAULT_TARGETS)
    if trainer == "dpo":
        return configs.DPOConfig(**fields)
    fields["prompts"] = tuple(fields.get("prompts") or ())
    return configs.DDPOConfig(**fields)


def run(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Train this rank; the main process's result (what the ``result`` event says)."""
    trainer = spec["trainer"]
    if trainer not in TRAINERS:
        raise ValueError(f"trainer must be one of {TRAINERS}, not {trainer!r}")
    config = build_config(trainer, spec["config"])
    events = Events(Path(spec["events"]) if spec.get("events") else None)
    stop = StopFlag(spec.get("owner_pid"))
    output_dir = Path(spec["output_dir"])
    callbacks: dict[str, Any] = {
        "on_log": lambda step, metrics: events.write("log", step=int(step), metrics=dict(metrics)),
        "should_stop": stop.agreed,
        "on_phase": lambda name: events.write("phase", name=name),
        "resume": True,
    }
    if trainer == "reward":
        from rlhf.training.reward_train import train_reward_model

        reward = train_reward_model(config, Path(spec["data_path"]), output_dir, **callbacks)
        return {"dir": reward.model_dir, "step": reward.step, "stopped": reward.stopped,
                "last_metrics": reward.last_metrics,
                "validation": reward.validation.as_dict() if reward.validation else None,
                "test": reward.test.as_dict() if reward.test else None}
    on_checkpoint = lambda step, directory: events.write("checkpoint", step=int(step), dir=directory)  # noqa: E731
    if trainer == "dpo":
        from rlhf.training.dpo import train_dpo

        result = train_dpo(config, Path(spec["data_path"]), output_dir, on_checkpoint=on_checkpoint, **callbacks)
    else:
        from rlhf.training.ddpo import train_ddpo

        result = train_ddpo(config, output_dir, on_checkpoint=on_checkpoint, **callbacks)
    return {"dir": result.lora_dir, "step": result.step, "stopped": result.stopped,
            "last_metrics": result.last_metrics}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m rlhf.training.launch <spec.json>", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = run(spec)
    except Exception as exc:
        if spec.get("errors_dir"):
            errors = Path(spec["errors_dir"])
            errors.mkdir(parents=True, exist_ok=True)
            (errors / f"error-{rank()}.json").write_text(json.dumps({
                "rank": rank(), "type": type(exc).__name__, "message": str(exc), "oom": is_oom(exc),
                "traceback": traceback.format_exc(),
            }))
        raise
    Events(Path(spec["events"]) if spec.get("events") else None).write("result", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
