"""Tiny, randomly initialised diffusion models for tests and benchmarks (no hub downloads).

`build_tiny_pipeline` writes a complete Stable Diffusion 1.x-style pipeline directory (UNet with
cross-attention, AutoencoderKL, CLIP text encoder, CLIP tokenizer, DDIM scheduler) in diffusers'
`save_pretrained` layout, so tests load it through the same path-loading code real checkpoints use.
`build_tiny_lora` writes a LoRA adapter for such a pipeline in the layout `load_lora_weights` reads.

Everything is built from config with weights drawn from a fixed seed (the global torch RNG is left
untouched), so the same seed gives the same weights. Building takes well under a second on a CPU.

Shapes worth knowing (they mirror a real SD 1.x model, only narrower):
- the VAE downsamples by 8, so image sides must be multiples of 8 (latents are side/8);
- the UNet has two resolution levels, so latent sides must be even: image sides multiples of 16
  are the safe choice (32x32 images -> 4x4 latents is the default and the cheapest);
- the text encoder takes 77 tokens with hidden size 32 (the UNet's `cross_attention_dim`);
- the tokenizer (tests/fixtures/tiny_tokenizer/) knows ~130 common prompt words as single tokens
  and spells anything else letter by letter, so every prompt still encodes without unknown tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

__all__ = ["TINY_TOKENIZER_DIR", "build_tiny_lora", "build_tiny_pipeline"]

# The committed tokenizer fixture (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json).
TINY_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny_tokenizer"

# Text-encoder width; the UNet's cross-attention reads vectors of this size.
_HIDDEN = 32
# UNet attention modules a LoRA adapter targets (the usual choice for SD fine-tunes).
_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """A context in which the CPU RNG starts from `seed`; the caller's RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


def build_tiny_pipeline(directory: Path, *, seed: int = 0, sample_size: int = 32) -> Path:
    """Build a tiny StableDiffusionPipeline and save it (safetensors) to `directory`; return `directory`.

    `seed` fixes every weight; `sample_size` is the default image side in pixels (a multiple of 16) that
    the pipeline uses when no width/height is given. The UNet's `config.sample_size` is the latent side,
    i.e. `sample_size // 8`, exactly as in real checkpoints (512 px -> 64).
    """
    if sample_size < 16 or sample_size % 16:
        raise ValueError(f"sample_size must be a positive multiple of 16, got {sample_size}")
    directory = Path(directory)
    tokenizer = CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=sample_size // 8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=_HIDDEN,
            attention_head_dim=4,
            norm_num_groups=4,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            # Four levels -> downsampling factor 8, like SD's VAE.
            block_out_channels=(4, 4, 4, 4),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            sample_size=sample_size,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=_HIDDEN,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=tokenizer.model_max_length,
                projection_dim=_HIDDEN,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def build_tiny_lora(parent_dir: Path, out_dir: Path, seed: int = 0, *, rank: int = 4) -> Path:
    """Write a LoRA adapter (UNet attention layers, non-zero random weights) for the pipeline in `parent_dir`.

    The adapter is saved as `out_dir/pytorch_lora_weights.safetensors` via
    `StableDiffusionPipeline.save_lora_weights`, i.e. what diffusers' `load_lora_weights(out_dir)` reads.
    `lora_alpha == rank`, so its scale is 1. Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    unet = UNet2DConditionModel.from_pretrained(Path(parent_dir), subfolder="unet")
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=_LORA_TARGETS,
        # False: both LoRA matrices keep their random default init, so the adapter changes outputs
        # (peft's default zero-initialises B, which would make the adapter a no-op).
        init_lora_weights=False,
    )
    with _seeded(seed):
        unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers=layers,
        safe_serialization=True,
        unet_lora_adapter_metadata=config.to_dict(),
    )
    return out_dir
