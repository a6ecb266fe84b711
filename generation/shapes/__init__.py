"""Pickwise's built-in shapes world: a procedural dataset, a small diffusers text-to-image model
trained on it (``generation.shapes.train``), and a judge of prompt adherence. Django-free.

Light imports only here (numpy, scipy, PIL); the torch/diffusers parts live in
``generation.shapes.model`` and ``generation.shapes.train``.
"""

from __future__ import annotations

from generation.shapes.judge import Judgement, judge, judge_many, summarize
from generation.shapes.world import (
    HELD_OUT_PAIRS,
    Scene,
    ShapeSpec,
    make_examples,
    parse_caption,
    prompt_captions,
)

__all__ = [
    "HELD_OUT_PAIRS",
    "Judgement",
    "Scene",
    "ShapeSpec",
    "judge",
    "judge_many",
    "make_examples",
    "parse_caption",
    "prompt_captions",
    "summarize",
]
