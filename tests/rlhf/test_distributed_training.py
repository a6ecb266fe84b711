"""Distributed training (num_processes > 1): 2 CPU ranks (gloo, through torchrun and rlhf.training.launch)
train as 1 process does on the same global batch (a killed rank, cancel and the product path:
tests/rlhf/test_distributed_runs.py).

Tolerances: the first step's loss within 1e-5 (relative) of one process's (DDPO's within 1e-6 absolute: see
the test); the LoRA or reward-model weights
after 3 steps (2 DDPO iterations) within 1e-4 (absolute; weights up to about 1 and 4.6, each step moves them
by about lr = 1e-3 or 3e-4, so a rank training on the wrong share would be off by more). Measured: at most
2.0e-6 (DPO), 7.0e-6 (DDPO), 8.8e-6 (reward). What differs is only the order in which the ranks' gradients
are summed (gloo's all-reduce) and the per-rank batches' kernel shapes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.runs.distributed import TrainingProcessFailed, alive, failure_of, launch_training
from rlhf.training.configs import RewardModelConfig, tiny_ddpo_preset, tiny_dpo_preset, tiny_reward_preset
from rlhf.training.ddpo import train_ddpo
from rlhf.training.dpo import train_dpo
from rlhf.training.reward_train import train_reward_model
from rlhf.training.synthetic import write_brightness_pairs

# One xdist worker runs the module: its tests share the four launches of ``launched`` (about 85 s of CPU), which
# every worker that ran one of its tests made again.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.xdist_group("distributed_training")]
PROMPTS = ("a cat", "a dog", "a red house", "a tree")
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-4
DDPO_LOSS_ATOL = 1e-6  # measured: 1.7e-7 on an AVX2 machine (DDPO's loss is about 1e-3)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # no ties, so every pair trains and each step takes 4 of the train split's pairs
    return write_brightness_pairs(tmp_path_factory.mktemp("export") / "pairs.parquet", 40, seed=0, tie_fraction=0.0)


def in_group(trainer: str, config, output_dir: Path, data_path: Path | None = None):
    logs: list[tuple[int, dict[str, float]]] = []

    def on_event(event) -> None:
        if event["event"] == "log":
            logs.append((event["step"], event["metrics"]))

    launched = launch_training(trainer=trainer, config=config, output_dir=output_dir, data_path=data_path,
                               on_event=on_event, should_stop=lambda: False)
    assert launched.result is not None and not launched.stopped
    assert launched.pids and not alive(launched.pids)  # every rank and torchrun ended
    return launched.result, logs


def one_process(train, *args):
    """``train(*args, on_log=...)`` in this process: its result and logged metrics."""
    logs: list[tuple[int, dict[str, float]]] = []
    return train(*args, on_log=lambda step, metrics: logs.append((step, dict(metrics)))), logs


DPO_FIELDS = {"batch_size": 4, "max_steps": 3, "shuffle_buffer": 0, "cpu": True}
DDPO_FIELDS = {"iterations": 2, "prompts_per_iteration": 2, "images_per_prompt": 2, "train_batch_size": 2,
               "sample_steps": 3, "cpu": True}
GROUP_DPO_FIELDS = {**DDPO_FIELDS, "objective": "group_dpo", "replay": 2, "inner_epochs": 2}
REWARD_FIELDS = {"batch_size": 4, "max_steps": 3, "epochs": 1, "shuffle_buffer": 0, "cpu": True}


@pytest.fixture(scope="module")
def launched(one_torch_thread: None, tiny_pipeline_dir: Path, pairs: Path, tmp_path_factory: pytest.TempPathFactory):
    """The module's five 2-rank launches, started together, and the one-process runs they are compared with
    (trained here while the ranks start). Most of a launch is its processes importing torch and diffusers,
    during which one launch alone leaves the cores partly idle; each launch has its own spec, output
    directory and processes, and each test reads (``.result()``) only its own."""
    base = tmp_path_factory.mktemp("launched")
    ties = write_brightness_pairs(base / "ties.parquet", 12, seed=0, tie_fraction=1.0)  # no usable pair
    reward_config = tiny_reward_preset(num_processes=2, **REWARD_FIELDS)
    assert isinstance(reward_config, RewardModelConfig)
    with ThreadPoolExecutor(max_workers=5) as pool:
        two = {
            "dpo": pool.submit(in_group, "dpo", tiny_dpo_preset(str(tiny_pipeline_dir), num_processes=2,
                                                                 **DPO_FIELDS), base / "dpo-two", pairs),
            "ddpo": pool.submit(in_group, "ddpo", tiny_ddpo_preset(str(tiny_pipeline_dir), PROMPTS,
                                                                   num_processes=2, **DDPO_FIELDS), base / "ddpo-two"),
            "group_dpo": pool.submit(in_group, "ddpo", tiny_ddpo_preset(str(tiny_pipeline_dir), PROMPTS, num_processes=2,
                                                                        **GROUP_DPO_FIELDS), base / "group-dpo-two"),
            "reward": pool.submit(in_group, "reward", reward_config, base / "reward-two", pairs),
            "raises": pool.submit(
                launch_training, trainer="dpo", output_dir=base / "raises", data_path=ties,
                config=tiny_dpo_preset(str(tiny_pipeline_dir), batch_size=4, max_steps=2, cpu=True, num_processes=2),
                on_event=lambda event: None, should_stop=lambda: False),
        }
        one = {
            "dpo": one_process(train_dpo, tiny_dpo_preset(str(tiny_pipeline_dir), **DPO_FIELDS), pairs,
                               base / "dpo-one"),
            "ddpo": one_process(train_ddpo, tiny_ddpo_preset(str(tiny_pipeline_dir), PROMPTS, **DDPO_FIELDS),
                                base / "ddpo-one"),
            "group_dpo": one_process(train_ddpo, tiny_ddpo_preset(str(tiny_pipeline_dir), PROMPTS, **GROUP_DPO_FIELDS),
                                     base / "group-dpo-one"),
            "reward": one_process(train_reward_model, tiny_reward_preset(**REWARD_FIELDS), pairs, base / "reward-one"),
        }
        wait(two.values())
    return one, two


def assert_same_weights(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> None:
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=WEIGHT_ATOL, rtol=0)


def test_dpo_two_processes_train_as_one(launched) -> None:
    (one, one_logs), two = launched[0]["dpo"], launched[1]["dpo"]
    result, two_logs = two.result()
    assert [s for s, _ in two_logs] == [1, 2, 3] and result["step"] == 3
    assert two_logs[0][1]["loss"] == pytest.approx(one_logs[0][1]["loss"], rel=LOSS_RTOL)
    assert two_logs[0][1]["pairs"] == one_logs[0][1]["pairs"] == 4
    assert_same_weights(load_file(one.lora_dir / "pytorch_lora_weights.safetensors"),
                        load_file(Path(result["dir"]) / "pytorch_lora_weights.safetensors"))


def test_ddpo_two_processes_train_as_one(launched) -> None:
    (one, one_logs), two = launched[0]["ddpo"], launched[1]["ddpo"]
    result, two_logs = two.result()
    assert [s for s, _ in two_logs] == [1, 2] and result["step"] == 2
    for key in ("reward_mean", "reward_std"):  # rewards gathered from both ranks before normalising
        assert two_logs[0][1][key] == pytest.approx(one_logs[0][1][key], rel=LOSS_RTOL, abs=1e-7), key
    # The surrogate loss is a mean of advantage-weighted ratios whose advantages sum to zero in each group: a
    # near-cancelling sum of terms of order 1, so float32 rounding (about 1e-7 a term, kernels differing with
    # the ranks' batch shapes and the CPU's vector width) shows in absolute terms, not relative to the sum.
    assert two_logs[0][1]["loss"] == pytest.approx(one_logs[0][1]["loss"], abs=DDPO_LOSS_ATOL)
    assert one_logs[0][1]["loss"] != 0
    assert_same_weights(load_file(one.lora_dir / "pytorch_lora_weights.safetensors"),
                        load_file(Path(result["dir"]) / "pytorch_lora_weights.safetensors"))


def test_ddpo_group_dpo_two_processes_train_as_one(launched) -> None:
    """group_dpo: both ranks pair the gathered groups alike and each trains its share of every pair batch."""
    (one, one_logs), two = launched[0]["group_dpo"], launched[1]["group_dpo"]
    result, two_logs = two.result()
    assert [s for s, _ in two_logs] == [1, 2] and result["step"] == 2
    assert [m["pairs"] for _, m in two_logs] == [m["pairs"] for _, m in one_logs] == [2, 2]
    assert [m["replayed_pairs"] for _, m in two_logs] == [2, 4]
    for key in ("loss", "reward_mean", "implicit_accuracy"):
        assert two_logs[1][1][key] == pytest.approx(one_logs[1][1][key], rel=LOSS_RTOL, abs=1e-7), key
    assert_same_weights(load_file(one.lora_dir / "pytorch_lora_weights.safetensors"),
                        load_file(Path(result["dir"]) / "pytorch_lora_weights.safetensors"))


def test_reward_model_two_processes_train_as_one(launched) -> None:
    (one, one_logs), two = launched[0]["reward"], launched[1]["reward"]
    result, two_logs = two.result()
    steps = [(s, m) for s, m in two_logs if "loss" in m]
    assert [s for s, _ in steps] == [1, 2, 3] and result["step"] == 3
    assert steps[0][1]["loss"] == pytest.approx(one_logs[0][1]["loss"], rel=LOSS_RTOL)
    assert result["test"]["pairs"] == one.test.pairs
    assert_same_weights(load_file(one.model_dir / "model.safetensors"),
                        load_file(Path(result["dir"]) / "model.safetensors"))


def test_a_rank_that_raises_fails_the_group_with_its_error(launched) -> None:
    with pytest.raises(TrainingProcessFailed, match=r"^ValueError on rank [01]: .*yields no usable pairs"):
        launched[1]["raises"].result()


def test_an_out_of_memory_on_any_rank_is_named_with_its_rank(tmp_path: Path) -> None:
    """What a rank writes when it runs out of memory (rlhf.training.launch), read back as the run's reason."""
    import json

    (tmp_path / "errors").mkdir()
    (tmp_path / "errors" / "error-1.json").write_text(json.dumps(
        {"rank": 1, "type": "OutOfMemoryError", "message": "CUDA out of memory. Tried to allocate 2.00 GiB",
         "oom": True}))
    (tmp_path / "torchrun.log").write_text(
        "Root Cause (first observed failure):\n[0]:\n  rank      : 1 (local_rank: 1)\n  exitcode  : 1 (pid: 7)\n")
    assert failure_of(1, tmp_path / "errors", tmp_path / "torchrun.log") == (
        "Out of memory on rank 1: CUDA out of memory. Tried to allocate 2.00 GiB. Lower batch_size or "
        "resolution, or use mixed_precision fp16/bf16.")
