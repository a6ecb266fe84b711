from __future__ import annotations

import numpy as np
import pytest

from generation.shapes.world import (
    COLOURS,
    HELD_OUT_PAIRS,
    SHAPES,
    TASKS,
    in_task,
    make_examples,
    parse_caption,
    prompt_captions,
    render,
    sample_scenes,
    shape_mask,
    task_captions,
)


def test_examples_are_deterministic_from_the_seed():
    images_a, captions_a = make_examples(64, seed=3)
    images_b, captions_b = make_examples(64, seed=3)
    images_c, captions_c = make_examples(64, seed=4)
    assert np.array_equal(images_a, images_b) and captions_a == captions_b
    assert not np.array_equal(images_a, images_c) and captions_a != captions_c
    assert images_a.shape == (64, 64, 64, 3) and images_a.dtype == np.uint8


def test_prompt_captions_are_deterministic():
    assert prompt_captions(20, seed=1) == prompt_captions(20, seed=1)
    assert prompt_captions(20, seed=1) != prompt_captions(20, seed=2)


def test_captions_round_trip_through_the_parser():
    for split in ("train", "held_out", "any"):
        for scene in sample_scenes(300, seed=5, split=split):
            assert parse_caption(scene.caption) == scene


def test_parser_names_the_unknown_word():
    with pytest.raises(ValueError, match="'pink'"):
        parse_caption("a large pink circle at the top left on a white background")
    with pytest.raises(ValueError, match="background"):
        parse_caption("a large red circle at the top left")
    with pytest.raises(ValueError, match="'hexagon'"):
        parse_caption("a small red hexagon in the center on a gray background")


def test_held_out_pairs_never_appear_in_training_and_always_in_held_out():
    for scene in sample_scenes(500, seed=0, split="train"):
        assert all((o.shape, o.colour) not in HELD_OUT_PAIRS for o in scene.objects)
    for scene in sample_scenes(200, seed=0, split="held_out"):
        assert any((o.shape, o.colour) in HELD_OUT_PAIRS for o in scene.objects)
    assert {s for s, _ in HELD_OUT_PAIRS} == set(SHAPES) and len(HELD_OUT_PAIRS) < len(SHAPES) * len(
        COLOURS
    ) / 4


def test_render_paints_the_shape_in_its_colour():
    scene = parse_caption("a large red square in the center on a white background")
    image = render(scene)
    assert tuple(image[32, 32]) == COLOURS["red"]
    assert (np.all(image == COLOURS["red"], axis=-1)).sum() == 24 * 24
    assert tuple(image[0, 0]) == (245, 245, 245)


def test_two_shape_scenes_have_distinct_colours():
    scenes = [s for s in sample_scenes(300, seed=9) if len(s.objects) == 2]
    assert scenes
    assert all(s.objects[0].colour != s.objects[1].colour for s in scenes)


def test_shape_masks_differ():
    masks = {s: shape_mask(s, 24) for s in SHAPES}
    for a in SHAPES:
        for b in SHAPES:
            if a != b:
                assert (masks[a] != masks[b]).sum() > 20


def test_task_captions_are_the_tasks_own_and_any_is_every_caption():
    assert task_captions(40, 9, "any") == prompt_captions(40, seed=9)
    assert task_captions(40, 9, "any", split="train") == prompt_captions(40, seed=9, split="train")
    one, two = task_captions(60, 9, "one-shape"), task_captions(60, 9, "two-shape")
    assert [len(parse_caption(c).objects) for c in one] == [1] * 60
    assert [len(parse_caption(c).objects) for c in two] == [2] * 60
    # the stream's own order: the two tasks split the first captions of "any" between them
    mixed = prompt_captions(20, seed=9)
    assert [c for c in mixed if c in one[:20] or c in two[:20]] == mixed
    pairs = task_captions(60, 9, "held-out-pairs")
    assert all(any((o.shape, o.colour) in HELD_OUT_PAIRS for o in parse_caption(c).objects) for c in pairs)
    assert pairs == task_captions(60, 9, "held-out-pairs", split="held_out")
    assert all(in_task(parse_caption(c), "any") for c in one + two + pairs)


def test_task_names_and_splits_are_checked():
    assert TASKS == ("any", "one-shape", "two-shape", "held-out-pairs")
    with pytest.raises(ValueError, match="task must be one of .*'three-shape'"):
        task_captions(3, 0, "three-shape")
    with pytest.raises(ValueError, match="held-out-pairs task has no captions in the train split"):
        task_captions(3, 0, "held-out-pairs", split="train")
