"""What every reward model shares: the image transform and the scoring interface.

A reward model is an ``nn.Module`` whose ``forward(captions, pixel_values, list_index)`` returns one
reward per image, with an :class:`ImageTransform` that turns a PIL image into its ``pixel_values`` and a
``save_pretrained(directory)`` that writes a directory :func:`rlhf.training.reward_model.load_reward_model`
reads back (``config.json`` naming the ``model_type``, ``model.safetensors``, tokenizer files and
``preprocess.json``). Two kinds exist: the PickScore-style CLIP (:mod:`rlhf.training.reward_model`) and
the latent reward model on the shapes model's own VAE (:mod:`rlhf.training.latent_reward`).

Conditioning on the source image (image-editing preferences: which of two edits of one source is better
can depend on the source, e.g. "keep its colours"): a model with ``conditions_on_source`` scores an edit
beside the image it edits, ``forward(..., source_values=...)``; each kind feeds its head the candidate's
embedding, the source's and their difference, ``[e(c), e(s), e(c) - e(s)]`` (the CLIP's pooled image
embeddings; the latent model's feature maps, channel-wise). ``enable_source_conditioning()`` turns a
fresh backbone into such a model; the model directory records it, and such a model refuses to score
without sources (:class:`MissingSourceError`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

PREPROCESS_FILE = "preprocess.json"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageTransform:
    """CLIP preprocessing without torchvision: bicubic resize of the short side, centre crop, normalise."""

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __call__(self, image: Image.Image) -> Tensor:
        image = image.convert("RGB")
        w, h = image.size
        scale = self.image_size / min(w, h)
        new_w, new_h = max(self.image_size, round(w * scale)), max(self.image_size, round(h * scale))
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - self.image_size) // 2, (new_h - self.image_size) // 2
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (tensor - mean) / std

    def save(self, directory: Path) -> None:
        (directory / PREPROCESS_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path, image_size: int | None = None) -> ImageTransform:
        """From ``preprocess.json``, else from a Hugging Face ``preprocessor_config.json``, else defaults."""
        ours, hf = directory / PREPROCESS_FILE, directory / "preprocessor_config.json"
        if ours.is_file():
            raw = json.loads(ours.read_text())
            return cls(image_size or raw["image_size"], tuple(raw["mean"]), tuple(raw["std"]))
        if hf.is_file():
            raw = json.loads(hf.read_text())
            crop = raw.get("crop_size", 224)
            size = crop.get("height", 224) if isinstance(crop, dict) else int(crop)
            mean = tuple(raw.get("image_mean", OPENAI_CLIP_MEAN))
            std = tuple(raw.get("image_std", OPENAI_CLIP_STD))
            return cls(image_size or size, mean, std)
        return cls(image_size or 224)


class MissingSourceError(ValueError):
    """A reward model conditioned on the source image was asked to score an image without one."""


class RewardModel(nn.Module):
    """The interface scoring, training, DDPO's reward function and presort rely on."""

    transform: ImageTransform

    @property
    def conditions_on_source(self) -> bool:
        """True when the model scores an edit beside its source image (``forward``'s ``source_values``)."""
        return False

    def enable_source_conditioning(self, *, seed: int = 0) -> None:
        """Add the source-conditioned head (randomly initialised from ``seed``) to a fresh model."""
        raise NotImplementedError(f"{type(self).__name__} cannot condition on a source image")

    def check_sources(self, source_values: Tensor | None, count: int) -> None:
        """MissingSourceError unless a source-conditioned model got one source per image (and others none)."""
        if self.conditions_on_source and source_values is None:
            raise MissingSourceError("this reward model conditions on the source image (condition_on_source): "
                                     "score image edits with their source images")
        if source_values is not None and not self.conditions_on_source:
            raise ValueError("this reward model does not condition on a source image; give no source_values")
        if source_values is not None and source_values.shape[0] != count:
            raise ValueError(f"{source_values.shape[0]} source images for {count} images")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(
        self, captions: Sequence[str], pixel_values: Tensor, list_index: Tensor | None = None,
        source_values: Tensor | None = None,
    ) -> Tensor:
        """Rewards ``(M,)`` for M images; image i is paired with caption ``list_index[i]`` (default i) and,
        for a model conditioned on the source, with source image ``source_values[i]``."""
        raise NotImplementedError

    def save_pretrained(self, directory: Path) -> None:
        """Write the model directory that ``load_reward_model`` reads back."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What a reward run optimises (a frozen feature extractor's weights are not among them)."""
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self, *, lr: float, source_head_lr: float) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: everything trainable at ``lr`` (a model whose source-conditioned
        head is a separate fresh module trains it at ``source_head_lr``)."""
        return [{"params": self.trainable_parameters(), "lr": lr}]
