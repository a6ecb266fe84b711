"""LoRA on a Stable Diffusion UNet: add, save (diffusers' ``load_lora_weights`` layout), accelerate hooks.

Adapters are added with peft through ``unet.add_adapter(LoraConfig(...))``. Saved adapters are
``<dir>/pytorch_lora_weights.safetensors`` written by ``StableDiffusionPipeline.save_lora_weights`` from
``convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))``, with the LoRA config as adapter
metadata (so ``lora_alpha`` survives), i.e. exactly what ``pipe.load_lora_weights(dir)`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from PIL import Image

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


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
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}
    config = unet.peft_config["default"]
    StableDiffusionPipeline.save_lora_weights(
        directory,
        unet_lora_layers=state,
        safe_serialization=True,
        unet_lora_adapter_metadata=config.to_dict(),
    )
    return directory


def load_lora_into_unet(unet: Any, directory: Path) -> None:
    """Load a saved adapter into a UNet that already has a matching adapter (resume)."""
    state, _ = StableDiffusionPipeline.lora_state_dict(str(directory))
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(
        unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default"
    )
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{directory}: LoRA weights do not match the UNet adapter: {unexpected[:5]}")


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
    """A pipeline from a base directory, optionally with a saved LoRA loaded (and fused)."""
    pipe: Any = StableDiffusionPipeline.from_pretrained(
        str(base), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir))
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
    from rlhf.training.checkpoint import STATE_DIR, write_metadata

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
