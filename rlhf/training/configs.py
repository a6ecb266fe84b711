"""The trainers' configs: frozen dataclasses validated in ``__post_init__``, and their named presets.

Torch-free on purpose: the web process builds and validates a run's config when the run is created (a bad
field is a 400 naming it at once), and importing torch, transformers and diffusers there would cost many
seconds and a lot of memory; only the worker that trains imports the trainers (:mod:`rlhf.training.reward_train`,
:mod:`rlhf.training.dpo`, :mod:`rlhf.training.ddpo`), which use these same classes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from safetensors import safe_open

from generation.inference import HUB_ID_RE, LORA_WEIGHTS_FILE
from rlhf.training.conditioning import SOURCE_HEAD_CONFIG as SOURCE_HEAD_CONFIG
from rlhf.training.conditioning import conditions_on_source as conditions_on_source
from rlhf.training.rewards import build_reward

RewardLoss = Literal["bradley_terry", "plackett_luce", "choose_one"]
MixedPrecision = Literal["no", "fp16", "bf16"]
TieHandling = Literal["soft", "skip"]
DPOTies = Literal["skip", "symmetric"]
AdvantageScale = Literal["group", "batch"]
DDPOObjective = Literal["policy_gradient", "group_dpo"]
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def check_processes(num_processes: int, num_machines: int, *batches: tuple[str, int]) -> None:
    """The distributed fields' checks (messages start with the field at fault): ``num_processes`` (all
    machines together) is a positive multiple of ``num_machines`` and divides every named global batch."""
    if not num_processes >= 1:
        raise ValueError(f"num_processes must be >= 1, not {num_processes!r}")
    if not num_machines >= 1:
        raise ValueError(f"num_machines must be >= 1, not {num_machines!r}")
    if num_processes % num_machines:
        raise ValueError(f"num_processes {num_processes} is not a multiple of num_machines {num_machines}")
    for name, size in batches:
        if size % num_processes:
            raise ValueError(f"num_processes {num_processes} does not divide the global batch ({name} = {size}): "
                             "every process takes an equal share of it")


# --- checks of what a config names ---------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterShape:
    """What a saved adapter was trained with."""

    rank: int
    alpha: int
    targets: tuple[str, ...]  # sorted module names, as LoraConfig.target_modules

    def hyperparameters(self) -> dict[str, Any]:
        """The trainers' config fields that must equal the adapter's."""
        return {"lora_rank": self.rank, "lora_alpha": self.alpha, "lora_targets": self.targets}


def read_adapter_shape(directory: Path | str) -> AdapterShape:
    """Rank, alpha and targets of the adapter saved in ``directory``; ValueError when it holds none.

    They come from the LoRA config saved with the weights (:func:`save_lora` writes it). An adapter saved
    without one gets its rank from its weights' shapes, its targets from their names and alpha = rank
    (what ``load_lora_weights`` assumes). Adapters this trainer cannot continue (DoRA, rsLoRA, per-module
    ranks or alphas, several ranks) are refused.
    """
    path = Path(directory) / LORA_WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"{directory} holds no LoRA adapter ({LORA_WEIGHTS_FILE} is missing)")
    try:
        with safe_open(str(path), framework="numpy") as handle:  # shapes only: no torch
            metadata = handle.metadata() or {}
            ranks = {
                key: handle.get_slice(key).get_shape()[0]
                for key in handle.keys()  # noqa: SIM118 - a safetensors handle is not a mapping
                if key.startswith("unet.") and key.endswith((".lora.down.weight", ".lora_A.weight"))
            }
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same answer
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
    if not ranks:
        raise ValueError(f"{path} holds no UNet LoRA weights")
    if len(set(ranks.values())) != 1:
        raise ValueError(f"{path}: the adapter's modules have different ranks {sorted(set(ranks.values()))}")
    rank = next(iter(ranks.values()))
    saved = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    config = {k.removeprefix("unet."): v for k, v in saved.items() if k.startswith("unet.")}
    for flag in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern"):
        if config.get(flag):
            raise ValueError(f"{path}: the adapter uses {flag}, which fine-tuning here does not continue")
    if config.get("r", rank) != rank:
        raise ValueError(f"{path}: the saved config says rank {config['r']}, the weights {rank}")
    alpha = config.get("lora_alpha", rank)
    if not float(alpha).is_integer() or alpha <= 0:
        raise ValueError(f"{path}: lora_alpha {alpha!r} is not a positive whole number")
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets:  # no config, or a regular expression: from the names
        targets = []
        for key in ranks:
            parts = key.rsplit(".lora", 1)[0].split(".")  # unet.<module path>.lora.down.weight
            targets.append(".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1])
    return AdapterShape(rank=int(rank), alpha=int(alpha), targets=tuple(sorted(set(targets))))


def check_init_lora(init_lora: str, *, rank: int, alpha: int, targets: Sequence[str]) -> None:
    """The trainers' ``init_lora`` check: a readable adapter whose rank, alpha and targets are the config's.

    Messages start with the field at fault (``init_lora``, ``lora_rank``, ``lora_alpha``, ``lora_targets``).
    """
    try:
        shape = read_adapter_shape(init_lora)
    except ValueError as exc:
        raise ValueError(f"init_lora {init_lora!r} is not a saved LoRA adapter: {exc}") from None
    if rank != shape.rank:
        raise ValueError(f"lora_rank {rank} differs from the rank {shape.rank} of the init_lora adapter")
    if alpha != shape.alpha:
        raise ValueError(f"lora_alpha {alpha} differs from the alpha {shape.alpha} of the init_lora adapter")
    if set(targets) != set(shape.targets):
        raise ValueError(
            f"lora_targets {tuple(targets)} differ from the targets {shape.targets} of the init_lora adapter"
        )


def init_lora_hyperparameters(init_lora: str) -> dict[str, Any]:
    """For the presets: the adapter's rank, alpha and targets (``{}`` when there is none to read; the
    config's own check then says why)."""
    if not init_lora:
        return {}
    try:
        return read_adapter_shape(init_lora).hyperparameters()
    except ValueError:
        return {}



# --- reward models -------------------------------------------------------------------------------------

# The ``model_type`` (in a model directory's config.json) of every kind of reward model; the loaders (torch)
# are :data:`rlhf.training.reward_model.MODEL_TYPES`, keyed by these.
CLIP_MODEL_TYPE = "clip"  # PickScore on a transformers CLIP
LATENT_REWARD_MODEL_TYPE = "pickwise_latent_reward"  # rlhf.training.latent_reward's head on the shapes VAE
REWARD_MODEL_TYPES = (CLIP_MODEL_TYPE, LATENT_REWARD_MODEL_TYPE)

# Backbones a run builds by name (``RewardModelConfig.backbone``), with what each is; the builders (torch)
# are :data:`rlhf.training.reward_model.BACKBONES`, whose ``register_backbone`` adds a name here too.
BACKBONE_NAMES: dict[str, str] = {
    "tiny": "random-init CLIP reading 16 px images as one token per pixel (CPU demo, tests)",
    "shapes_vae": "the shipped shapes model's VAE encoder, frozen, with a trainable head",
    "shapes_conv": "the same head on a small conv tower trained from scratch",
}


def model_type_of(path: str | Path) -> str | None:
    """The ``model_type`` in ``path/config.json``; ValueError when the directory or its config is missing."""
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"{str(path)!r} does not exist")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{str(path)!r} has no config.json, so it is not a reward model or a transformers model")
    model_type = json.loads(config_file.read_text()).get("model_type")
    return model_type if isinstance(model_type, str) else None


def check_backbone_dir(path: str) -> None:
    """Raise ValueError unless ``path`` is a directory holding a model type in :data:`REWARD_MODEL_TYPES`."""
    model_type = model_type_of(path)
    if model_type not in REWARD_MODEL_TYPES:
        others = ", ".join(repr(t) for t in REWARD_MODEL_TYPES if t != CLIP_MODEL_TYPE)
        raise ValueError(
            f"{path!r} is model_type {model_type!r}, not a CLIP model ('clip') or another reward model ({others})"
        )


def check_clip_backbone(path: str) -> None:
    """Raise ValueError unless ``path`` is a local directory holding a CLIP-type config."""
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"backbone {path!r} does not exist")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ValueError(f"backbone {path!r} has no config.json, so it is not a transformers model")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != CLIP_MODEL_TYPE:
        raise ValueError(f"backbone {path!r} is model_type {model_type!r}, not a CLIP model ('clip')")


@dataclass(frozen=True)
class RewardModelConfig:
    backbone: str = "tiny"  # a name in BACKBONE_NAMES ("tiny", "shapes_vae", "shapes_conv"), a local reward-model
    # or CLIP directory (a backbone, checkpoint or final model), or a CLIP hub id already in the local HF cache
    loss: RewardLoss = "bradley_terry"  # pairwise BT (PickScore), listwise Plackett-Luce, or HPSv2 choose-one
    lr: float = 3e-6  # AdamW learning rate (PickScore: 3e-6)
    weight_decay: float = 0.3  # AdamW weight decay (PickScore: 0.3)
    warmup_steps: int = 0  # linear warm-up, in optimisation steps, then constant
    batch_size: int = 8  # lists (pairs) per micro-batch, all processes together (each takes an equal share)
    grad_accum: int = 1  # micro-batches per optimisation step
    epochs: int = 1  # passes over the train split
    max_steps: int | None = None  # stop after this many optimisation steps even mid-epoch
    max_grad_norm: float = 1.0  # gradient clipping
    mixed_precision: MixedPrecision = "no"
    image_size: int | None = None  # None: the backbone's own preprocessing size
    seed: int = 0
    weight_pairs_per_prompt: bool = False  # divide each row's weight by its prompt's row count
    ties: TieHandling = "soft"  # "soft": train ties as 0.5/0.5 labels (PickScore); "skip": drop tied rows
    tie_threshold: float | None = None  # predicted-tie threshold for accuracy; None: tune on validation
    export_id: str = ""  # the preference export these rows come from, recorded in every checkpoint
    checkpoint_every: int = 0  # optimisation steps between checkpoints; 0: only at the end or on stop
    keep_last: int = 2  # checkpoints that keep their resumable training state
    shuffle_buffer: int = 512  # rows held for streaming shuffle
    eval_every: int = 0  # steps between validation passes reported through on_log; 0: only at the end
    eval_batch_size: int = 32
    num_workers: int = 0  # DataLoader workers decoding images
    cpu: bool = False  # force the CPU even where a GPU exists
    num_processes: int = 1  # training processes (ranks), all machines together; > 1 trains with torch.distributed
    num_machines: int = 1  # machines the processes are spread over (rendezvous: the gpu-train worker's TRAIN_MAIN_PROCESS_IP/PORT)
    # Image-editing preferences: score each edit beside the source image it edits (the head sees
    # [e(candidate), e(source), e(candidate) - e(source)]); needs every training image to be an edit with its
    # source (a run refuses data without), and the trained model then needs the source to score.
    condition_on_source: bool = False
    # The learning rate of a CLIP's source-conditioned head (a fresh MLP, trained from scratch while the CLIP
    # fine-tunes at lr: PickScore's 3e-6 would leave it where it starts); the latent model's head trains at lr.
    source_head_lr: float = 1e-3

    def __post_init__(self) -> None:
        if not self.source_head_lr > 0:
            raise ValueError(f"source_head_lr must be > 0, not {self.source_head_lr!r}")
        if not isinstance(self.condition_on_source, bool):
            raise ValueError(f"condition_on_source must be true or false, not {self.condition_on_source!r}")
        for name, choices in (
            ("loss", RewardLoss),
            ("mixed_precision", MixedPrecision),
            ("ties", TieHandling),
        ):
            if getattr(self, name) not in get_args(choices):
                raise ValueError(f"{name} must be one of {get_args(choices)}, not {getattr(self, name)!r}")
        named = self.backbone in BACKBONE_NAMES
        if not named and not (Path(self.backbone).is_dir() or HUB_ID_RE.match(self.backbone)):
            raise ValueError(
                f"backbone {self.backbone!r} does not exist (expected one of {sorted(BACKBONE_NAMES)}, "
                "a directory or a hub id)"
            )
        if not named and Path(self.backbone).is_dir():
            try:
                check_backbone_dir(self.backbone)
            except ValueError as exc:
                raise ValueError(f"backbone {exc}") from exc
        positive = ("lr", "batch_size", "grad_accum", "epochs", "eval_batch_size")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        non_negative = ("weight_decay", "warmup_steps", "checkpoint_every", "keep_last", "shuffle_buffer")
        for name in (*non_negative, "eval_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be > 0 or None, not {self.max_steps!r}")
        if self.image_size is not None and self.image_size <= 0:
            raise ValueError(f"image_size must be > 0 or None, not {self.image_size!r}")
        if self.tie_threshold is not None and not 0 <= self.tie_threshold <= 1:
            raise ValueError(f"tie_threshold must be in [0, 1] or None, not {self.tie_threshold!r}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, not {self.max_grad_norm!r}")
        check_processes(self.num_processes, self.num_machines, ("batch_size", self.batch_size))


def tiny_reward_preset(**overrides: Any) -> RewardModelConfig:
    """A tiny CLIP built from config (:func:`build_tiny_clip`); trains in about a minute on one CPU thread.

    lr 3e-4 (not PickScore's 3e-6, which is for fine-tuning a pretrained CLIP-H and leaves a random-init
    tower where it starts); 4 epochs, since a round's pairs are mostly under the annotators' noise and
    longer runs memorise them. ``bench/reward_shapes.py`` measures it on one DDPO round's data.
    """
    base: dict[str, Any] = {
        "backbone": "tiny",
        "lr": 3e-4,
        "weight_decay": 0.0,
        "batch_size": 16,
        "epochs": 4,
        "shuffle_buffer": 256,
    }
    return RewardModelConfig(**{**base, **overrides})


def shapes_reward_preset(**overrides: Any) -> RewardModelConfig:
    """The latent reward model on the shipped shapes model's VAE (backbone ``shapes_vae``).

    Only the head trains (about 40k parameters; the VAE and text encoder are frozen), so it takes a far
    higher lr than a CLIP fine-tune. ``bench/reward_shapes.py`` measures it on one round's data for each
    built-in preference.
    """
    base: dict[str, Any] = {
        "backbone": "shapes_vae",
        "lr": 1e-3,
        "weight_decay": 0.01,
        "batch_size": 16,
        "epochs": 6,
        "shuffle_buffer": 512,
    }
    return RewardModelConfig(**{**base, **overrides})


def pickscore_preset(backbone: str, **overrides: Any) -> RewardModelConfig:
    """PickScore's recipe (Kirstain et al. 2023) on a CLIP-H backbone: lr 3e-6, wd 0.3, 500 warm-up, bf16."""
    base: dict[str, Any] = {
        "backbone": backbone,
        "lr": 3e-6,
        "weight_decay": 0.3,
        "warmup_steps": 500,
        "batch_size": 8,
        "grad_accum": 2,
        "max_steps": 4000,
        "mixed_precision": "bf16",
        "checkpoint_every": 500,
        "eval_every": 500,
    }
    return RewardModelConfig(**{**base, **overrides})


class RewardPreset(Protocol):
    """A named recipe: overrides of any RewardModelConfig field in, a validated config out."""

    def __call__(self, **overrides: Any) -> RewardModelConfig: ...


def _pickscore(**overrides: Any) -> RewardModelConfig:
    backbone = overrides.pop("backbone", None)
    if not backbone or backbone in BACKBONE_NAMES:
        raise ValueError("the pickscore preset needs backbone: a local CLIP directory or a hub id")
    return pickscore_preset(backbone, **overrides)


# Presets by name (a reward run's ``preset``); each is validated when its config is built.
REWARD_PRESETS: dict[str, RewardPreset] = {
    "tiny": tiny_reward_preset,
    "shapes": shapes_reward_preset,
    "pickscore": _pickscore,
}


def reward_preset(name: str, **overrides: Any) -> RewardModelConfig:
    """The config of preset ``name`` with ``overrides``; ValueError naming the choices for an unknown name."""
    if name not in REWARD_PRESETS:
        raise ValueError(f"preset must be one of {sorted(REWARD_PRESETS)}, not {name!r}")
    return REWARD_PRESETS[name](**overrides)


# --- Diffusion-DPO ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DPOConfig:
    base_model: str  # diffusers StableDiffusionPipeline directory (save_pretrained layout)
    export_id: str = ""  # the preference export, recorded in every checkpoint
    beta: float = 5000.0  # KL strength (paper: 2000-5000 for SD 1.5, 5000 for SDXL)
    lr: float = 1e-5  # AdamW learning rate on the LoRA parameters
    weight_decay: float = 1e-2
    lora_rank: int = 8
    lora_alpha: int | None = None  # None: equal to the rank (scale 1)
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    # A saved adapter directory (save_lora's layout) the trained LoRA starts from, and the frozen reference
    # is a copy of; "" starts fresh against the base UNet. lora_rank, lora_alpha and lora_targets must be
    # the adapter's (the presets take them from it).
    init_lora: str = ""
    max_steps: int = 2000  # optimisation steps
    batch_size: int = 4  # pairs per micro-batch, all processes together (each takes an equal share)
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: MixedPrecision = "no"  # frozen weights in this dtype; LoRA weights stay float32
    seed: int = 0
    resolution: int = 512  # training images are resized (short side) and centre-cropped to this
    ties: DPOTies = "skip"
    # DPO-Positive's lambda (Pal et al. 2024): > 0 charges the policy for finding a preferred image less likely
    # than the reference does, which plain DPO (0) allows as long as the rejected image falls further
    dpop_lambda: float = 0.0
    # > 0 charges the batch's drift in the likelihood of both images of a pair together (losses.dpo_loss's
    # anchor), along which labels carrying no preference move the policy freely
    likelihood_anchor: float = 0.0
    checkpoint_every: int = 500  # optimisation steps between checkpoints (0: only at the end or on stop)
    keep_last: int = 2  # checkpoints that keep their resumable training state
    shuffle_buffer: int = 512
    cpu: bool = False  # force the CPU even where a GPU exists
    num_processes: int = 1  # training processes (ranks), all machines together; > 1 trains with torch.distributed
    num_machines: int = 1  # machines the processes are spread over (rendezvous: the gpu-train worker's TRAIN_MAIN_PROCESS_IP/PORT)

    def __post_init__(self) -> None:
        for name, choices in (("mixed_precision", MixedPrecision), ("ties", DPOTies)):
            if getattr(self, name) not in get_args(choices):
                raise ValueError(f"{name} must be one of {get_args(choices)}, not {getattr(self, name)!r}")
        if not (Path(self.base_model) / "model_index.json").is_file():
            raise ValueError(
                f"base_model {self.base_model!r} is not a diffusers pipeline directory (no model_index.json)"
            )
        for name in (
            "beta",
            "lr",
            "lora_rank",
            "max_steps",
            "batch_size",
            "grad_accum",
            "resolution",
            "max_grad_norm",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, not {self.resolution}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0 or None, not {self.lora_alpha!r}")
        for name in ("weight_decay", "checkpoint_every", "keep_last", "shuffle_buffer", "dpop_lambda",
                     "likelihood_anchor"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if not self.lora_targets:
            raise ValueError("lora_targets must name at least one module")
        check_processes(self.num_processes, self.num_machines, ("batch_size", self.batch_size))
        if self.init_lora:
            check_init_lora(self.init_lora, rank=self.lora_rank, alpha=self.lora_alpha or self.lora_rank,
                            targets=self.lora_targets)


def sd15_dpo_preset(base_model: str, **overrides: Any) -> DPOConfig:
    """Diffusion-DPO LoRA on SD 1.5 (diffusers example): beta 5000, lr 1e-5, rank 8, fp16, 512 px."""
    base: dict[str, Any] = {
        "beta": 5000.0,
        "lr": 1e-5,
        "lora_rank": 8,
        "mixed_precision": "fp16",
        "resolution": 512,
        **init_lora_hyperparameters(overrides.get("init_lora", "")),
    }
    return DPOConfig(base_model=base_model, **{**base, **overrides})


def tiny_dpo_preset(base_model: str, **overrides: Any) -> DPOConfig:
    """For small models on a CPU: the tiny test pipeline, the shipped shapes model (about 2 minutes there)."""
    base: dict[str, Any] = {
        "beta": 500.0, "lr": 1e-3, "lora_rank": 4, "resolution": 32, "batch_size": 8,
        "max_steps": 300, "checkpoint_every": 0, "shuffle_buffer": 64, "weight_decay": 0.0,
        **init_lora_hyperparameters(overrides.get("init_lora", "")),
    }  # fmt: skip
    return DPOConfig(base_model=base_model, **{**base, **overrides})



# --- DDPO -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DDPOConfig:
    base_model: str  # diffusers StableDiffusionPipeline directory
    prompts: tuple[str, ...]  # the prompt set sampled from each iteration
    reward: str = "brightness"  # a name in rewards.REWARD_FUNCTIONS
    reward_arg: str | None = None  # e.g. the checkpoint path for reward="reward_model"
    iterations: int = 100  # sample-then-train rounds
    prompts_per_iteration: int = 8
    images_per_prompt: int = 4  # group size for per-prompt advantage normalisation
    sample_steps: int = 50  # DDIM steps
    eta: float = 1.0  # DDIM stochasticity (> 0: the policy needs a density)
    guidance_scale: float = 5.0
    resolution: int = 512
    # What an iteration trains on its samples. "policy_gradient": DDPO, the PPO clipped surrogate over the
    # recorded denoising steps. "group_dpo": Diffusion-DPO on each prompt's best-rewarded image against its
    # worst (a group whose rewards are all equal gives no pair), the starting model as the reference, over
    # the pairs of the last `replay` iterations: online DPO from the model's own samples, which learns from
    # whole ranked images rather than one noisy log-probability per step.
    objective: DDPOObjective = "policy_gradient"
    train_batch_size: int = 4  # trajectories (group_dpo: pairs) per micro-batch, all processes together (equal shares)
    grad_accum: int = 1  # micro-batches per optimisation step (each already sums over its timesteps)
    inner_epochs: int = 1  # passes over each iteration's samples (group_dpo: over the replayed pairs)
    dpo_beta: float = 500.0  # group_dpo: Diffusion-DPO's beta (larger keeps the policy nearer the reference)
    dpop_lambda: float = 0.0  # group_dpo: DPO-Positive's lambda, as DPOConfig's
    likelihood_anchor: float = 0.0  # group_dpo: as DPOConfig's
    replay: int = 1  # group_dpo: the iterations whose pairs each iteration trains on (this one and those before)
    pair_min_reward: float | None = None  # group_dpo: keep a pair only where its best image scores at least this
    # group_dpo: pairs from each prompt's group, its best against its worst, then its second best against its
    # second worst, ... (at most images_per_prompt // 2): more updates from the same samples, each on other
    # pairs (tried against noise rewards' drift, it did not shrink it: README, DDPO's group_dpo figures)
    pairs_per_prompt: int = 1
    timestep_fraction: float = 1.0  # share of denoising steps trained on per trajectory
    lr: float = 3e-4
    weight_decay: float = 1e-4
    lora_rank: int = 4
    lora_alpha: int | None = None  # None: equal to the rank
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    # A saved adapter directory (save_lora's layout) the policy starts from; "" starts as the base UNet.
    # lora_rank, lora_alpha and lora_targets must be the adapter's (the presets take them from it).
    init_lora: str = ""
    clip_range: float = 1e-4  # PPO ratio clip (log-probs are per-element means, as in ddpo-pytorch)
    adv_clip_max: float = 5.0
    # "group": each prompt's rewards over their own std (Flow-GRPO); "batch": over one std for the whole
    # iteration, so a group the reward barely separates moves the policy less (after Dr. GRPO; for a weak reward model)
    advantage_scale: AdvantageScale = "group"
    kl_coef: float = 0.0  # > 0 adds kl_coef * KL(policy step || base step), Flow-GRPO style
    max_grad_norm: float = 1.0
    mixed_precision: MixedPrecision = "no"
    seed: int = 0
    checkpoint_every: int = 10  # iterations between checkpoints (0: only at the end or on stop)
    keep_last: int = 2
    cpu: bool = False
    # training processes (ranks), all machines together; > 1 spreads sampling and training with torch.distributed
    num_processes: int = 1
    num_machines: int = 1  # machines the processes are spread over (rendezvous: the gpu-train worker's TRAIN_MAIN_PROCESS_IP/PORT)

    def __post_init__(self) -> None:
        if self.mixed_precision not in get_args(MixedPrecision):
            raise ValueError(
                f"mixed_precision must be one of {get_args(MixedPrecision)}, not {self.mixed_precision!r}"
            )
        if self.advantage_scale not in get_args(AdvantageScale):
            raise ValueError(
                f"advantage_scale must be one of {get_args(AdvantageScale)}, not {self.advantage_scale!r}"
            )
        if self.objective not in get_args(DDPOObjective):
            raise ValueError(f"objective must be one of {get_args(DDPOObjective)}, not {self.objective!r}")
        try:
            build_reward(self.reward, self.reward_arg)
        except ValueError as exc:
            raise ValueError(f"reward: {exc}") from exc
        if not (Path(self.base_model) / "model_index.json").is_file():
            raise ValueError(
                f"base_model {self.base_model!r} is not a diffusers pipeline directory (no model_index.json)"
            )
        if not self.prompts:
            raise ValueError("prompts must not be empty")
        positive = (
            "iterations", "prompts_per_iteration", "images_per_prompt", "sample_steps", "eta", "resolution",
            "train_batch_size", "grad_accum", "inner_epochs", "lr", "lora_rank", "clip_range", "adv_clip_max",
            "max_grad_norm", "dpo_beta", "replay", "pairs_per_prompt",
        )  # fmt: skip
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], not {self.timestep_fraction}")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, not {self.resolution}")
        for name in ("kl_coef", "weight_decay", "checkpoint_every", "keep_last", "guidance_scale", "dpop_lambda",
                     "likelihood_anchor"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0 or None, not {self.lora_alpha!r}")
        if self.objective == "group_dpo" and self.images_per_prompt < 2:
            raise ValueError(f"images_per_prompt must be >= 2 for group_dpo (a best and a worst image), "
                             f"not {self.images_per_prompt}")
        for name in ("dpop_lambda", "likelihood_anchor"):  # DPO's loss: nothing DDPO's policy gradient would read
            if getattr(self, name) and self.objective != "group_dpo":
                raise ValueError(f"{name} applies to objective group_dpo only, not {self.objective}")
        if self.pairs_per_prompt > max(1, self.images_per_prompt // 2):
            raise ValueError(f"pairs_per_prompt must be at most images_per_prompt // 2 "
                             f"({self.images_per_prompt // 2}: each image in one pair), not {self.pairs_per_prompt}")
        if self.pair_min_reward is not None and not math.isfinite(self.pair_min_reward):
            raise ValueError(f"pair_min_reward must be a finite number or None, not {self.pair_min_reward!r}")
        check_processes(self.num_processes, self.num_machines, ("train_batch_size", self.train_batch_size),
                        ("prompts_per_iteration x images_per_prompt",
                         self.prompts_per_iteration * self.images_per_prompt))
        if self.init_lora:
            check_init_lora(self.init_lora, rank=self.lora_rank, alpha=self.lora_alpha or self.lora_rank,
                            targets=self.lora_targets)

    @property
    def reward_id(self) -> str:
        return self.reward if self.reward_arg is None else f"{self.reward}:{self.reward_arg}"


def sd15_ddpo_preset(base_model: str, prompts: tuple[str, ...], **overrides: Any) -> DDPOConfig:
    """ddpo-pytorch's LoRA settings for SD 1.5: 50 steps, CFG 5, eta 1, lr 3e-4, clip 1e-4, fp16."""
    base: dict[str, Any] = {
        "sample_steps": 50, "guidance_scale": 5.0, "eta": 1.0, "lr": 3e-4, "clip_range": 1e-4,
        "prompts_per_iteration": 8, "images_per_prompt": 16, "train_batch_size": 4, "grad_accum": 8,
        "mixed_precision": "fp16", "resolution": 512,
        **init_lora_hyperparameters(overrides.get("init_lora", "")),
    }  # fmt: skip
    return DDPOConfig(base_model=base_model, prompts=prompts, **{**base, **overrides})


def tiny_ddpo_preset(base_model: str, prompts: tuple[str, ...], **overrides: Any) -> DDPOConfig:
    """For the tiny test pipeline on a CPU."""
    base: dict[str, Any] = {
        "sample_steps": 6, "guidance_scale": 3.0, "resolution": 32, "iterations": 8, "prompts_per_iteration": 4,
        "images_per_prompt": 4, "train_batch_size": 8, "lr": 3e-3, "clip_range": 0.2, "checkpoint_every": 0,
        "weight_decay": 0.0, **init_lora_hyperparameters(overrides.get("init_lora", "")),
    }  # fmt: skip
    return DDPOConfig(base_model=base_model, prompts=prompts, **{**base, **overrides})
