"""LoRA on a Stable Diffusion UNet: add, save (diffusers' ``load_lora_weights`` layout), accelerate hooks.

Adapters are added with peft through ``unet.add_adapter(LoraConfig(...))``. Saved adapters are
``<dir>/pytorch_lora_weights.safetensors`` written by ``StableDiffusionPipeline.save_lora_weights`` from
``convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))``, with the LoRA config as adapter
metadata (so ``lora_alpha`` survives), i.e. exactly what ``pipe.load_lora_weights(dir)`` reads.

A fine-tune may start from a saved adapter (``init_lora`` in the trainers' configs): the trainable adapter
gets its weights and, where a reference model is needed, an untrained copy beside it
(:func:`start_from_adapter`); :func:`reference_pass` runs the UNet as the reference model.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from PIL import Image

from generation.inference import load_adapter, load_base_pipeline
from rlhf.training.checkpoint import STATE_DIR, write_metadata
from rlhf.training.configs import DEFAULT_TARGETS as DEFAULT_TARGETS
from rlhf.training.configs import AdapterShape as AdapterShape
from rlhf.training.configs import check_init_lora as check_init_lora
from rlhf.training.configs import init_lora_hyperparameters as init_lora_hyperparameters
from rlhf.training.configs import read_adapter_shape as read_adapter_shape

TRAINED_ADAPTER = "default"  # the adapter add_lora adds and save_lora writes
REFERENCE_ADAPTER = "reference"  # add_frozen_adapter's copy of the starting adapter


def add_lora(unet: Any, *, rank: int, alpha: int, targets: Sequence[str] = DEFAULT_TARGETS) -> LoraConfig:
    """Freeze the UNet and add a trainable LoRA adapter (Gaussian A, zero B: starts as the base model)."""
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))
    unet.add_adapter(config)
    return config


def lora_parameters(unet: Any) -> list[torch.nn.Parameter]:
    return [p for p in unet.parameters() if p.requires_grad]


def save_lora(unet: Any, directory: Path) -> Path:
    """Write the UNet's LoRA adapter where ``StableDiffusionPipeline.load_lora_weights(directory)`` finds it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=TRAINED_ADAPTER))
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}
    config = unet.peft_config[TRAINED_ADAPTER]
    StableDiffusionPipeline.save_lora_weights(
        directory,
        unet_lora_layers=state,
        safe_serialization=True,
        unet_lora_adapter_metadata=config.to_dict(),
    )
    return directory


def load_lora_into_unet(unet: Any, directory: Path, *, adapter_name: str = TRAINED_ADAPTER) -> None:
    """Load a saved adapter into a UNet that already has a matching adapter ``adapter_name`` (resume, start).

    Every weight of the saved adapter must have a place in the UNet's adapter and every one of that
    adapter's weights must be in the file; a ValueError names the first few that do not.
    """
    state, _ = StableDiffusionPipeline.lora_state_dict(str(directory))
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(
        unet, convert_unet_state_dict_to_peft(unet_state), adapter_name=adapter_name
    )
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{directory}: LoRA weights do not match the UNet adapter: {unexpected[:5]}")
    missing = [k for k in getattr(result, "missing_keys", None) or () if f".{adapter_name}." in k]
    if missing:
        raise ValueError(f"{directory}: LoRA weights miss part of the UNet adapter: {missing[:5]}")


def add_frozen_adapter(
    unet: Any, directory: Path, *, rank: int, alpha: int, targets: Sequence[str], name: str = REFERENCE_ADAPTER
) -> str:
    """Add the adapter saved in ``directory`` as a second adapter ``name``, frozen and in float32.

    It is never trained and never active except inside :func:`adapter_active`; the trainable adapter
    stays the active one. Returns ``name``.
    """
    active = unet.active_adapters()
    with warnings.catch_warnings():  # peft warns that a second adapter makes two: that is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)), adapter_name=name)
    for parameter_name, parameter in unet.named_parameters():
        if f".{name}." in parameter_name:
            parameter.data = parameter.data.to(torch.float32)  # as cast_training_params does the trained one
    load_lora_into_unet(unet, directory, adapter_name=name)
    unet.set_adapter(active)  # peft freezes every adapter but the active one
    return name


def start_from_adapter(unet: Any, init_lora: Path, *, rank: int, alpha: int, targets: Sequence[str],
                       keep_reference: bool) -> str | None:
    """Give the UNet's trainable adapter the weights saved in ``init_lora`` (a continued run's start).

    With ``keep_reference``, a frozen copy of them is added as well (:func:`add_frozen_adapter`) and its
    name returned, for :func:`reference_pass`; otherwise None.
    """
    load_lora_into_unet(unet, init_lora)
    if not keep_reference:
        return None
    return add_frozen_adapter(unet, init_lora, rank=rank, alpha=alpha, targets=targets)


@contextmanager
def reference_pass(unet: Any, reference: str | None) -> Iterator[None]:
    """Inside the block the UNet is the reference model: only the frozen adapter ``reference`` acts, or,
    when there is none (a run that started fresh), no adapter at all: the base UNet."""
    if reference is not None:
        with adapter_active(unet, reference):
            yield
        return
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


@contextmanager
def adapter_active(unet: Any, name: str) -> Iterator[None]:
    """Only adapter ``name`` acts inside the block; the adapters active before (and trainable) after it."""
    before = unet.active_adapters()
    unet.set_adapter(name)
    try:
        yield
    finally:
        unet.set_adapter(before)


def register_lora_state_hooks(accelerator: Any, unwrap: Any) -> None:
    """Make ``accelerator.save_state``/``load_state`` store only the LoRA weights of the UNet."""

    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        for model in models:
            save_lora(unwrap(model), Path(output_dir))
        weights.clear()

    def load_hook(models: list[Any], input_dir: str) -> None:
        while models:
            load_lora_into_unet(unwrap(models.pop()), Path(input_dir))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


@torch.no_grad()
def eval_images(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 5.0,
    resolution: int | None = None,
) -> list[Image.Image]:
    """One image per (prompt, seed), each from its own CPU generator: a fixed grid to compare checkpoints."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    images: list[Image.Image] = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        out = pipe(
            prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=resolution,
            width=resolution,
            generator=torch.Generator("cpu").manual_seed(int(seed)),
        )
        images.append(out.images[0])
    return images


def load_pipeline(base: Path | str, lora_dir: Path | str | None = None, *, fuse: bool = False) -> Any:
    """A float32 CPU pipeline from a base directory, optionally with a saved LoRA loaded (and fused).

    Loaded by the generation worker's loader (``generation.inference.load_base_pipeline`` and
    ``load_adapter``), so training, its evaluation grids and generation read a checkpoint the same way.
    """
    pipe: Any = load_base_pipeline(base, dtype="float32", device="cpu")
    if lora_dir is not None:
        load_adapter(pipe, lora_dir)
        if fuse:
            pipe.fuse_lora()
            pipe.unload_lora_weights()
    return pipe


def save_lora_checkpoint(
    accelerator: Any,
    unet: Any,
    directory: Path,
    *,
    kind: str,
    config: Any,
    seed: int,
    step: int,
    export_id: str | None = None,
    reward_id: str | None = None,
    extra: dict[str, Any] | None = None,
    with_state: bool = True,
) -> Path:
    """LoRA weights + ``pickwise.json`` (+ accelerate training state) in ``directory``; metadata last."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_lora(accelerator.unwrap_model(unet), directory)
    if with_state:
        accelerator.save_state(str(directory / STATE_DIR))
    if accelerator.is_main_process:
        write_metadata(
            directory, kind=kind, config=config, seed=seed, step=step,
            export_id=export_id, reward_id=reward_id, extra=extra,
        )  # fmt: skip
    return directory
