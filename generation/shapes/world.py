"""The shapes world: a procedural text-to-image dataset with a small caption grammar.

A scene holds one or two flat-coloured shapes on a plain or two-tone (top/bottom) background.
Its caption is made from a fixed grammar, for example
``"a large red circle at the top left and a small blue square in the center on a white background"``.
Everything is deterministic from a seed and rendered in numpy (no Django, no torch).

Held-out combinations: the (shape, colour) pairs in ``HELD_OUT_PAIRS`` never appear in the
``"train"`` split; the ``"held_out"`` split draws only scenes that contain at least one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

IMAGE_SIZE = 64
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
SIZES: dict[str, int] = {"small": 12, "large": 24}  # side of the shape's bounding box, in pixels
# Positions on a 3x3 grid: phrase -> (row, col); the shape's bounding box is centred on the cell centre.
POSITIONS: dict[str, tuple[int, int]] = {
    "at the top left": (0, 0),
    "at the top": (0, 1),
    "at the top right": (0, 2),
    "at the left": (1, 0),
    "in the center": (1, 1),
    "at the right": (1, 2),
    "at the bottom left": (2, 0),
    "at the bottom": (2, 1),
    "at the bottom right": (2, 2),
}
GRID_CENTRES: tuple[int, int, int] = (14, 32, 50)  # pixel centre of grid row/column 0, 1, 2
JITTER = 2  # each shape is moved by up to this many pixels in x and y
MIN_GAP = 2  # two shapes are at least this many pixels apart (after jitter)
# (shape, colour) pairs never shown in training; the "held_out" split is made of scenes using them.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("circle", "green"), ("square", "purple"), ("triangle", "blue"), ("diamond", "red"), ("cross", "yellow")}
)
TWO_SHAPE_PROBABILITY = 0.5

Split = Literal["train", "held_out", "any"]
SPLITS: tuple[str, ...] = ("train", "held_out", "any")


@dataclass(frozen=True)
class ShapeSpec:
    """One shape of a scene, as named by its caption."""

    shape: str  # one of SHAPES
    colour: str  # one of COLOURS
    size: str  # one of SIZES
    position: str  # one of POSITIONS (the full phrase, e.g. "at the top left")

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {self.position}"


@dataclass(frozen=True)
class Scene:
    """A caption's content: one or two shapes and a background (top colour, bottom colour)."""

    objects: tuple[ShapeSpec, ...]
    background: tuple[str, str]

    @property
    def caption(self) -> str:
        top, bottom = self.background
        bg = top if top == bottom else f"{top} and {bottom}"
        return " and ".join(o.phrase for o in self.objects) + f" on a {bg} background"


def background_names() -> list[tuple[str, str]]:
    """Every background: the plain ones, then the two-tone (top, bottom) pairs."""
    names = list(BACKGROUNDS)
    return [(c, c) for c in names] + [(a, b) for a in names for b in names if a != b]


def vocabulary() -> list[str]:
    """Every word a caption of this world can use, in a fixed order."""
    words: list[str] = ["a", "and", "on", "background"]
    words += list(SIZES) + list(COLOURS) + list(SHAPES) + list(BACKGROUNDS)
    for phrase in POSITIONS:
        words += phrase.split()
    return list(dict.fromkeys(words))


# --- sampling ---------------------------------------------------------------------------------


def _centre(position: str) -> tuple[int, int]:
    row, col = POSITIONS[position]
    return GRID_CENTRES[row], GRID_CENTRES[col]


def _apart(a: ShapeSpec, b: ShapeSpec) -> bool:
    """True when the two shapes cannot touch, whatever their jitter."""
    (ya, xa), (yb, xb) = _centre(a.position), _centre(b.position)
    need = (SIZES[a.size] + SIZES[b.size]) / 2 + 2 * JITTER + MIN_GAP
    return abs(ya - yb) >= need or abs(xa - xb) >= need


def _allowed(spec: ShapeSpec, split: Split) -> bool:
    return split != "train" or (spec.shape, spec.colour) not in HELD_OUT_PAIRS


def sample_scene(rng: np.random.Generator, split: Split = "train") -> Scene:
    """Draw one scene. Two shapes always have different colours and never touch."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    while True:
        n = 2 if rng.random() < TWO_SHAPE_PROBABILITY else 1
        objects = tuple(
            ShapeSpec(
                shape=SHAPES[rng.integers(len(SHAPES))],
                colour=list(COLOURS)[rng.integers(len(COLOURS))],
                size=list(SIZES)[rng.integers(len(SIZES))],
                position=list(POSITIONS)[rng.integers(len(POSITIONS))],
            )
            for _ in range(n)
        )
        if not all(_allowed(o, split) for o in objects):
            continue
        if n == 2 and (objects[0].colour == objects[1].colour or not _apart(*objects)):
            continue
        backgrounds = background_names()
        scene = Scene(objects=objects, background=backgrounds[rng.integers(len(backgrounds))])
        if split == "held_out" and not any((o.shape, o.colour) in HELD_OUT_PAIRS for o in scene.objects):
            continue
        return scene


def sample_scenes(n: int, seed: int, split: Split = "train") -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, split) for _ in range(n)]


def prompt_captions(n: int, seed: int = 0, split: Split = "any") -> list[str]:
    """N deterministic captions of the world (for a demo prompt set or a benchmark)."""
    return [s.caption for s in sample_scenes(n, seed, split)]


# Kinds of caption a benchmark can single out, to measure or train where the model has room to improve
# (``bench/shapes.py --room``, ``bench/ddpo_judge.py --task``).
TASKS: tuple[str, ...] = ("any", "one-shape", "two-shape", "held-out-pairs")


def in_task(scene: Scene, task: str) -> bool:
    """Whether a scene is one of a task's: any scene, one of one or two shapes, or one using a held-out pair."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if task == "held-out-pairs":
        return any((o.shape, o.colour) in HELD_OUT_PAIRS for o in scene.objects)
    return task == "any" or len(scene.objects) == TASKS.index(task)


def task_captions(n: int, seed: int, task: str, split: Split = "any") -> list[str]:
    """The first N captions of a task in the seed's stream of ``split`` scenes (for ``"any"``, exactly
    :func:`prompt_captions`). Held-out pairs never occur in the train split, so that task draws from
    ``"held_out"`` unless asked for ``"train"``, which it refuses."""
    if task == "held-out-pairs":
        if split == "train":
            raise ValueError("the held-out-pairs task has no captions in the train split")
        split = "held_out"
    rng, captions = np.random.default_rng(seed), []
    while len(captions) < n:
        scene = sample_scene(rng, split)
        if in_task(scene, task):
            captions.append(scene.caption)
    return captions


HELD_OUT_SEED = 1_000_003  # captions drawn with this seed are never a round's prompts (rounds use 0..)


def held_out_captions(n: int, *, split: Split = "any") -> list[str]:
    """The evaluation captions: drawn with a seed no round or training run samples prompts with."""
    return prompt_captions(n, seed=HELD_OUT_SEED, split=split)


# --- rendering --------------------------------------------------------------------------------


def shape_mask(shape: str, side: int) -> np.ndarray:
    """A boolean side x side mask of a shape filling its bounding box."""
    c = (np.arange(side) + 0.5) / side * 2 - 1  # pixel centres in [-1, 1]
    y, x = np.meshgrid(c, c, indexing="ij")
    if shape == "circle":
        return x**2 + y**2 <= 1.0
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "triangle":  # apex up, base at the bottom
        return np.abs(x) <= (y + 1) / 2
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.0
    if shape == "cross":
        return (np.abs(x) <= 1 / 3) | (np.abs(y) <= 1 / 3)
    raise ValueError(f"unknown shape {shape!r}")


_MASKS = {(s, n): shape_mask(s, px) for s in SHAPES for n, px in SIZES.items()}


def render(scene: Scene, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render a scene to an IMAGE_SIZE x IMAGE_SIZE x 3 uint8 array; rng draws the jitter (none if None)."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    half = IMAGE_SIZE // 2
    image[:half] = BACKGROUNDS[scene.background[0]]
    image[half:] = BACKGROUNDS[scene.background[1]]
    for obj in scene.objects:
        mask = _MASKS[(obj.shape, obj.size)]
        side = mask.shape[0]
        cy, cx = _centre(obj.position)
        if rng is not None:
            cy += int(rng.integers(-JITTER, JITTER + 1))
            cx += int(rng.integers(-JITTER, JITTER + 1))
        top, left = cy - side // 2, cx - side // 2
        region = image[top : top + side, left : left + side]
        region[mask] = COLOURS[obj.colour]
    return image


def make_examples(n: int, seed: int, split: Split = "train") -> tuple[np.ndarray, list[str]]:
    """N rendered examples, deterministic from the seed: (uint8 images N x 64 x 64 x 3, captions)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions: list[str] = []
    for i in range(n):
        scene = sample_scene(rng, split)
        images[i] = render(scene, rng)
        captions.append(scene.caption)
    return images, captions


# --- parsing ----------------------------------------------------------------------------------


def _parse_background(words: Sequence[str], caption: str) -> tuple[str, str]:
    for w in words:
        if w not in BACKGROUNDS and w != "and":
            raise ValueError(f"unknown background colour {w!r} in caption {caption!r}")
    if len(words) == 1:
        return words[0], words[0]
    if len(words) == 3 and words[1] == "and" and words[0] != words[2]:
        return words[0], words[2]
    raise ValueError(f"cannot parse background {' '.join(words)!r} in caption {caption!r}")


def _parse_object(words: Sequence[str], caption: str) -> ShapeSpec:
    if len(words) < 4 or words[0] != "a":
        raise ValueError(f"cannot parse shape phrase {' '.join(words)!r} in caption {caption!r}")
    size, colour, shape = words[1:4]
    for word, known, kind in ((size, SIZES, "size"), (colour, COLOURS, "colour"), (shape, SHAPES, "shape")):
        if word not in known:
            raise ValueError(f"unknown {kind} {word!r} in caption {caption!r}")
    position = " ".join(words[4:])
    if position not in POSITIONS:
        raise ValueError(f"unknown position {position!r} in caption {caption!r}")
    return ShapeSpec(shape=shape, colour=colour, size=size, position=position)


def parse_caption(caption: str) -> Scene:
    """Parse a caption of this world back into its Scene; ValueError names the first unknown word."""
    words = caption.strip().lower().replace(",", " ").split()
    known = set(vocabulary())
    for w in words:
        if w not in known:
            raise ValueError(f"unknown word {w!r} in caption {caption!r}")
    if len(words) < 3 or words[-1] != "background" or "on" not in words:
        raise ValueError(f"caption must end with 'on a ... background': {caption!r}")
    on = len(words) - 1 - words[::-1].index("on")
    if words[on + 1 : on + 2] != ["a"]:
        raise ValueError(f"expected 'on a ... background' in caption {caption!r}")
    background = _parse_background(words[on + 2 : -1], caption)
    # Object phrases are separated by "and" followed by "a" (position phrases never contain "and").
    phrases: list[list[str]] = [[]]
    body = words[:on]
    for i, w in enumerate(body):
        if w == "and" and body[i + 1 : i + 2] == ["a"]:
            phrases.append([])
        else:
            phrases[-1].append(w)
    objects = tuple(_parse_object(p, caption) for p in phrases)
    if not 1 <= len(objects) <= 2:
        raise ValueError(f"a caption names one or two shapes, not {len(objects)}: {caption!r}")
    return Scene(objects=objects, background=background)
