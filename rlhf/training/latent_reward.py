"""A reward model that sees what the shapes model draws: its own VAE encoder, frozen, and a small trainable head.

Why: annotators judge things that live in the image's pixels (how much of it the shapes cover, how
bright it is, where the shapes sit). A random-init CLIP has to learn to see from one round's 600
rankings; the shapes model's VAE encoder already maps its 64 px images onto a 16 x 16 grid of features
from which the image can be redrawn, so every such property is a simple function of them. The head
on top is small enough to learn from a round:

1. features: the encoder's last hidden map (64 channels, after its mid-block attention, so each cell
   also sees the background around it) and its latent mean (4 channels), concatenated by default
   (``feature`` picks one or both); normalised per channel with
   statistics of rendered shapes-world scenes taken when the backbone is built; plus two coordinate
   channels (x, y in [-1, 1]);
2. ``layers`` 3 x 3 convolutions with SiLU, the first modulated by the caption (FiLM, starting as the
   identity);
3. pooling: the mean of the map (what is summed over the image: area, brightness) and ``pools``
   attention pools, each a spatial softmax giving a weighted mean of projected features and of the
   coordinates (where something is: a centroid);
4. an MLP from the pooled vector and the caption embedding to one reward.

The caption goes through the shapes pipeline's own text encoder, frozen: it was trained with the UNet
on the world's captions, so it already tells backgrounds, colours, sizes and positions apart, and a
round's few hundred captions could not train a text tower. ``encoder="conv"`` swaps the frozen VAE for
a small convolutional tower trained from scratch (same head, same text encoder), the ablation that
says what the VAE's features are worth.

A model directory holds ``config.json`` (``model_type`` ``pickwise_latent_reward``, the VAE and text
encoder configs and the head's), ``model.safetensors`` (every weight, the frozen ones included, so it
does not depend on the pipeline it was built from), the tokenizer files and ``preprocess.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F  # noqa: N812
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import Encoder as VAEEncoder
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from rlhf.training.configs import LATENT_REWARD_MODEL_TYPE
from rlhf.training.reward_base import ImageTransform, RewardModel

MODEL_TYPE = LATENT_REWARD_MODEL_TYPE  # config.json's model_type for this kind
WEIGHTS_FILE = "model.safetensors"
EncoderKind = Literal["vae", "conv"]
FeatureKind = Literal["hidden", "latent", "both"]
STATS_SCENES = 256  # rendered shapes-world scenes whose encoder features set the normalisation
FEATURE_CACHE_SIZE = 2048  # frozen-encoder feature maps kept while training (68 KB each at 64 px, "both")
_HALF = (0.5, 0.5, 0.5)  # ImageTransform mean and std that map [0, 1] to the VAE's [-1, 1]


@dataclass(frozen=True)
class HeadConfig:
    """The trainable head's sizes."""

    width: int = 32  # channels of the 3 x 3 convolutions on the feature map
    layers: int = 2  # 3 x 3 convolutions, each followed by SiLU; the first is FiLM-conditioned on the caption
    pools: int = 4  # attention pools: spatial softmaxes, each a weighted mean of features and of (x, y)
    pool_dim: int = 8  # projected features each attention pool averages
    hidden: int = 64  # width of the MLP from the pooled vector to the reward
    text_dim: int = 16  # the caption embedding's projection beside the pooled vector

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"head.{name} must be a whole number >= 1, not {value!r}")


@dataclass(frozen=True)
class LatentRewardConfig:
    """What ``config.json`` of a latent reward model says (besides its ``model_type``)."""

    text: dict[str, Any]  # CLIPTextConfig of the frozen caption encoder
    encoder: EncoderKind = "vae"  # the pipeline's VAE encoder (frozen), or a conv tower trained from scratch
    feature: FeatureKind = "both"  # vae: the last hidden map, the latent mean, or both (concatenated)
    vae: dict[str, Any] | None = None  # AutoencoderKL config (encoder "vae")
    conv_channels: tuple[int, ...] = (16, 32, 32)  # conv tower: widths; each layer after the first halves the side
    image_size: int = 64  # the side images are resized to (the shapes model makes 64 px images)
    head: HeadConfig = field(default_factory=HeadConfig)
    # Image editing: the head sees the candidate's feature map, the source image's and their difference,
    # concatenated channel-wise (3x the channels), and the model needs the source to score.
    condition_on_source: bool = False

    def __post_init__(self) -> None:
        for name, choices in (("encoder", EncoderKind), ("feature", FeatureKind)):
            if getattr(self, name) not in get_args(choices):
                raise ValueError(f"{name} must be one of {get_args(choices)}, not {getattr(self, name)!r}")
        if self.encoder == "vae" and not self.vae:
            raise ValueError("encoder 'vae' needs the VAE's config (vae)")
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8, not {self.image_size!r}")
        if not self.conv_channels or any(c < 1 for c in self.conv_channels):
            raise ValueError(f"conv_channels must be widths >= 1, not {self.conv_channels!r}")

    def to_json(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_json(cls, raw: dict[str, Any], source: str = "config.json") -> LatentRewardConfig:
        """The config from its JSON; ValueError naming ``source`` and the problem for a bad one."""
        raw = {k: v for k, v in raw.items() if k != "model_type"}
        try:
            return cls(**{**raw, "head": HeadConfig(**raw.get("head", {})),
                          "conv_channels": tuple(raw.get("conv_channels", (16, 32, 32)))})
        except TypeError as exc:  # a missing or unknown key
            raise ValueError(f"{source}: {exc}") from None


def _coordinates(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(2, H, W): x and y of each cell's centre in [-1, 1]."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width * 2 - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])


class RewardHead(nn.Module):
    """Feature map + caption embedding -> one reward per image (see the module docstring)."""

    def __init__(self, in_channels: int, text_width: int, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.convs = nn.ModuleList(
            [nn.Conv2d(in_channels + 2, width, 3, padding=1)]
            + [nn.Conv2d(width, width, 3, padding=1) for _ in range(config.layers - 1)]
        )
        self.film = nn.Linear(text_width, 2 * width)
        nn.init.zeros_(self.film.weight)  # starts as the identity: the caption only modulates what it learns to
        nn.init.zeros_(self.film.bias)
        self.attend = nn.Conv2d(width, config.pools, 1)
        self.values = nn.Conv2d(width, config.pools * config.pool_dim, 1)
        self.text_proj = nn.Linear(text_width, config.text_dim)
        pooled = width + config.pools * (config.pool_dim + 2) + config.text_dim
        self.mlp = nn.Sequential(nn.Linear(pooled, config.hidden), nn.SiLU(), nn.Linear(config.hidden, 1))

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        batch, _, height, width = features.shape
        coords = _coordinates(height, width, features.device, features.dtype)
        h = self.convs[0](torch.cat([features, coords.expand(batch, -1, -1, -1)], dim=1))
        gamma, beta = self.film(text).chunk(2, dim=-1)
        h = F.silu(h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])
        for conv in self.convs[1:]:
            h = F.silu(conv(h))
        k, d = self.config.pools, self.config.pool_dim
        attention = self.attend(h).flatten(2).softmax(dim=-1)  # (B, K, HW)
        values = self.values(h).flatten(2).view(batch, k, d, -1)  # (B, K, D, HW)
        pooled_values = (values * attention[:, :, None, :]).sum(-1)  # (B, K, D)
        pooled_xy = attention @ coords.flatten(1).T  # (B, K, 2)
        vector = torch.cat(
            [h.mean(dim=(2, 3)), pooled_values.flatten(1), pooled_xy.flatten(1), self.text_proj(text)], dim=1
        )
        return self.mlp(vector).squeeze(-1)


def _conv_tower(channels: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    previous = 3
    for i, width in enumerate(channels):
        layers += [nn.Conv2d(previous, width, 3, stride=1 if i == 0 else 2, padding=1), nn.SiLU()]
        previous = width
    return nn.Sequential(*layers)


class LatentRewardModel(RewardModel):
    """A frozen image encoder (the VAE's, or a trainable conv tower), a frozen caption encoder, a head."""

    feature_shift: Tensor  # per-channel normalisation of the encoder's features (buffers)
    feature_scale: Tensor

    def __init__(self, config: LatentRewardConfig, tokenizer: CLIPTokenizer) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.transform = ImageTransform(config.image_size, _HALF, _HALF)
        self.vae_encoder: VAEEncoder | None = None
        self.quant_conv: nn.Module | None = None
        self.tower: nn.Sequential | None = None
        if config.encoder == "vae":
            assert config.vae is not None
            vae = AutoencoderKL.from_config(config.vae)
            self.vae_encoder, self.quant_conv = vae.encoder, vae.quant_conv
            self.latent_channels = int(vae.config.latent_channels)
            hidden = int(vae.config.block_out_channels[-1])
            channels = {"hidden": hidden, "latent": self.latent_channels}.get(
                config.feature, hidden + self.latent_channels
            )
            for module in (self.vae_encoder, self.quant_conv):
                if module is not None:
                    module.requires_grad_(False)
        else:
            self.tower = _conv_tower(config.conv_channels)
            channels = config.conv_channels[-1]
        self.text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(config.text))
        self.text_encoder.requires_grad_(False)
        self.register_buffer("feature_shift", torch.zeros(channels))
        self.register_buffer("feature_scale", torch.ones(channels))
        self.feature_channels = channels
        self.head = RewardHead(channels * (3 if config.condition_on_source else 1),
                               int(self.text_encoder.config.hidden_size), config.head)
        # The frozen encoder is a pure function of the pixels, and a run shows it each image once per pair it
        # is in (a round's 800 images, ~9 pairs each, per epoch): its outputs are memoised by the pixels'
        # hash, filled while training, read always, so epochs after the first cost only the head.
        self._feature_cache: OrderedDict[bytes, Tensor] = OrderedDict()
        self.feature_cache_size = FEATURE_CACHE_SIZE  # the most recently used are kept
        self.eval()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        self._feature_cache.clear()  # memoised features belong to the weights they came from
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True) -> LatentRewardModel:
        super().train(mode)
        for frozen in (self.vae_encoder, self.quant_conv, self.text_encoder):
            if frozen is not None:
                frozen.eval()  # frozen feature extractors stay in inference mode
        return self

    # ------------------------------------------------------------------------------------------- features
    def raw_features(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H/4, W/4) features before normalisation."""
        pixels = pixel_values.to(self.device)
        if self.tower is not None:
            return self.tower(pixels)
        keys = [hashlib.blake2b(p.detach().cpu().numpy().tobytes(), digest_size=16).digest() for p in pixels]
        # Hits are read before this batch's new features go in: storing those may evict them (a project's
        # cumulative export outgrows the memo by its third round).
        found = {i: self._feature_cache[key] for i, key in enumerate(keys) if key in self._feature_cache}
        missing = [i for i in range(len(keys)) if i not in found]
        computed = dict(zip(missing, self._encode(pixels[missing]), strict=True)) if missing else {}
        if self.training:
            for i in found:
                self._feature_cache.move_to_end(keys[i])
            for i, features in computed.items():
                self._feature_cache[keys[i]] = features
            while len(self._feature_cache) > self.feature_cache_size:
                self._feature_cache.popitem(last=False)
        features = {**found, **computed}
        return torch.stack([features[i].to(pixels.device) for i in range(len(keys))])

    def _encode(self, pixels: Tensor) -> Tensor:
        encoder = self.vae_encoder
        assert encoder is not None
        with torch.no_grad():
            h = encoder.conv_in(pixels)
            for block in encoder.down_blocks:
                h = block(h)
            h = encoder.mid_block(h)
            if self.config.feature == "hidden":
                return h
            z = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(h)))
            if self.quant_conv is not None:
                z = self.quant_conv(z)
            latent = z[:, : self.latent_channels]
            return latent if self.config.feature == "latent" else torch.cat([h, latent], dim=1)

    def image_features(self, pixel_values: Tensor) -> Tensor:
        features = self.raw_features(pixel_values)
        return (features - self.feature_shift[:, None, None]) / self.feature_scale[:, None, None]

    @torch.no_grad()
    def caption_embeddings(self, captions: Sequence[str]) -> Tensor:
        """(N, text width): the frozen text encoder's pooled output (its end-of-text token)."""
        max_length = int(self.text_encoder.config.max_position_embeddings)
        enc = self.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        out = self.text_encoder(input_ids=enc["input_ids"].to(self.device))
        pooled: Tensor = out.pooler_output
        return pooled

    @property
    def conditions_on_source(self) -> bool:
        return self.config.condition_on_source

    def enable_source_conditioning(self, *, seed: int = 0) -> None:
        if self.config.condition_on_source:
            return
        self.config = replace(self.config, condition_on_source=True)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.head = RewardHead(3 * self.feature_channels, int(self.text_encoder.config.hidden_size),
                               self.config.head).to(self.device)
        torch.random.set_rng_state(generator_state)

    def forward(
        self, captions: Sequence[str], pixel_values: Tensor, list_index: Tensor | None = None,
        source_values: Tensor | None = None,
    ) -> Tensor:
        self.check_sources(source_values, pixel_values.shape[0])
        text = self.caption_embeddings(captions)
        if list_index is not None:
            text = text[list_index.to(text.device)]
        features = self.image_features(pixel_values)
        if source_values is not None:
            source = self.image_features(source_values)
            features = torch.cat([features, source, features - source], dim=1)
        return self.head(features, text)

    # ------------------------------------------------------------------------------------------- files
    def save_pretrained(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config.to_json(), indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(directory)
        self.transform.save(directory)


def load_latent_reward(path: Path, *, image_size: int | None = None) -> LatentRewardModel:
    """A latent reward model from its directory (``config.json`` + ``model.safetensors`` + tokenizer)."""
    path = Path(path)
    config = LatentRewardConfig.from_json(json.loads((path / "config.json").read_text()), str(path / "config.json"))
    model = LatentRewardModel(config, CLIPTokenizer.from_pretrained(str(path)))
    missing, unexpected = model.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.transform = ImageTransform.load(path, image_size)
    return model


def check_pipeline_dir(pipeline_dir: Path, *, needs_vae: bool = True) -> None:
    """ValueError unless ``pipeline_dir`` is a diffusers pipeline with the parts a latent reward model takes."""
    parts = ("text_encoder", "tokenizer") + (("vae",) if needs_vae else ())
    missing = [p for p in parts if not (Path(pipeline_dir) / p / ("tokenizer_config.json" if p == "tokenizer"
                                                                    else "config.json")).is_file()]
    if missing:
        raise ValueError(f"pipeline {pipeline_dir} has no {', '.join(missing)}: a latent reward model takes "
                         "its VAE encoder and text encoder")


@torch.no_grad()
def _feature_statistics(model: LatentRewardModel, scenes: int, seed: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of the encoder's features over rendered shapes-world scenes."""
    from generation.shapes.world import make_examples

    images, _ = make_examples(scenes, seed=seed, split="any")
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    if pixels.shape[-1] != model.config.image_size:
        pixels = F.interpolate(pixels, size=model.config.image_size, mode="bicubic", align_corners=False)
    features = torch.cat([model.raw_features(chunk) for chunk in pixels.split(64)])
    return features.mean(dim=(0, 2, 3)), features.std(dim=(0, 2, 3)).clamp_min(1e-4)


def build_latent_reward(
    directory: Path,
    pipeline_dir: Path,
    *,
    encoder: EncoderKind = "vae",
    feature: FeatureKind = "both",
    head: HeadConfig | None = None,
    seed: int = 0,
    image_size: int | None = None,
) -> Path:
    """Save a latent reward model whose encoders come from the diffusers pipeline at ``pipeline_dir``.

    The VAE, text encoder and tokenizer load with the same ``from_pretrained`` calls the pipeline does;
    the head is randomly initialised from ``seed``.
    """
    pipeline_dir = Path(pipeline_dir)
    check_pipeline_dir(pipeline_dir, needs_vae=encoder == "vae")
    text_encoder = CLIPTextModel.from_pretrained(str(pipeline_dir / "text_encoder"))
    tokenizer = CLIPTokenizer.from_pretrained(str(pipeline_dir / "tokenizer"))
    vae = AutoencoderKL.from_pretrained(str(pipeline_dir / "vae")) if encoder == "vae" else None
    vae_config = {k: v for k, v in vae.config.items() if not k.startswith("_")} if vae is not None else None
    made = (AutoencoderKL.load_config(str(pipeline_dir / "vae")) if (pipeline_dir / "vae").is_dir() else {})
    size = image_size or int(made.get("sample_size", 64))  # the side of the images the pipeline makes
    config = LatentRewardConfig(
        text=text_encoder.config.to_dict(), encoder=encoder, feature=feature, vae=vae_config,
        image_size=size, head=head or HeadConfig(),
    )
    torch.manual_seed(seed)
    model = LatentRewardModel(config, tokenizer)
    model.text_encoder.load_state_dict(text_encoder.state_dict())
    if vae is not None:
        assert model.vae_encoder is not None
        model.vae_encoder.load_state_dict(vae.encoder.state_dict())
        if model.quant_conv is not None:
            model.quant_conv.load_state_dict(vae.quant_conv.state_dict())
        shift, scale = _feature_statistics(model, STATS_SCENES, seed=0)
        model.feature_shift.copy_(shift)
        model.feature_scale.copy_(scale)
    model.save_pretrained(Path(directory))
    return Path(directory)
