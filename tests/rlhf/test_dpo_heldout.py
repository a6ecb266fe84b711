"""DPO's implicit accuracy on held-out pairs (rlhf.training.dpo_eval), on the tiny pipeline and a random LoRA."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from generation.tiny import build_tiny_lora
from rlhf.training.data import iter_rows
from rlhf.training.dpo import tiny_dpo_preset
from rlhf.training.dpo_eval import heldout_implicit_accuracy
from rlhf.training.lora import read_adapter_shape
from rlhf.training.synthetic import write_brightness_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_heldout_implicit_accuracy_reads_the_split_and_is_symmetric(tiny_base_dir: Path, tmp_path: Path) -> None:
    lora = build_tiny_lora(tiny_base_dir, tmp_path / "lora", seed=3)  # non-zero: the policy differs from the base
    pairs = write_brightness_pairs(tmp_path / "pairs.parquet", 40, seed=0)
    decided = sum(not row.is_tie for row in iter_rows(pairs, "validation"))
    config = tiny_dpo_preset(str(tiny_base_dir), **read_adapter_shape(lora).hyperparameters(), cpu=True)

    fit = heldout_implicit_accuracy(config, lora, pairs, draws=2)
    assert fit.n == decided > 0  # the validation split's pairs, ties skipped as training skips them

    # The same pairs with every label the other way round: each pair's margin changes sign, so the two
    # accuracies add up to one.
    table = pq.read_table(pairs)
    swapped = table.set_column(table.schema.get_field_index("label_0"), "label_0", table.column("label_1"))
    swapped = swapped.set_column(table.schema.get_field_index("label_1"), "label_1", table.column("label_0"))
    pq.write_table(swapped, tmp_path / "swapped.parquet")
    other = heldout_implicit_accuracy(config, lora, tmp_path / "swapped.parquet", draws=2)
    assert other.n == fit.n and fit.right + other.right == fit.n
    assert other.margin == pytest.approx(-fit.margin, rel=1e-4) and fit.margin != 0

    # A LoRA measured against itself (a run that continued it and learnt nothing) fits nothing: every pair
    # ties and counts half.
    start = tiny_dpo_preset(str(tiny_base_dir), **read_adapter_shape(lora).hyperparameters(), cpu=True,
                            init_lora=str(lora))
    same = heldout_implicit_accuracy(start, lora, pairs, draws=2)
    assert (same.accuracy, same.margin) == (0.5, 0.0)
    assert heldout_implicit_accuracy(config, lora, pairs, split="test", draws=1).n == sum(
        not row.is_tie for row in iter_rows(pairs, "test"))
