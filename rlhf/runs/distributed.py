"""Runs with ``num_processes`` > 1: checked before anything starts, trained by a child process group.

The Celery task (the parent) starts ``python -m torch.distributed.run`` (torchrun: one process per rank,
gloo on the CPU, nccl on CUDA) running :mod:`rlhf.training.launch` in a new session, so the ranks form one
process group. The parent keeps the run's lease heartbeat, tails the events the main rank writes
(progress, metrics, checkpoints, the result), forwards a cancel as SIGTERM to the whole group (SIGKILL after
``TRAIN_STOP_GRACE_SECONDS``), and turns a failed group (a rank that raised, ran out of memory or was killed)
into the run's failure reason. Whatever happens, no process of the group outlives the call.

Several machines (``num_machines`` > 1): the run's task is machine rank 0. It makes one
:class:`rlhf.models.TrainingNode` per other machine for its attempt and queues ``rlhf.tasks.training_node_run``
for each on ``TRAIN_NODE_QUEUE``; a node worker on another machine claims one (:func:`training_node_execute`)
and starts that machine's torchrun with its machine rank against the same static rendezvous (this worker's
``TRAIN_MAIN_PROCESS_IP``/``_PORT`` and a rendezvous id of the run's attempt). Only global rank 0 (on the main
machine) writes events, so progress, metrics, checkpoints and the result come in as on one machine. The node
workers heartbeat their rows; the run's task (:class:`Machines`) fails the run when one fails, stops
heartbeating (``TRAIN_NODE_LEASE_SECONDS``: its machine died) or is not taken within
``TRAIN_RENDEZVOUS_TIMEOUT``. A cancel reaches the other machines' ranks through the ranks' own stop
agreement (an all-reduce) and through their rows, which the run's task cancels when it ends; a node worker
also stops its group when the run is no longer running in its attempt. Every machine must see the run's
directory and data at the same paths (shared storage): the ranks resume from the main process's checkpoints.
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
from django.db import transaction
from django.utils import timezone

from core import jobs
from core.exceptions import ApplicationError
from core.models import JobPhase, JobStatus
from core.tasks import enqueue_on_commit
from rlhf.models import FineTuneRun, RewardModelRun, TrainingNode
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
            "TRAIN_MAIN_PROCESS_PORT) for the gpu-train workers, and start a node worker on "
            f"{settings.TRAIN_NODE_QUEUE} on each other machine.", field="num_machines")


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


@dataclass(frozen=True)
class Rendezvous:
    """Where the machines of a run over several machines meet: the main machine's address and port (its
    torchrun hosts the store there) and an id of the run's attempt (the store's key prefix)."""

    host: str
    port: int
    id: str


def torchrun_command(config: Any, spec_path: Path, *, machine_rank: int = 0,
                     rendezvous: Rendezvous | None = None) -> list[str]:
    per_machine = config.num_processes // config.num_machines
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={per_machine}"]
    if config.num_machines == 1:
        command.append("--standalone")  # a free local port for the rendezvous
    else:
        if rendezvous is None:
            raise ValueError("a run over several machines needs its rendezvous")
        # static rendezvous: machine ranks as given (rank 0, the main process, is on the main machine)
        command += [f"--nnodes={config.num_machines}", f"--node_rank={machine_rank}",
                    f"--master_addr={rendezvous.host}", f"--master_port={rendezvous.port}",
                    f"--rdzv-id={rendezvous.id}", f"--rdzv-conf=timeout={settings.TRAIN_RENDEZVOUS_TIMEOUT}"]
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
    should_stop: Callable[[], bool], poll_seconds: float = 0.2, machine_rank: int = 0,
    rendezvous: Rendezvous | None = None, check: Callable[[], None] | None = None,
) -> LaunchResult:
    """Train ``config`` with ``config.num_processes`` ranks; ``on_event`` hears the main rank's events.

    Raises :class:`TrainingProcessFailed` with the failure reason when the group fails (or ``check()``,
    called at every poll, raises it: the group is killed); returns when it finished (``result``) or was
    stopped (``stopped``, after ``should_stop()`` turned true). With several machines, this machine's part
    (``machine_rank``, meeting the others at ``rendezvous``) works in a launch directory of its own; a
    machine other than the main one has no result (its ranks write no events): exiting 0 is its success.
    """
    check_worker_devices(config)
    work = output_dir / (LAUNCH_DIR if machine_rank == 0 else f"{LAUNCH_DIR}-machine-{machine_rank}")
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
            torchrun_command(config, spec_path, machine_rank=machine_rank, rendezvous=rendezvous), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a cancel reaches every rank
        )
        try:
            while process.poll() is None:
                tree = process_tree(process.pid)
                seen |= set(tree)
                drain()
                if check is not None:
                    check()
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
    if machine_rank > 0 and process.returncode == 0:
        return LaunchResult(None, stopping_since is not None, pids)
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


TRAINING_NODE_RUN = "rlhf.tasks.training_node_run"
RUN_MODELS: dict[str, Any] = {TrainingNode.RunKind.REWARD: RewardModelRun, TrainingNode.RunKind.FINETUNE: FineTuneRun}
CHECK_SECONDS = 1.0  # how often the run's task reads its machines' rows
# What a rank that lost a peer raises (gloo, nccl): the cause is on the other machine.
_PEER_LOST = re.compile(r"closed by peer|reset by peer|Broken pipe|Connection refused|recvBytes|NCCL communicator was "
                        r"aborted|DistNetworkError|Socket Timeout", re.I)


class Machines:
    """The other machines of the run's attempt, as the run's task sees them (their :class:`TrainingNode` rows)."""

    def __init__(self, *, kind: str, run_id: int, attempt: int, total: int, rendezvous: Rendezvous) -> None:
        self.kind, self.run_id, self.attempt, self.total = kind, run_id, attempt, total
        self.rendezvous = rendezvous
        self.started = time.monotonic()
        self._last_check = 0.0

    @classmethod
    def start(cls, *, lease: jobs.Lease, trainer: str, config: Any, output_dir: Path,
              data_path: Path | None) -> Machines:
        """Make the attempt's rows, one per other machine, and queue a node worker's task for each."""
        if not settings.TRAIN_MAIN_PROCESS_IP:
            raise TrainingProcessFailed(
                f"num_machines {config.num_machines} needs TRAIN_MAIN_PROCESS_IP (this gpu-train worker's address as "
                "the other machines reach it); it is not set on this worker.")
        kind = next(k for k, model in RUN_MODELS.items() if model is lease.model)
        rendezvous = Rendezvous(settings.TRAIN_MAIN_PROCESS_IP, settings.TRAIN_MAIN_PROCESS_PORT,
                                f"pickwise-{kind}-{lease.pk}-{jobs.attempt_name(lease.attempt)}")
        spec = {"trainer": trainer, "config": config_dict(config), "output_dir": str(output_dir),
                "data_path": str(data_path) if data_path is not None else None,
                "rendezvous": {"host": rendezvous.host, "port": rendezvous.port, "id": rendezvous.id}}
        with transaction.atomic():
            nodes = [TrainingNode.objects.create(run_kind=kind, run_id=lease.pk, run_attempt=lease.attempt,
                                                 machine_rank=rank, spec=spec, max_attempts=1)
                     for rank in range(1, config.num_machines)]
            for node in nodes:
                enqueue_on_commit(TRAINING_NODE_RUN, node.pk)
        return cls(kind=kind, run_id=lease.pk, attempt=lease.attempt, total=config.num_machines, rendezvous=rendezvous)

    def nodes(self) -> list[TrainingNode]:
        return list(TrainingNode.objects.filter(run_kind=self.kind, run_id=self.run_id, run_attempt=self.attempt))

    def _name(self, node: TrainingNode) -> str:
        where = f" ({node.leased_by})" if node.leased_by else ""
        return f"Machine {node.machine_rank} of {self.total}{where}"

    def problem(self) -> str | None:
        """Why the run cannot go on, if one of its machines failed, died or never joined."""
        now = timezone.now()
        waited = time.monotonic() - self.started
        for node in self.nodes():
            if node.status == JobStatus.FAILED:
                return f"{self._name(node)}: {node.error}"
            if node.status == JobStatus.RUNNING and node.lease_expires_at is not None and node.lease_expires_at < now:
                silent = (now - node.heartbeat_at).total_seconds() if node.heartbeat_at else 0.0
                return (f"{self._name(node)} stopped answering: no heartbeat for {silent:.0f} s "
                        f"(TRAIN_NODE_LEASE_SECONDS {settings.TRAIN_NODE_LEASE_SECONDS}); its node worker or the "
                        "machine died. The other machines' processes were stopped; retry resumes from the last "
                        "checkpoint.")
            if node.status == JobStatus.QUEUED and waited > settings.TRAIN_RENDEZVOUS_TIMEOUT:
                return (f"{self._name(node)} never joined: no node worker on the {settings.TRAIN_NODE_QUEUE} queue "
                        f"took its part within {settings.TRAIN_RENDEZVOUS_TIMEOUT} s (TRAIN_RENDEZVOUS_TIMEOUT). Start "
                        "one node worker on each other machine (README, Training on several machines).")
        return None

    def check(self) -> None:
        """Called at every poll of the group: raise the problem, if any (read at most once a second)."""
        if time.monotonic() - self._last_check < CHECK_SECONDS:
            return
        self._last_check = time.monotonic()
        if (problem := self.problem()) is not None:
            raise TrainingProcessFailed(problem)

    def settled_problem(self) -> str | None:
        """After this machine's group ended on its own: wait until every other machine has ended or is known
        dead (at most a node lease and a few seconds), then the problem, if any."""
        deadline = time.monotonic() + settings.TRAIN_NODE_LEASE_SECONDS + 5
        while True:
            problem = self.problem()
            live = [n for n in self.nodes() if n.status in (JobStatus.QUEUED, JobStatus.RUNNING)]
            if problem is not None or not live or time.monotonic() > deadline:
                return problem
            time.sleep(CHECK_SECONDS / 2)

    def failure(self, own: str, *, joined: bool) -> str:
        """The run's failure reason once this machine's group failed with ``own``: another machine's problem
        when it caused it (this machine's ranks only lost their peers), else ``own``."""
        if not joined and time.monotonic() - self.started >= settings.TRAIN_RENDEZVOUS_TIMEOUT:
            problem = self.problem()
            return problem or (
                f"The {self.total} machines did not meet at {self.rendezvous.host}:{self.rendezvous.port} within "
                f"{settings.TRAIN_RENDEZVOUS_TIMEOUT} s (TRAIN_RENDEZVOUS_TIMEOUT): every machine must reach that "
                "address (TRAIN_MAIN_PROCESS_IP/_PORT of the gpu-train worker).")
        problem = self.settled_problem()
        if problem is not None and (_PEER_LOST.search(own) or "stopped answering" in problem):
            return problem
        return own

    def end(self, *, trained: bool) -> None:
        """The run's task is done with its machines: those still queued or running are cancelled (their node
        workers stop their groups at their next stop check). After a run that ``trained`` to its end, they
        first get a few seconds to see their ranks exit and record it."""
        deadline = time.monotonic() + (10 if trained else 0)
        while any(n.status == JobStatus.RUNNING for n in self.nodes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for node in self.nodes():
            if not node.is_finished:
                with contextlib.suppress(ApplicationError):
                    jobs.job_cancel(TrainingNode, node.pk)


def train_in_group(*, trainer: str, config: Any, output_dir: Path, data_path: Path | None, progress: Any,
                   on_checkpoint: Callable[[int, Path], None] | None = None) -> dict[str, Any] | None:
    """A run's training by a process group, reported through its ``progress`` (:class:`RunProgress`): the
    main rank's result event, or None when the run stopped being this worker's first (cancel, reap). With
    several machines, the others' parts are handed to node workers first (:class:`Machines`)."""
    heard: list[str] = []

    def on_event(event: Mapping[str, Any]) -> None:
        heard.append(event["event"])
        if event["event"] == "log":
            progress.on_log(int(event["step"]), event["metrics"])
        elif event["event"] == "phase":
            progress.on_phase(event["name"])
        elif event["event"] == "checkpoint" and on_checkpoint is not None:
            on_checkpoint(int(event["step"]), Path(event["dir"]))

    if config.num_machines == 1:
        launched = launch_training(trainer=trainer, config=config, output_dir=output_dir, data_path=data_path,
                                   on_event=on_event, should_stop=progress.should_stop)
        return None if launched.stopped else launched.result
    machines = Machines.start(lease=progress.heartbeat.lease, trainer=trainer, config=config,
                              output_dir=output_dir, data_path=data_path)
    trained = False
    try:
        try:
            launched = launch_training(trainer=trainer, config=config, output_dir=output_dir, data_path=data_path,
                                       on_event=on_event, should_stop=progress.should_stop,
                                       rendezvous=machines.rendezvous, check=machines.check)
        except TrainingProcessFailed as exc:
            reason = str(exc)
            if not reason.startswith("Machine "):  # this machine's own group failed: who caused it?
                reason = machines.failure(reason, joined=bool(heard))
            raise TrainingProcessFailed(reason) from exc
        if launched.stopped and not progress.should_stop():
            # The ranks stopped, but not for a cancel of ours: another machine's node worker went away.
            problem = machines.settled_problem()
            if problem is not None:
                raise TrainingProcessFailed(problem)
        trained = not launched.stopped
        return launched.result if trained else None
    finally:
        machines.end(trained=trained)


def _run_in_attempt(node: TrainingNode) -> bool:
    return RUN_MODELS[node.run_kind].objects.filter(pk=node.run_id, status=JobStatus.RUNNING,
                                                    attempts=node.run_attempt).exists()


def training_node_execute(*, node_id: int) -> TrainingNode | None:
    """A node worker's part of a run over several machines: this machine's ranks, until the group ends.

    Claims the row (a no-op unless it is queued), heartbeats it while its torchrun runs, and ends it:
    succeeded when its ranks exited cleanly, failed with their reason otherwise. Its group is stopped
    (SIGTERM, then SIGKILL) when the row is cancelled or the run is no longer running in its attempt.
    """
    from rlhf.training.launch import build_config  # Django-free; the node worker has torch

    claimed = jobs.job_claim(TrainingNode, node_id, phase=JobPhase.STARTING,
                             lease_seconds=settings.TRAIN_NODE_LEASE_SECONDS)
    if claimed is None:
        return TrainingNode.objects.filter(pk=node_id).first()
    node, lease = claimed
    spec = node.spec
    with jobs.JobHeartbeat(lease) as heartbeat:
        last_look = [0.0, True]

        def should_stop() -> bool:
            if heartbeat.should_stop():
                return True
            if time.monotonic() - last_look[0] >= CHECK_SECONDS:
                last_look[:] = [time.monotonic(), _run_in_attempt(node)]
            return not last_look[1]

        try:
            output_dir = Path(spec["output_dir"])
            data_path = Path(spec["data_path"]) if spec.get("data_path") else None
            for what, path in (("the run's directory", output_dir), ("the run's data", data_path)):
                if path is not None and not path.exists():
                    raise TrainingProcessFailed(
                        f"this machine cannot see {what} {path}: every machine of a run over several machines "
                        "needs the run directories and exports on shared storage, at the same paths.")
            heartbeat.phase(JobPhase.TRAINING)
            launch_training(trainer=spec["trainer"], config=build_config(spec["trainer"], spec["config"]),
                            output_dir=output_dir, data_path=data_path, on_event=lambda event: None,
                            should_stop=should_stop, machine_rank=node.machine_rank,
                            rendezvous=Rendezvous(**spec["rendezvous"]))
        except Exception as exc:
            reason = str(exc) if isinstance(exc, TrainingProcessFailed) else f"{type(exc).__name__}: {exc}"
            jobs.job_fail(lease, reason)
            return TrainingNode.objects.get(pk=node_id)
    if RUN_MODELS[node.run_kind].objects.filter(pk=node.run_id, status=JobStatus.CANCELLED).exists():
        with contextlib.suppress(ApplicationError):  # the run's task may have cancelled it first
            jobs.job_cancel(TrainingNode, node.pk)  # its ranks stopped with the others', for the run's cancel
    else:
        jobs.job_finish(lease)
    return TrainingNode.objects.get(pk=node_id)


def training_nodes_reap_expired() -> int:
    """Fail the rows of machines whose node worker died after the run's task stopped watching them."""
    return jobs.jobs_reap(TrainingNode, task_name=TRAINING_NODE_RUN, what="running this machine's part")
