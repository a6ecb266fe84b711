"""Train/validation/test assignment by prompt, deterministic from a seed.

Each prompt's split is a function of (seed, prompt key) alone, so a prompt can never land in
two splits, and adding rows to a project does not move existing prompts between splits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitSpec:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in SPLITS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: a split fraction lies between 0 and 1")
        if abs(self.train + self.validation + self.test - 1.0) > 1e-6:
            raise ValueError("train: the split fractions must add up to 1")

    def assign(self, prompt_key: str) -> str:
        digest = hashlib.sha256(f"{self.seed}\x00{prompt_key}".encode()).digest()
        position = int.from_bytes(digest[:8], "big") / 2**64
        if position < self.train:
            return "train"
        if position < self.train + self.validation:
            return "validation"
        return "test"
