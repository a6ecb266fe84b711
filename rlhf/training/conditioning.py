"""Whether a reward model directory conditions on the source image (image-editing preferences), torch-free.

A latent reward model records it in its ``config.json`` (``condition_on_source``); a CLIP reward model's
directory holds its source-conditioned head (``source_head.json`` + ``source_head.safetensors``). See
:mod:`rlhf.training.reward_base` for what such a model computes.
"""

from __future__ import annotations

import json
from pathlib import Path

SOURCE_HEAD_CONFIG = "source_head.json"  # a CLIP reward model directory's source-conditioned head


def conditions_on_source(path: str | Path) -> bool:
    """Whether the reward model directory at ``path`` conditions on the source image (False for anything that
    is not such a directory, a hub id included)."""
    directory = Path(path)
    if not (directory / "config.json").is_file():
        return False
    if (directory / SOURCE_HEAD_CONFIG).is_file():
        return True
    return bool(json.loads((directory / "config.json").read_text()).get("condition_on_source", False))
