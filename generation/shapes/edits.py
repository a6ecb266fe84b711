"""Inpainting cases of the shapes world: paint over a shape, ask for another colour, judge the result.

``recolour_cases(n, seed)`` draws one-shape scenes, renders each (with jitter), masks the shape's
bounding box (grown by ``margin`` px) and names a new colour (never the old one, nor a held-out
shape/colour pair). ``recoloured(image, case)`` says whether the judge reads the new colour on a shape
where the old one was (its colour attribute against the new caption). Django-free; numpy and PIL only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from generation.shapes.judge import judge
from generation.shapes.world import COLOURS, HELD_OUT_PAIRS, Scene, ShapeSpec, render, sample_scene

__all__ = ["RecolourCase", "recolour_cases", "recoloured"]


@dataclass(frozen=True)
class RecolourCase:
    source: Image.Image  # the rendered scene (RGB, 64x64)
    mask: Image.Image  # L: 255 over the shape's bounding box (grown), 0 elsewhere
    scene: Scene  # the scene as painted
    target: Scene  # the same scene with the shape in the new colour
    new_colour: str

    @property
    def prompt(self) -> str:
        return self.target.caption


def recolour_cases(n: int, seed: int = 0, *, margin: int = 2) -> list[RecolourCase]:
    """``n`` deterministic recolouring cases (one shape each)."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        scene = sample_scene(rng, "train")
        if len(scene.objects) != 1:
            continue
        shape = scene.objects[0]
        colours = [c for c in COLOURS if c != shape.colour and (shape.shape, c) not in HELD_OUT_PAIRS]
        new_colour = colours[int(rng.integers(len(colours)))]
        pixels = render(scene, rng)
        painted = (pixels == np.array(COLOURS[shape.colour], dtype=np.uint8)).all(axis=-1)
        ys, xs = np.nonzero(painted)
        mask = np.zeros(painted.shape, dtype=np.uint8)
        mask[max(0, ys.min() - margin) : ys.max() + margin + 1, max(0, xs.min() - margin) : xs.max() + margin + 1] = 255
        target = Scene(objects=(ShapeSpec(shape.shape, new_colour, shape.size, shape.position),),
                       background=scene.background)
        cases.append(RecolourCase(Image.fromarray(pixels, mode="RGB"), Image.fromarray(mask, mode="L"), scene,
                                  target, new_colour))
    return cases


def recoloured(image: Image.Image | np.ndarray, case: RecolourCase) -> bool:
    """Whether the judge reads the new colour on the shape (matched against the new caption)."""
    return bool(judge(image, case.target).objects[0]["colour"])
