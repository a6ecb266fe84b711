"""Callbacks the fine-tune trainers call: their types, and a runner that keeps training deterministic.

``on_checkpoint(step, directory)`` runs after a checkpoint directory under ``checkpoints/`` is complete
(LoRA weights, metadata and training state written; ``pipe.load_lora_weights(directory)`` loads it),
on the main process only. It may do anything with the global random state (load a pipeline, sample
images): :func:`notify_checkpoint` saves the torch, NumPy and ``random`` states first and restores them
afterwards, so a run with a callback trains exactly as one without. An exception it raises is not
caught: a caller that wants to carry on after a failed callback catches inside it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

OnCheckpoint = Callable[[int, Path], None]


def notify_checkpoint(on_checkpoint: OnCheckpoint | None, step: int, directory: Path) -> None:
    """Call ``on_checkpoint(step, directory)`` with every global random generator saved and restored."""
    if on_checkpoint is None:
        return
    numpy_state, python_state = np.random.get_state(), random.getstate()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            on_checkpoint(step, Path(directory))
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
