"""The PickScore-style reward model: ``reward = logit_scale.exp() * cos(text_emb, image_emb)`` on a CLIP.

A reward model directory (a backbone, a checkpoint, or the final model) holds ``config.json`` +
``model.safetensors`` (transformers ``CLIPModel.save_pretrained``), the tokenizer files and
``preprocess.json`` (image size, mean, std). Everything loads through :func:`load_reward_model`, the
tiny test backbone included.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tokenizers.pre_tokenizers import ByteLevel
from torch import Tensor, nn
from transformers import AutoConfig, CLIPConfig, CLIPModel, CLIPTokenizer, PreTrainedTokenizerBase

from rlhf.training.configs import check_clip_backbone as check_clip_backbone

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


def _features(output: Any) -> Tensor:
    """transformers 5 returns a model output whose pooler_output is the projected embedding."""
    if isinstance(output, Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if not isinstance(pooled, Tensor):
        raise TypeError(f"unexpected CLIP feature output {type(output).__name__}")
    return pooled


class RewardModel(nn.Module):
    """A CLIP backbone with its tokenizer and image transform; ``forward`` returns PickScore rewards."""

    def __init__(
        self, clip: CLIPModel, tokenizer: PreTrainedTokenizerBase, transform: ImageTransform
    ) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.transform = transform

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    def tokenize(self, captions: Sequence[str]) -> dict[str, Tensor]:
        max_length = int(getattr(self.clip.config.text_config, "max_position_embeddings", 77))
        enc = self.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {
            "input_ids": enc["input_ids"].to(self.device),
            "attention_mask": enc["attention_mask"].to(self.device),
        }

    def text_embeddings(self, captions: Sequence[str]) -> Tensor:
        emb = _features(self.clip.get_text_features(**self.tokenize(captions)))
        return emb / emb.norm(dim=-1, keepdim=True)

    def image_embeddings(self, pixel_values: Tensor) -> Tensor:
        emb = _features(self.clip.get_image_features(pixel_values=pixel_values.to(self.device)))
        return emb / emb.norm(dim=-1, keepdim=True)

    def forward(
        self, captions: Sequence[str], pixel_values: Tensor, list_index: Tensor | None = None
    ) -> Tensor:
        """Rewards ``(M,)`` for M images; image i is paired with caption ``list_index[i]`` (default i)."""
        text = self.text_embeddings(captions)
        image = self.image_embeddings(pixel_values)
        if list_index is not None:
            text = text[list_index.to(text.device)]
        scale = self.clip.logit_scale.exp()
        return scale * (text * image).sum(dim=-1)


def load_reward_model(path: str | Path, *, image_size: int | None = None, device: str = "cpu") -> RewardModel:
    """Load a backbone, checkpoint or final model directory (or a hub id already in the local cache)."""
    config = AutoConfig.from_pretrained(str(path))
    if not isinstance(config, CLIPConfig):
        raise ValueError(f"{path}: model_type {config.model_type!r} is not a CLIP model")
    clip = CLIPModel.from_pretrained(str(path))
    for method in ("get_text_features", "get_image_features"):
        if not callable(getattr(clip, method, None)):
            raise ValueError(f"{path}: model has no {method}, so it cannot score image-text pairs")
    tokenizer = CLIPTokenizer.from_pretrained(str(path))
    transform = (
        ImageTransform.load(Path(path), image_size)
        if Path(path).is_dir()
        else ImageTransform(image_size or 224)
    )
    return RewardModel(clip, tokenizer, transform).to(device).eval()


def save_reward_model(model: RewardModel, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.clip.save_pretrained(directory)
    model.tokenizer.save_pretrained(directory)
    model.transform.save(directory)


@torch.no_grad()
def score(
    model: RewardModel, prompts: Sequence[str], images: Sequence[Image.Image], batch_size: int = 32
) -> list[float]:
    """PickScore rewards for (prompt, image) pairs, in order."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    was_training = model.training
    model.eval()
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk_images = images[start : start + batch_size]
        pixels = torch.stack([model.transform(im) for im in chunk_images])
        out.extend(model(prompts[start : start + batch_size], pixels).float().cpu().tolist())
    model.train(was_training)
    return out


def tiny_tokenizer(max_length: int = 32) -> CLIPTokenizer:
    """A character-level CLIP tokenizer: every byte symbol, with and without ``</w>``, and no merges."""
    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


TINY_IMAGE_SIZE = 16  # the tiny backbone's default input side: one token per pixel (a 16 x 16 grid)
TINY_GRID = 16  # patches per side of the tiny backbone's vision tower


def build_tiny_clip(
    directory: Path,
    *,
    seed: int = 0,
    image_size: int = TINY_IMAGE_SIZE,
    width: int = 32,
    patch_size: int | None = None,
) -> Path:
    """Save a small randomly initialised CLIPModel + tokenizer + preprocessing to ``directory``.

    The vision tower sees a ``TINY_GRID`` x ``TINY_GRID`` grid of patches (``patch_size`` None:
    ``image_size // TINY_GRID``, at least 1), so the default 16 px input has one token per pixel. A
    preference such as "larger shapes" is a per-pixel property summed over the image; with 8 px patches
    at 32 px, a random-init tower fits one round's pairs by memorising images and ranks new ones at
    chance, while one-pixel tokens let it learn the per-pixel feature and average it. The logit scale
    starts at 100 rather than CLIP's untrained 1/0.07, so that the small turns of the image embedding
    such a preference makes are worth whole reward units from the first step.
    """
    directory = Path(directory)
    patch = patch_size or max(1, image_size // TINY_GRID)
    if image_size % patch:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch}")
    tokenizer = tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    layers = {
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    config = CLIPConfig(
        text_config={
            **layers,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 32,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={**layers, "image_size": image_size, "patch_size": patch},
        projection_dim=width,
        logit_scale_init_value=math.log(100.0),  # CLIP's cap and PickScore's trained scale
    )
    torch.manual_seed(seed)
    clip = CLIPModel(config)
    directory.mkdir(parents=True, exist_ok=True)
    clip.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    ImageTransform(image_size=image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).save(directory)
    return directory
