"""A programmatic judge of prompt adherence for the shapes world (in the spirit of GenEval).

For an image and a caption it finds the shapes in the image (pixels far from the background
palette, split by their nearest shape colour into connected parts), reads each part's shape
(best template IoU), colour, size (bounding-box side) and position (3x3 grid cell), reads the
background of the top and bottom halves, and matches the caption's shapes to the found parts.

Per image it reports, for every caption shape, whether its shape, colour, size and position are
right (a caption shape with no matching part gets all four wrong), whether the number of shapes
and the background are right, and ``overall``: every one of them right.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from generation.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    GRID_CENTRES,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeSpec,
    parse_caption,
    shape_mask,
)

OBJECT_ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size", "position")
IMAGE_ATTRIBUTES: tuple[str, ...] = ("count", "background")
ATTRIBUTES: tuple[str, ...] = OBJECT_ATTRIBUTES + IMAGE_ATTRIBUTES + ("overall",)

MIN_AREA = 30  # pixels; smaller parts are noise (the smallest shape, a small triangle, has ~70)
TEMPLATE_SIDE = 24
_BG = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
_FG = np.array(list(COLOURS.values()), dtype=np.float32)
_CELL_TO_POSITION = {cell: phrase for phrase, cell in POSITIONS.items()}


def _template(shape: str) -> np.ndarray:
    return shape_mask(shape, TEMPLATE_SIDE)


_TEMPLATES = {s: _template(s) for s in SHAPES}


@dataclass(frozen=True)
class Detection:
    """One shape found in an image."""

    shape: str
    colour: str
    size: str
    position: str
    area: int


@dataclass(frozen=True)
class Judgement:
    """How one image follows its caption; every field is right (True) or wrong (False)."""

    caption: str
    objects: tuple[dict[str, bool], ...]  # per caption shape: {"shape", "colour", "size", "position"}
    count: bool
    background: bool
    detections: tuple[Detection, ...]

    @property
    def overall(self) -> bool:
        return self.count and self.background and all(all(o.values()) for o in self.objects)


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        image = np.asarray(Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
    return image.astype(np.float32)


def _nearest(pixels: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(pixels[..., None, :] - palette, axis=-1)
    return d.argmin(-1), d.min(-1)


def classify_shape(mask: np.ndarray) -> str:
    """The shape whose template best overlaps (IoU) the mask's bounding-box crop."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    resized = np.asarray(
        Image.fromarray(crop.astype(np.uint8) * 255).resize(
            (TEMPLATE_SIDE, TEMPLATE_SIDE), Image.Resampling.BILINEAR
        )
    )
    m = resized >= 128
    ious = {s: (m & t).sum() / max(1, (m | t).sum()) for s, t in _TEMPLATES.items()}
    return max(ious, key=ious.__getitem__)


def _position(cy: float, cx: float) -> str:
    row = int(np.argmin([abs(cy - c) for c in GRID_CENTRES]))
    col = int(np.argmin([abs(cx - c) for c in GRID_CENTRES]))
    return _CELL_TO_POSITION[(row, col)]


def detect(image: Image.Image | np.ndarray) -> tuple[tuple[Detection, ...], tuple[str, str]]:
    """The shapes in an image and its (top, bottom) background colours."""
    pixels = _as_array(image)
    bg_index, bg_dist = _nearest(pixels, _BG)
    fg_index, fg_dist = _nearest(pixels, _FG)
    foreground = fg_dist < bg_dist
    detections: list[Detection] = []
    size_threshold = sum(SIZES.values()) / 2
    for colour_index, colour in enumerate(COLOURS):
        mask = ndimage.binary_opening(foreground & (fg_index == colour_index))  # drop 1-pixel fringes
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        for label in range(1, n + 1):
            part = labels == label
            area = int(part.sum())
            if area < MIN_AREA:
                continue
            ys, xs = np.nonzero(part)
            side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
            size = "large" if side > size_threshold else "small"
            centre = ((ys.min() + ys.max()) / 2 + 0.5, (xs.min() + xs.max()) / 2 + 0.5)
            detections.append(Detection(classify_shape(part), colour, size, _position(*centre), area))
    names = list(BACKGROUNDS)
    half = IMAGE_SIZE // 2
    background = []
    for rows in (slice(0, half), slice(half, IMAGE_SIZE)):
        votes = bg_index[rows][~foreground[rows]]
        background.append(
            names[int(np.bincount(votes, minlength=len(names)).argmax())] if votes.size else names[0]
        )
    detections.sort(key=lambda d: -d.area)
    return tuple(detections), (background[0], background[1])


def _agreement(spec: ShapeSpec, det: Detection) -> dict[str, bool]:
    return {a: getattr(spec, a) == getattr(det, a) for a in OBJECT_ATTRIBUTES}


def judge(image: Image.Image | np.ndarray, caption: str | Scene) -> Judgement:
    """Judge one image against one caption of the world (ValueError for a caption outside it)."""
    scene = caption if isinstance(caption, Scene) else parse_caption(caption)
    detections, background = detect(image)
    wrong = dict.fromkeys(OBJECT_ATTRIBUTES, False)
    best: tuple[dict[str, bool], ...] = tuple(wrong for _ in scene.objects)
    best_score = -1
    # Match caption shapes to detections (at most 2 x a few): the assignment that gets the most attributes right.
    for chosen in itertools.permutations(range(len(detections)), min(len(scene.objects), len(detections))):
        results = [_agreement(spec, detections[i]) for spec, i in zip(scene.objects, chosen, strict=False)]
        results += [wrong] * (len(scene.objects) - len(results))
        score = sum(sum(r.values()) for r in results)
        if score > best_score:
            best, best_score = tuple(results), score
    return Judgement(
        caption=scene.caption,
        objects=best,
        count=len(detections) == len(scene.objects),
        background=background == scene.background,
        detections=detections,
    )


def summarize(judgements: Iterable[Judgement]) -> dict[str, float]:
    """Accuracy per attribute (object attributes over caption shapes, the rest over images), and n."""
    judgements = list(judgements)
    objects = [o for j in judgements for o in j.objects]
    out = {a: float(np.mean([o[a] for o in objects])) if objects else 0.0 for a in OBJECT_ATTRIBUTES}
    out["count"] = float(np.mean([j.count for j in judgements])) if judgements else 0.0
    out["background"] = float(np.mean([j.background for j in judgements])) if judgements else 0.0
    out["overall"] = float(np.mean([j.overall for j in judgements])) if judgements else 0.0
    out["n"] = float(len(judgements))
    return out


def judge_many(images: Sequence[Image.Image | np.ndarray], captions: Sequence[str]) -> dict[str, float]:
    """Judge images against their captions and summarize."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    return summarize(judge(im, c) for im, c in zip(images, captions, strict=True))
