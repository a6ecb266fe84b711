"""Runs over several machines (num_machines > 1), with two "machines" on loopback: a real Celery worker on a
gpu-train queue runs the run's task (machine rank 0) and a second real worker, the node worker, runs the other
machine's part from TRAIN_NODE_QUEUE. A reward run of 2 machines x 1 process trains as one process on the same
global batch (the tolerances of tests/rlhf/test_distributed_training.py); a machine that dies mid-run (its node
worker, torchrun and rank all SIGKILLed) fails the run with a reason naming it; a machine that never joins fails
the run after TRAIN_RENDEZVOUS_TIMEOUT; and a failure is blamed on the machine that caused it (rows only).

Each run costs four processes' imports of torch (two torchruns, two ranks), so one success and one death share
the workers; the workers run with a 3 s node lease and a heartbeat every second.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from safetensors.torch import load_file

from rlhf import tasks
from rlhf.models import RewardModelRun, RunStatus, TrainingNode
from rlhf.runs import paths, reward
from rlhf.runs.distributed import LAUNCH_DIR, Machines, Rendezvous, TrainingProcessFailed, alive, process_tree
from rlhf.training.configs import RewardModelConfig
from rlhf.training.reward_train import train_reward_model
from tests.workers import processes_naming, start_worker, stop, wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-4  # as tests/rlhf/test_distributed_training.py
# no shuffle: one process and two ranks see the same global batches (test_distributed_training.py does the same)
TWO_MACHINES = {"batch_size": 4, "max_steps": 3, "epochs": 1, "shuffle_buffer": 0, "num_processes": 2,
                "num_machines": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launched_pids(run: RewardModelRun, launch_dir: str) -> set[int]:
    """The live torchrun and ranks of one machine's part of the run's first attempt (their command lines name
    that machine's launch spec)."""
    return processes_naming(paths.reward_run_dir(run) / "attempt-1" / launch_dir / "spec.json")


def finished(run_id: int, seconds: float, logs: list[Path]) -> RewardModelRun:
    def ended() -> RewardModelRun | None:
        run = RewardModelRun.objects.get(pk=run_id)
        return run if run.is_finished else None

    try:
        return wait_for(ended, seconds, f"reward run {run_id} to end", poll=0.3)
    except AssertionError:
        tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists())
        raise AssertionError(f"run {run_id} did not end: {RewardModelRun.objects.get(pk=run_id).status}\n{tails}") from None


@pytest.fixture
def loopback_machines(transactional_db, tmp_path):
    """Two "machines" on loopback: a worker for the run's task (machine rank 0, the rendezvous on a free port)
    and a node worker, each on a private queue (requested first: they boot while the data fixtures run)."""
    suffix = uuid.uuid4().hex[:8]
    main_queue, node_queue = f"multinode-main-{suffix}", f"multinode-node-{suffix}"
    env = {"TRAIN_MAIN_PROCESS_IP": "127.0.0.1", "TRAIN_MAIN_PROCESS_PORT": str(free_port()),
           "TRAIN_NODE_QUEUE": node_queue, "TRAIN_NODE_LEASE_SECONDS": "3", "JOB_HEARTBEAT_SECONDS": "1",
           "TRAIN_RENDEZVOUS_TIMEOUT": "120"}
    logs = [tmp_path / "main-worker.log", tmp_path / "node-worker.log"]
    main = start_worker(logs[0], main_queue, **env)
    node = start_worker(logs[1], node_queue, **env)
    yield {"main_queue": main_queue, "env": env, "logs": logs, "node": node}
    stop(main)
    stop(node)


@pytest.mark.django_db(transaction=True)
def test_two_machines_train_as_one_process_and_a_dead_machine_fails_the_run(
    loopback_machines, pairs_export, ml_engineer, settings, tmp_path
):
    main_queue, env, logs = loopback_machines["main_queue"], loopback_machines["env"], loopback_machines["logs"]
    settings.TRAIN_MAIN_PROCESS_IP = "127.0.0.1"  # what the API checks before anything starts
    run = reward.reward_run_create(user=ml_engineer, export=pairs_export, preset="tiny",
                                   hyperparameters=TWO_MACHINES, enqueue=False)
    tasks.train_reward_model.apply_async(args=[run.pk], queue=main_queue)
    run = finished(run.pk, 150, logs)
    assert run.status == RunStatus.SUCCEEDED, run.error
    [part] = TrainingNode.objects.all()
    assert (part.run_kind, part.run_id, part.run_attempt, part.machine_rank) == ("reward", run.pk, 1, 1)
    assert part.status == RunStatus.SUCCEEDED and part.leased_by != run.leased_by, part.error
    assert part.spec["rendezvous"] == {"host": "127.0.0.1", "port": int(env["TRAIN_MAIN_PROCESS_PORT"]),
                                       "id": f"pickwise-reward-{run.pk}-attempt-1"}
    assert not launched_pids(run, LAUNCH_DIR) and not launched_pids(run, f"{LAUNCH_DIR}-machine-1")
    # Only the main process reports: one point per step, from global rank 0.
    steps = [p for p in run.history if "loss" in p]
    assert [p["step"] for p in steps] == [1, 2, 3] and run.results["step"] == 3

    # The same global batches in one process: the same first loss and (after 3 steps) the same weights.
    one_logs: list[tuple[int, dict[str, float]]] = []
    config = RewardModelConfig(**{**run.config, "num_processes": 1, "num_machines": 1})
    one = train_reward_model(config, paths.run_data_path(run), tmp_path / "one",
                             on_log=lambda step, metrics: one_logs.append((step, dict(metrics))))
    assert steps[0]["loss"] == pytest.approx(one_logs[0][1]["loss"], rel=LOSS_RTOL)
    ours, theirs = load_file(one.model_dir / "model.safetensors"), load_file(
        Path(run.registered_version.path) / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert (theirs[key] - ours[key]).abs().max().item() <= WEIGHT_ATOL, key

    # A machine dies mid-run: its node worker, torchrun and rank are SIGKILLed at once.
    long = reward.reward_run_create(user=ml_engineer, export=pairs_export, preset="tiny", enqueue=False,
                                    hyperparameters={**TWO_MACHINES, "max_steps": 100_000, "epochs": 1000})
    tasks.train_reward_model.apply_async(args=[long.pk], queue=main_queue)
    wait_for(lambda: RewardModelRun.objects.get(pk=long.pk).step >= 2 or RewardModelRun.objects.get(
        pk=long.pk).is_finished, 150, "the second run's second step", poll=0.3)
    long.refresh_from_db()
    assert long.status == RunStatus.RUNNING, long.error
    victims = launched_pids(long, f"{LAUNCH_DIR}-machine-1")
    assert len(victims) == 2  # that machine's torchrun and its rank
    stop(loopback_machines["node"], signal.SIGKILL)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    long = finished(long.pk, 60, logs)
    assert long.status == RunStatus.FAILED
    assert long.error.startswith("Machine 1 of 2 (") and "stopped answering: no heartbeat for" in long.error, (
        long.error)
    assert "its node worker or the machine died" in long.error
    assert not launched_pids(long, LAUNCH_DIR)  # the main machine's torchrun and rank were stopped
    assert not alive(victims)


@pytest.mark.django_db
def test_a_machine_that_never_joins_fails_the_run_after_the_rendezvous_timeout(pairs_export, ml_engineer, settings):
    """No node worker takes the other machine's part (its task is never even sent: the test's transaction never
    commits); the main machine's torchrun waits at the rendezvous until TRAIN_RENDEZVOUS_TIMEOUT."""
    settings.TRAIN_MAIN_PROCESS_IP = "127.0.0.1"
    settings.TRAIN_MAIN_PROCESS_PORT = free_port()
    settings.TRAIN_RENDEZVOUS_TIMEOUT = 3
    run = reward.reward_run_create(user=ml_engineer, export=pairs_export, preset="tiny",
                                   hyperparameters=TWO_MACHINES, enqueue=False)
    started = time.monotonic()
    run = reward.reward_run_execute(run_id=run.pk)
    assert run.status == RunStatus.FAILED
    assert run.error == (
        "Machine 1 of 2 never joined: no node worker on the gpu-train-node queue took its part within 3 s "
        "(TRAIN_RENDEZVOUS_TIMEOUT). Start one node worker on each other machine (README, Training on several "
        "machines).")
    assert time.monotonic() - started < 60
    [part] = TrainingNode.objects.all()
    assert part.status == RunStatus.CANCELLED  # the run's task took its part back
    assert not process_tree(os.getpid()).keys() - {os.getpid()}


@pytest.mark.django_db
def test_a_failure_is_blamed_on_the_machine_that_caused_it(settings):
    """Which reason the run gets when its main machine's group fails: the other machine's own, when the main
    machine's ranks only lost their peer; the main machine's, when its own rank failed first; a dead machine's
    (no heartbeat for a node lease) whatever the main machine saw; a part nobody took, once the rendezvous
    time has passed."""
    settings.TRAIN_NODE_LEASE_SECONDS, settings.TRAIN_RENDEZVOUS_TIMEOUT = 2, 600
    machines = Machines(kind="reward", run_id=7, attempt=1, total=3,
                        rendezvous=Rendezvous("10.0.0.5", 29500, "pickwise-reward-7-attempt-1"))
    parts = [TrainingNode.objects.create(run_kind="reward", run_id=7, run_attempt=1, machine_rank=rank,
                                         max_attempts=1) for rank in (1, 2)]
    assert machines.problem() is None  # both still queued, well within the rendezvous time
    two = TrainingNode.objects.filter(pk=parts[1].pk)
    two.update(status=RunStatus.FAILED, leased_by="gpu-b:42", error="Out of memory on rank 2: CUDA out of memory")
    lost_peer = ("RuntimeError on rank 0: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed "
                 "by peer [10.0.0.6]:4242")
    own_oom = "Out of memory on rank 0: CUDA out of memory. Lower batch_size or resolution, or use mixed_precision."
    assert machines.failure(lost_peer, joined=True) == (
        "Machine 2 of 3 (gpu-b:42): Out of memory on rank 2: CUDA out of memory")
    assert machines.failure(own_oom, joined=True) == own_oom

    now = timezone.now()
    two.update(status=RunStatus.RUNNING, error="", lease_token=uuid.uuid4(), heartbeat_at=now - timedelta(seconds=5),
               lease_expires_at=now - timedelta(seconds=3))
    assert machines.failure(own_oom, joined=True) == (
        "Machine 2 of 3 (gpu-b:42) stopped answering: no heartbeat for 5 s (TRAIN_NODE_LEASE_SECONDS 2); its node "
        "worker or the machine died. The other machines' processes were stopped; retry resumes from the last "
        "checkpoint.")

    two.update(status=RunStatus.SUCCEEDED, lease_token=None, lease_expires_at=None)
    machines.started -= 601
    never = ("Machine 1 of 3 never joined: no node worker on the gpu-train-node queue took its part within 600 s "
             "(TRAIN_RENDEZVOUS_TIMEOUT). Start one node worker on each other machine (README, Training on several "
             "machines).")
    assert machines.problem() == never
    assert machines.failure("The training processes exited with code 1: ...", joined=False) == never
    with pytest.raises(TrainingProcessFailed, match="^Machine 1 of 3 never joined"):
        machines.check()
