from __future__ import annotations

import json

import pytest
from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline

from generation.shapes.judge import judge_many
from generation.shapes.model import WEIGHTS_DIR, generate, load_pipeline, random_pipeline_like
from generation.shapes.world import prompt_captions

CAPTIONS = prompt_captions(8, seed=77, split="train")

# These check the shipped model itself; they report as skipped (with this reason) until the recipe's
# weights are exported into generation/weights/shapes/ (issue 9 is open until then).
pytestmark = pytest.mark.skipif(
    not (WEIGHTS_DIR / "model_index.json").is_file(),
    reason="the shapes-world weights have not been exported to generation/weights/shapes/ yet",
)


@pytest.fixture(scope="module")
def shipped() -> StableDiffusionPipeline:
    return load_pipeline(WEIGHTS_DIR)


def test_shipped_weights_are_small_safetensors():
    files = [p for p in WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 25 * 2**20
    assert {p.parent.name for p in files if p.suffix == ".safetensors"} == {"unet", "vae", "text_encoder"}
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".ckpt")]


def test_shipped_model_loads_through_both_diffusers_entry_points(shipped):
    auto = AutoPipelineForText2Image.from_pretrained(WEIGHTS_DIR)
    assert isinstance(auto, StableDiffusionPipeline)
    trained_with = json.loads((WEIGHTS_DIR / "training.json").read_text())["config"]["model"][
        "prediction_type"
    ]
    assert shipped.scheduler.config.prediction_type == trained_with == "v_prediction"
    assert shipped.vae.config.scaling_factor != 0.18215
    assert (shipped.unet.config.sample_size * shipped.vae_scale_factor) == 64


def test_shipped_model_beats_random_weights_on_the_judge(shipped):
    trained = judge_many(generate(shipped, CAPTIONS, seed=1), CAPTIONS)
    random = judge_many(generate(random_pipeline_like(WEIGHTS_DIR), CAPTIONS, seed=1), CAPTIONS)
    # Random weights decode to noise: no shape is found and every attribute is wrong.
    for attribute, margin in {"colour": 0.4, "size": 0.4, "count": 0.4, "background": 0.5}.items():
        assert trained[attribute] >= random[attribute] + margin, (attribute, trained, random)
    assert trained["overall"] >= random["overall"]
