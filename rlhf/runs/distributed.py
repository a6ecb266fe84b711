"""Runs with ``num_processes`` > 1: checked before anything starts, trained by a child process group.

The Celery task (the parent) starts ``python -m torch.distributed.run`` (torchrun: one process per rank,
gloo on the CPU, nccl on CUDA) running :mod:`rlhf.training.launch` in a new session, so the ranks form one
process group. The parent keeps the run's lease heartbeat, tails the events the main rank writes
(progress, metrics, checkpoints, the result), forwards a cancel as SIGTERM to the whole group (SIGKILL after
``TRAIN_STOP_GRACE_SECONDS``), and turns a failed group (a rank that raised, ran out of memory or was killed)
into the run's failure reason. Whatever happens, no process of the group outlives the call.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from core.exceptions import ApplicationError
from rlhf.training.checkpoint import config_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH_DIR = "launch"  # under the attempt directory: spec.json, events.jsonl, errors/, torchrun.log
OnEvent = Callable[[Mapping[str, Any]], None]


class TrainingProcessFailed(Exception):
    """The training process group failed; the message is the run's failure reason."""


def max_processes() -> tuple[int, str]:
    """The most training processes a run may start on one machine, and what they are (for messages)."""
    gpus = [d for d in settings.TRAIN_CUDA_VISIBLE_DEVICES.split(",") if d.strip()]
    if settings.TRAIN_MAX_PROCESSES:
        return settings.TRAIN_MAX_PROCESSES, "TRAIN_MAX_PROCESSES"
    if gpus:
        return len(gpus), f"GPUs in TRAIN_CUDA_VISIBLE_DEVICES ({settings.TRAIN_CUDA_VISIBLE_DEVICES})"
    if settings.PICKWISE_DEVICE in ("cpu", "auto"):  # "auto" on a GPU host: the worker checks its GPUs itself
        return os.cpu_count() or 1, "CPUs"
    return 1, f"{settings.PICKWISE_DEVICE} device without TRAIN_CUDA_VISIBLE_DEVICES or TRAIN_MAX_PROCESSES set"


def check_distributed(config: Any) -> None:
    """Field errors for what a training worker cannot start: more processes per machine than it has GPUs
    (or CPUs, on a CPU device), or several machines without a rendezvous address. (The config itself
    checked that the processes divide its global batch.)"""
    per_machine = config.num_processes // config.num_machines
    limit, what = max_processes()
    if per_machine > limit:
        raise ApplicationError(
            f"num_processes {config.num_processes} needs {per_machine} processes per machine; a training worker "
            f"has {limit} ({what}).", field="num_processes")
    if config.num_machines > 1 and not settings.TRAIN_MAIN_PROCESS_IP:
        raise ApplicationError(
            f"num_machines {config.num_machines} needs a rendezvous address: set TRAIN_MAIN_PROCESS_IP (and "
            "TRAIN_MAIN_PROCESS_PORT, TRAIN_MACHINE_RANK) on every training worker.", field="num_machines")


def check_worker_devices(config: Any) -> None:
    """On the worker, before starting: a CUDA run needs as many visible GPUs as processes per machine."""
    if config.cpu:
        return
    import torch  # the training worker has it loaded already

    per_machine = config.num_processes // config.num_machines
    if torch.cuda.is_available() and torch.cuda.device_count() < per_machine:
        raise TrainingProcessFailed(
            f"num_processes {config.num_processes} needs {per_machine} GPUs on this worker; it sees "
            f"{torch.cuda.device_count()} (TRAIN_CUDA_VISIBLE_DEVICES).")


def torchrun_command(config: Any, spec_path: Path) -> list[str]:
    per_machine = config.num_processes // config.num_machines
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={per_machine}"]
    if config.num_machines == 1:
        command.append("--standalone")  # a free local port for the rendezvous
    else:
        command += [f"--nnodes={config.num_machines}", f"--node_rank={settings.TRAIN_MACHINE_RANK}",
                    f"--master_addr={settings.TRAIN_MAIN_PROCESS_IP}",
                    f"--master_port={settings.TRAIN_MAIN_PROCESS_PORT}"]
    return [*command, "-m", "rlhf.training.launch", str(spec_path)]


@dataclass(frozen=True)
class LaunchResult:
    result: dict[str, Any] | None  # the main rank's result event; None when the group was stopped first
    stopped: bool  # a cancel (should_stop) stopped the group
    pids: tuple[int, ...]  # the processes the group had (torchrun and its ranks), for whoever checks them


def _processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, process group id)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] not in ("Z", "X"):
                found[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return found


def process_tree(root: int) -> dict[int, int]:
    """``root`` and its live descendants: pid -> process group id. torchrun starts every rank in a session
    (and process group) of its own, so the group of the run is torchrun's group plus each rank's."""
    table = _processes()
    tree = {root: table[root][1]} if root in table else {}
    grew = True
    while grew:
        grew = False
        for pid, (parent, pgid) in table.items():
            if parent in tree and pid not in tree:
                tree[pid] = pgid
                grew = True
    return tree


def alive(pids: set[int] | tuple[int, ...]) -> set[int]:
    """Those of ``pids`` still running (zombies count as gone)."""
    table = _processes()
    return {pid for pid in pids if pid in table}


def _signal_ours(pids: set[int], marker: bytes, sig: int) -> None:
    """Signal the process group of each of ``pids`` that is still one of the run's (its command line names
    the run's spec, ``marker``; a pid or group id reused by an unrelated process is left alone). torchrun
    and every rank lead a group of their own (a rank's DataLoader workers are in its group)."""
    for pid in sorted(pids):
        try:
            if marker not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
        except OSError:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)


def launch_training(
    *, trainer: str, config: Any, output_dir: Path, data_path: Path | None = None, on_event: OnEvent,
    should_stop: Callable[[], bool], poll_seconds: float = 0.2,
) -> LaunchResult:
    """Train ``config`` with ``config.num_processes`` ranks; ``on_event`` hears the main rank's events.

    Raises :class:`TrainingProcessFailed` with the failure reason when the group fails; returns when it
    finished (``result``) or was stopped (``stopped``, after ``should_stop()`` turned true).
    """
    check_worker_devices(config)
    work = output_dir / LAUNCH_DIR
    work.mkdir(parents=True, exist_ok=True)
    events, errors, log_path = work / "events.jsonl", work / "errors", work / "torchrun.log"
    for stale in (events, log_path, *errors.glob("error-*.json")):
        stale.unlink(missing_ok=True)
    spec = {"trainer": trainer, "config": config_dict(config), "output_dir": str(output_dir),
            "data_path": str(data_path) if data_path is not None else None, "events": str(events),
            "errors_dir": str(errors), "owner_pid": os.getpid()}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    marker = str(spec_path).encode()  # in the command line of torchrun and of every rank
    python_path = [str(REPO_ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the ranks are Django-free
    if settings.TRAIN_CUDA_VISIBLE_DEVICES:
        env["CUDA_VISIBLE_DEVICES"] = settings.TRAIN_CUDA_VISIBLE_DEVICES
    result: dict[str, Any] | None = None
    stopping_since: float | None = None
    seen: set[int] = set()  # every process of the run seen: torchrun, its ranks and theirs
    offset = 0

    def drain() -> None:
        nonlocal offset, result
        if not events.is_file():
            return
        with events.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line the main rank is still writing waits
        offset += len(complete)
        for line in complete.decode().splitlines():
            event = json.loads(line)
            if event["event"] == "result":
                result = event
            else:
                on_event(event)

    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            torchrun_command(config, spec_path), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a cancel reaches every rank
        )
        try:
            while process.poll() is None:
                tree = process_tree(process.pid)
                seen |= set(tree)
                drain()
                if stopping_since is None and should_stop():
                    stopping_since = time.monotonic()
                    _signal_ours(seen, marker, signal.SIGTERM)
                elif (stopping_since is not None
                      and time.monotonic() - stopping_since > settings.TRAIN_STOP_GRACE_SECONDS):
                    _signal_ours(seen, marker, signal.SIGKILL)
                time.sleep(poll_seconds)
            drain()
        finally:
            # No rank outlives its run: whatever of the group is left (a rank torchrun left behind) is killed.
            _signal_ours(seen | {process.pid}, marker, signal.SIGKILL)
            process.wait()
            deadline = time.monotonic() + 10
            while alive(seen) and time.monotonic() < deadline:
                time.sleep(0.05)
    pids = tuple(sorted(seen))
    if result is not None and not result.get("stopped"):
        return LaunchResult(result, False, pids)
    if stopping_since is not None:
        return LaunchResult(result, True, pids)
    if result is not None:  # the ranks stopped on their own (the worker's process was gone)
        return LaunchResult(result, True, pids)
    raise TrainingProcessFailed(failure_of(process.returncode, errors, log_path))


_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def failure_of(returncode: int, errors: Path, log_path: Path) -> str:
    """The failure reason of a group that exited ``returncode``: torchrun's first failed rank, what that
    rank wrote before it exited (an exception, an out-of-memory), or the signal that killed it."""
    log = log_path.read_text(errors="replace") if log_path.is_file() else ""
    cause = _ROOT_CAUSE.search(log)
    rank, code = (int(cause.group(1)), int(cause.group(2))) if cause else (None, returncode)
    written = sorted(errors.glob("error-*.json"), key=lambda p: p.stat().st_mtime) if errors.is_dir() else []
    by_rank = {json.loads(p.read_text())["rank"]: json.loads(p.read_text()) for p in written}
    if code < 0 or rank not in by_rank:
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (the kernel's out-of-memory killer sends SIGKILL)" if -code == signal.SIGKILL else ""
            return (f"Training process rank {rank} was killed by {name}{hint}; the other ranks were stopped. "
                    "Retry resumes from the last checkpoint.")
        if by_rank:  # torchrun named no rank: the first that wrote an error
            rank = next(iter(by_rank))
        else:
            tail = "\n".join(log.strip().splitlines()[-5:])
            return f"The training processes exited with code {code}: {tail}"
    error = by_rank[rank]
    if error["oom"]:
        return (f"Out of memory on rank {rank}: {error['message']}. Lower batch_size or resolution, or use "
                "mixed_precision fp16/bf16.")
    if error["type"] == "FloatingPointError":
        return f"Training diverged (the loss became NaN or infinite) on rank {rank}: {error['message']}"
    return f"{error['type']} on rank {rank}: {error['message']}"


def train_in_group(*, trainer: str, config: Any, output_dir: Path, data_path: Path | None, progress: Any,
                   on_checkpoint: Callable[[int, Path], None] | None = None) -> dict[str, Any] | None:
    """A run's training by a process group, reported through its ``progress`` (:class:`RunProgress`): the
    main rank's result event, or None when the run stopped being this worker's first (cancel, reap)."""

    def on_event(event: Mapping[str, Any]) -> None:
        if event["event"] == "log":
            progress.on_log(int(event["step"]), event["metrics"])
        elif event["event"] == "phase":
            progress.on_phase(event["name"])
        elif event["event"] == "checkpoint" and on_checkpoint is not None:
            on_checkpoint(int(event["step"]), Path(event["dir"]))

    launched = launch_training(trainer=trainer, config=config, output_dir=output_dir, data_path=data_path,
                               on_event=on_event, should_stop=progress.should_stop)
    return None if launched.stopped else launched.result
