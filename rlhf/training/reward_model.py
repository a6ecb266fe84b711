"""Reward models: the PickScore-style CLIP, the registries of backbones and model types, loading and scoring.

A reward model directory (a backbone, a checkpoint, or the final model) holds ``config.json`` (whose
``model_type`` picks the loader in :data:`MODEL_TYPES`), ``model.safetensors``, the tokenizer files and
``preprocess.json`` (image size, mean, std). Everything loads through :func:`load_reward_model`, the
backbones a run builds from :data:`BACKBONES` included. Two kinds ship:

- ``clip``: PickScore, ``reward = logit_scale.exp() * cos(text_emb, image_emb)`` on a CLIP
  (``transformers`` ``CLIPModel.save_pretrained``); the ``tiny`` backbone is a random-init one;
- ``pickwise_latent_reward``: the shapes model's own VAE encoder, frozen, with a small trainable head
  (:mod:`rlhf.training.latent_reward`); backbones ``shapes_vae`` and ``shapes_conv``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers.pre_tokenizers import ByteLevel
from torch import Tensor, nn
from transformers import AutoConfig, CLIPConfig, CLIPModel, CLIPTokenizer, PreTrainedTokenizerBase

from generation.shapes.model import WEIGHTS_DIR as SHAPES_WEIGHTS_DIR
from rlhf.training.configs import (
    BACKBONE_NAMES,
    CLIP_MODEL_TYPE,
    LATENT_REWARD_MODEL_TYPE,
    REWARD_MODEL_TYPES,
    SOURCE_HEAD_CONFIG,
)
from rlhf.training.configs import check_backbone_dir as check_backbone_dir
from rlhf.training.configs import check_clip_backbone as check_clip_backbone
from rlhf.training.configs import model_type_of as model_type_of
from rlhf.training.latent_reward import build_latent_reward, load_latent_reward
from rlhf.training.reward_base import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PREPROCESS_FILE,
    ImageTransform,
    MissingSourceError,
    RewardModel,
)

__all__ = [
    "BACKBONES",
    "MODEL_TYPES",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PREPROCESS_FILE",
    "CLIPRewardModel",
    "ImageTransform",
    "MissingSourceError",
    "RewardModel",
    "build_tiny_clip",
    "check_backbone_dir",
    "load_reward_model",
    "register_backbone",
    "save_reward_model",
    "score",
]


def _features(output: Any) -> Tensor:
    """transformers 5 returns a model output whose pooler_output is the projected embedding."""
    if isinstance(output, Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if not isinstance(pooled, Tensor):
        raise TypeError(f"unexpected CLIP feature output {type(output).__name__}")
    return pooled


SOURCE_HEAD_FILE = "source_head.safetensors"  # a CLIP reward model's source-conditioned head (its presence marks it)


class SourceHead(nn.Module):
    """The CLIP reward's source-conditioned term: an MLP on ``[e(c), e(s), e(c) - e(s)]`` (candidate and source
    image embeddings, unit length) beside the caption's embedding, added to the PickScore reward.

    Each of the three image blocks is layer-normalised on its own, and the difference's length (log) goes in
    beside them: two edits of one source differ in a small region, so ``e(c) - e(s)`` is about 1/50 of an
    embedding's length, and an MLP fed it raw learns nothing in a run's few hundred steps (the bench's
    ``tiny`` arm stayed at chance). Its last layer starts at zero, so a conditioned model starts as the plain
    PickScore of its backbone."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])
        last = nn.Linear(hidden, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(4 * dim + 1, hidden), nn.SiLU(), last)

    def forward(self, candidate: Tensor, source: Tensor, text: Tensor) -> Tensor:
        difference = candidate - source
        blocks = [norm(x) for norm, x in zip(self.norms, (candidate, source, difference), strict=True)]
        distance = torch.log(difference.norm(dim=-1, keepdim=True) + 1e-3)
        return self.mlp(torch.cat([*blocks, distance, text], dim=-1)).squeeze(-1)


class CLIPRewardModel(RewardModel):
    """A CLIP backbone with its tokenizer and image transform; ``forward`` returns PickScore rewards (plus
    the :class:`SourceHead`'s term for a model conditioned on the source image)."""

    def __init__(
        self, clip: CLIPModel, tokenizer: PreTrainedTokenizerBase, transform: ImageTransform
    ) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.transform = transform
        self.source_head: SourceHead | None = None

    @property
    def conditions_on_source(self) -> bool:
        return self.source_head is not None

    def enable_source_conditioning(self, *, seed: int = 0) -> None:
        if self.source_head is None:
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
            self.source_head = SourceHead(int(self.clip.visual_projection.out_features)).to(self.device)
            torch.random.set_rng_state(generator_state)

    def tokenize(self, captions: Sequence[str]) -> dict[str, Tensor]:
        max_length = int(getattr(self.clip.config.text_config, "max_position_embeddings", 77))
        enc = self.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {
            "input_ids": enc["input_ids"].to(self.device),
            "attention_mask": enc["attention_mask"].to(self.device),
        }

    def parameter_groups(self, *, lr: float, source_head_lr: float) -> list[dict[str, Any]]:
        if self.source_head is None:
            return super().parameter_groups(lr=lr, source_head_lr=source_head_lr)
        head = {id(p) for p in self.source_head.parameters()}
        return [{"params": [p for p in self.trainable_parameters() if id(p) not in head], "lr": lr},
                {"params": list(self.source_head.parameters()), "lr": source_head_lr}]

    def text_embeddings(self, captions: Sequence[str]) -> Tensor:
        emb = _features(self.clip.get_text_features(**self.tokenize(captions)))
        return emb / emb.norm(dim=-1, keepdim=True)

    def image_embeddings(self, pixel_values: Tensor) -> Tensor:
        emb = _features(self.clip.get_image_features(pixel_values=pixel_values.to(self.device)))
        return emb / emb.norm(dim=-1, keepdim=True)

    def forward(
        self, captions: Sequence[str], pixel_values: Tensor, list_index: Tensor | None = None,
        source_values: Tensor | None = None,
    ) -> Tensor:
        """Rewards ``(M,)`` for M images; image i is paired with caption ``list_index[i]`` (default i) and,
        conditioned on the source, with source image ``source_values[i]``."""
        self.check_sources(source_values, pixel_values.shape[0])
        text = self.text_embeddings(captions)
        image = self.image_embeddings(pixel_values)
        if list_index is not None:
            text = text[list_index.to(text.device)]
        scale = self.clip.logit_scale.exp()
        reward = scale * (text * image).sum(dim=-1)
        if self.source_head is not None and source_values is not None:
            reward = reward + self.source_head(image, self.image_embeddings(source_values), text)
        return reward

    def save_pretrained(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.clip.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.transform.save(directory)
        if self.source_head is not None:
            state = {k: v.detach().contiguous().cpu() for k, v in self.source_head.state_dict().items()}
            save_file(state, str(directory / SOURCE_HEAD_FILE), metadata={"format": "pt"})
            (directory / SOURCE_HEAD_CONFIG).write_text(json.dumps(
                {"dim": self.source_head.dim, "hidden": self.source_head.hidden,
                 "inputs": "[LN e(candidate), LN e(source), LN (e(candidate) - e(source)), "
                           "log |e(candidate) - e(source)|, e(caption)]"}, indent=2))


def load_clip_reward(path: str | Path, *, image_size: int | None = None) -> CLIPRewardModel:
    """A CLIP reward model from a directory (or a hub id already in the local cache)."""
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
    model = CLIPRewardModel(clip, tokenizer, transform)
    head_config = Path(path) / SOURCE_HEAD_CONFIG
    if Path(path).is_dir() and head_config.is_file():
        raw = json.loads(head_config.read_text())
        model.source_head = SourceHead(int(raw["dim"]), int(raw["hidden"]))
        model.source_head.load_state_dict(load_file(str(Path(path) / SOURCE_HEAD_FILE)))
    return model


# ----------------------------------------------------------------------------------------- model types
class RewardModelLoader(Protocol):
    """Reads a model directory whose ``config.json`` names this loader's ``model_type``."""

    def __call__(self, path: Path, *, image_size: int | None) -> RewardModel: ...


def _load_clip_dir(path: Path, *, image_size: int | None) -> RewardModel:
    return load_clip_reward(path, image_size=image_size)


def _load_latent_dir(path: Path, *, image_size: int | None) -> RewardModel:
    return load_latent_reward(path, image_size=image_size)


# Loaders by ``model_type`` (the names, torch-free, are configs.REWARD_MODEL_TYPES, which validates configs).
MODEL_TYPES: dict[str, RewardModelLoader] = {CLIP_MODEL_TYPE: _load_clip_dir, LATENT_REWARD_MODEL_TYPE: _load_latent_dir}
if set(MODEL_TYPES) != set(REWARD_MODEL_TYPES):
    raise RuntimeError(f"reward model loaders {sorted(MODEL_TYPES)} differ from the model types {REWARD_MODEL_TYPES}")


def load_reward_model(path: str | Path, *, image_size: int | None = None, device: str = "cpu") -> RewardModel:
    """Load a backbone, checkpoint or final model directory (or a CLIP hub id already in the local cache)."""
    if Path(path).is_dir():
        check_backbone_dir(str(path))
        model = MODEL_TYPES[str(model_type_of(path))](Path(path), image_size=image_size)
    else:
        model = load_clip_reward(path, image_size=image_size)
    return model.to(device).eval()


def save_reward_model(model: RewardModel, directory: Path) -> None:
    model.save_pretrained(Path(directory))


@torch.no_grad()
def score(
    model: RewardModel, prompts: Sequence[str], images: Sequence[Image.Image], batch_size: int = 32,
    sources: Sequence[Image.Image | None] | None = None,
) -> list[float]:
    """Rewards for (prompt, image) pairs, in order; a model conditioned on the source image needs ``sources``
    (each image's source, in order), and raises MissingSourceError, naming the image, without one."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    if model.conditions_on_source:
        missing = [i for i in range(len(images)) if sources is None or i >= len(sources) or sources[i] is None]
        if missing:
            raise MissingSourceError(
                f"this reward model conditions on the source image (condition_on_source); image {missing[0]} "
                f"of {len(images)} has no source image ({len(missing)} without one)")
    was_training = model.training
    model.eval()
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk_images = images[start : start + batch_size]
        pixels = torch.stack([model.transform(im) for im in chunk_images])
        source_values = None
        if model.conditions_on_source and sources is not None:
            source_values = torch.stack([model.transform(im) for im in sources[start : start + batch_size]
                                         if im is not None])
        out.extend(model(prompts[start : start + batch_size], pixels, source_values=source_values)
                   .float().cpu().tolist())
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


# ----------------------------------------------------------------------------------------- backbones
class BackboneBuilder(Protocol):
    """Writes a fresh backbone directory (loadable by :func:`load_reward_model`) and returns its path.

    ``image_size`` None means the backbone's own default input size.
    """

    def __call__(self, directory: Path, *, seed: int, image_size: int | None) -> Path: ...


def _tiny_backbone(directory: Path, *, seed: int, image_size: int | None) -> Path:
    return build_tiny_clip(directory, seed=seed, image_size=image_size or TINY_IMAGE_SIZE)


def _shapes_vae_backbone(directory: Path, *, seed: int, image_size: int | None) -> Path:
    return build_latent_reward(directory, SHAPES_WEIGHTS_DIR, encoder="vae", seed=seed, image_size=image_size)


def _shapes_conv_backbone(directory: Path, *, seed: int, image_size: int | None) -> Path:
    return build_latent_reward(directory, SHAPES_WEIGHTS_DIR, encoder="conv", seed=seed, image_size=image_size)


# Backbones a run builds by name (``RewardModelConfig.backbone``), beside local directories and hub ids; what
# each is: configs.BACKBONE_NAMES (torch-free, so a config validates without torch).
BACKBONES: dict[str, BackboneBuilder] = {
    "tiny": _tiny_backbone,
    "shapes_vae": _shapes_vae_backbone,
    "shapes_conv": _shapes_conv_backbone,
}
if set(BACKBONES) != set(BACKBONE_NAMES):
    raise RuntimeError(f"backbone builders {sorted(BACKBONES)} differ from the named backbones {sorted(BACKBONE_NAMES)}")


def register_backbone(name: str, builder: BackboneBuilder, description: str = "") -> None:
    """Add a backbone a run can build by name (and a config then accepts)."""
    if name in BACKBONES or name in BACKBONE_NAMES:
        raise ValueError(f"backbone {name!r} is already registered")
    if not callable(builder):
        raise ValueError(f"backbone {name!r} needs a callable builder (directory, *, seed, image_size) -> Path")
    BACKBONES[name] = builder
    BACKBONE_NAMES[name] = description or name
