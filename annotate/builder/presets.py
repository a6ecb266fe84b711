"""Named template presets: each function returns a complete, valid schema."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from annotate.builder.components import SCHEMA_VERSION, normalise_schema


def _schema(*components: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    raw = {"schema_version": SCHEMA_VERSION,
           "components": [{"type": t, "name": n, "config": c} for t, n, c in components]}
    return normalise_schema(raw)


def rlhf_image_generation() -> dict[str, Any]:
    """The seed's chain: Input → Button → Select → Images → Ranking → Text."""
    return _schema(
        ("instructions", "instructions", {"markdown": "Type a prompt, generate, then **rank** the images "
                                                      "from best to worst. Equal images may share a rank."}),
        ("prompt_input", "prompt", {"label": "Prompt", "placeholder": "A red square on a blue background"}),
        ("generate_button", "generate", {"prompt": "prompt", "selects": ["model"], "count": 4,
                                         "allow_regenerate": True, "max_regenerations": 2}),
        ("select", "model", {"label": "Model versions", "source": "model_versions", "multiple": True}),
        ("images", "images", {"source": "generate", "count": 4, "blind": True}),
        ("ranking", "ranking", {"images": "images", "mode": "full", "allow_ties": True}),
        ("text", "rationale", {"label": "Rationale", "required": False, "max_length": 2000}),
    )


def pairwise_ab_with_tie() -> dict[str, Any]:
    return _schema(
        ("instructions", "instructions", {"markdown": "Which image matches the prompt better? "
                                                      "Choose **tie** when neither is better."}),
        ("prompt_input", "prompt", {"label": "Prompt", "mode": "prompt_set"}),
        ("images", "images", {"source": "task", "count": 2, "blind": True}),
        ("ranking", "ranking", {"images": "images", "mode": "pairwise", "allow_ties": True,
                                "label": "Which is better?"}),
    )


def best_of_n_with_rationale() -> dict[str, Any]:
    return _schema(
        ("instructions", "instructions", {"markdown": "Pick the **best** image and say why."}),
        ("prompt_input", "prompt", {"label": "Prompt", "mode": "prompt_set"}),
        ("images", "images", {"source": "task", "count": 4, "blind": True}),
        ("ranking", "ranking", {"images": "images", "mode": "best_of_n", "label": "Pick the best image"}),
        ("flags", "flags", {"images": "images", "options": ["artifact", "unsafe"]}),
        ("text", "rationale", {"label": "Why is it the best?", "required": True, "min_length": 10}),
    )


def _edit_preset(instructions: str, *edit: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """The chain of an edit: Source image (+ mask or canvas, strength) → Generate → Images → Ranking → Text."""
    return _schema(
        ("instructions", "instructions", {"markdown": instructions}),
        ("prompt_input", "prompt", {"label": "Prompt", "mode": "prompt_set"}),
        ("source_image", "source", {"generate": "generate"}),
        *edit,
        ("generate_button", "generate", {"prompt": "prompt", "count": 4, "label": "Generate edits"}),
        ("images", "images", {"source": "generate", "count": 4, "blind": True}),
        ("ranking", "ranking", {"images": "images", "mode": "full", "allow_ties": True}),
        ("text", "rationale", {"label": "Rationale", "required": False, "max_length": 2000}),
    )


def rank_img2img_edits() -> dict[str, Any]:
    return _edit_preset(
        "Upload or pick an image, set how far the edit may move from it, generate, then **rank** the edits "
        "from best to worst.",
        ("strength", "strength", {"generate": "generate", "default": 60}),
    )


def rank_inpaintings() -> dict[str, Any]:
    return _edit_preset(
        "Upload or pick an image, **paint over the part to repaint**, generate, then rank the inpaintings "
        "from best to worst.",
        ("mask_painter", "mask", {"source": "source"}),
        ("strength", "strength", {"generate": "generate", "default": 100, "minimum": 50}),
    )


def rank_outpaintings() -> dict[str, Any]:
    return _edit_preset(
        "Upload or pick an image, choose how far to **extend each side**, generate, then rank the "
        "outpaintings from best to worst.",
        ("outpaint_canvas", "outpaint", {"source": "source", "default_extend": 64}),
    )


@dataclass(frozen=True)
class Preset:
    key: str
    name: str
    description: str
    build: Callable[[], dict[str, Any]]


PRESETS: dict[str, Preset] = {
    p.key: p
    for p in (
        Preset("rlhf_image_generation", "RLHF for image generation",
               "Input → Generate → Select → Images → Ranking → Text", rlhf_image_generation),
        Preset("pairwise_ab_with_tie", "Pairwise A/B with tie", "Two images from the task, A, B or tie",
               pairwise_ab_with_tie),
        Preset("best_of_n_with_rationale", "Best of N with rationale", "Pick the best image, flag problems, explain",
               best_of_n_with_rationale),
        Preset("rank_img2img_edits", "Rank image-to-image edits",
               "Source image → Strength → Generate → Images → Ranking → Text", rank_img2img_edits),
        Preset("rank_inpaintings", "Rank inpaintings",
               "Source image → Mask painter → Strength → Generate → Images → Ranking → Text", rank_inpaintings),
        Preset("rank_outpaintings", "Rank outpaintings",
               "Source image → Outpaint canvas → Generate → Images → Ranking → Text", rank_outpaintings),
    )
}
