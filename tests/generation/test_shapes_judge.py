from __future__ import annotations

import random

import numpy as np
from PIL import Image

from generation.shapes.judge import classify_shape, detect, judge, judge_many
from generation.shapes.world import SHAPES, make_examples, parse_caption, render, shape_mask


def test_judge_scores_ground_truth_images_near_100_percent():
    images, captions = make_examples(150, seed=11, split="any")
    scores = judge_many(list(images), captions)
    assert scores["overall"] >= 0.98
    assert min(scores[a] for a in ("shape", "colour", "size", "position", "count", "background")) >= 0.98


def test_judge_scores_shuffled_captions_near_chance():
    images, captions = make_examples(150, seed=12, split="any")
    shuffled = captions[:]
    random.Random(0).shuffle(shuffled)
    scores = judge_many(list(images), shuffled)
    assert scores["overall"] <= 0.05
    assert scores["colour"] <= 0.35  # chance is 1/6, a little more for two-shape matching
    assert scores["position"] <= 0.3  # chance is 1/9


def test_judge_accepts_pil_images_and_reports_the_failed_attribute():
    scene = parse_caption("a small blue triangle at the bottom right on a gray and black background")
    image = Image.fromarray(render(scene))
    assert judge(image, scene.caption).overall
    wrong = judge(image, "a small blue triangle at the top left on a gray and black background")
    assert not wrong.overall
    assert wrong.objects[0] == {"shape": True, "colour": True, "size": True, "position": False}


def test_judge_counts_a_missing_shape_as_wrong():
    scene = parse_caption("a large red circle at the top left on a white background")
    two = (
        "a large red circle at the top left and a small blue cross at the bottom right on a white background"
    )
    result = judge(render(scene), two)
    assert not result.count and not result.overall
    assert result.objects[1] == dict.fromkeys(("shape", "colour", "size", "position"), False)


def test_plain_background_image_has_no_detections():
    detections, background = detect(np.full((64, 64, 3), 128, dtype=np.uint8))
    assert detections == () and background == ("gray", "gray")


def test_classify_shape_recognises_every_template_at_both_sizes():
    for shape in SHAPES:
        for side in (12, 24):
            assert classify_shape(shape_mask(shape, side)) == shape
