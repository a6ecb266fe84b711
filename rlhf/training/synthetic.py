"""Synthetic preference exports with a known answer (the brighter image wins, the one with larger
shapes, or the edit that keeps closest to its source's colour), for tests, demos and benches.

The files follow the export schemas read by :mod:`rlhf.training.data`, so they exercise the same path a
real export does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from diffusers import AutoencoderKL
from PIL import Image

from generation.inference import image_to_png_bytes
from generation.shapes import world
from generation.shapes.world import Scene, ShapeSpec
from rlhf.preferences import larger_shapes, noisy_ranking

CAPTIONS = ("a red ball", "a small house", "two cats", "a green tree", "the sea at noon", "a blue car")


def brightness_image(rng: np.random.Generator, level: float, size: tuple[int, int] = (36, 32)) -> bytes:
    """PNG bytes of a random smooth texture whose mean brightness is about ``level`` (0..1)."""
    w, h = size
    coarse = rng.uniform(-0.2, 0.2, size=(4, 4, 3))
    texture = np.kron(coarse, np.ones((h // 4 + 1, w // 4 + 1, 1)))[:h, :w]
    pixels = np.clip(level + texture + rng.normal(0, 0.03, size=(h, w, 3)), 0, 1)
    return image_to_png_bytes(Image.fromarray((pixels * 255).astype(np.uint8)))


def _split(i: int, n: int) -> str:
    return "train" if i < 0.7 * n else ("validation" if i < 0.85 * n else "test")


PAIR_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "model_0", "model_1", "weight", "split", "prompt_id")
PairRow = tuple[str, bytes, bytes, float, float, str, str, float, str, str]  # PAIR_COLUMNS, in order


def write_pair_rows(path: Path, rows: Iterable[PairRow], *, row_group_size: int | None = None) -> Path:
    """A Pick-a-Pic-schema pairwise parquet table of ``rows`` (one tuple per pair, in PAIR_COLUMNS order)."""
    columns: dict[str, list[object]] = {k: [] for k in PAIR_COLUMNS}
    for row in rows:
        for key, value in zip(PAIR_COLUMNS, row, strict=True):
            columns[key].append(value)
    table = pa.table({k: pa.array(v, type=pa.binary()) if k.startswith("jpg") else v for k, v in columns.items()})
    pq.write_table(table, path, row_group_size=row_group_size)
    return Path(path)


def ranking_pair_rows(caption: str, images: Sequence[bytes], order: Sequence[int], *, model: str, split: str,
                      prompt_id: str) -> Iterator[PairRow]:
    """Every pair of a ranking (``order``: image indices, best first), winner first, as the export writes them."""
    for a, winner in enumerate(order):
        for loser in order[a + 1 :]:
            yield caption, images[winner], images[loser], 1.0, 0.0, model, model, 1.0, split, prompt_id


def write_brightness_pairs(path: Path, n: int, *, seed: int = 0, tie_fraction: float = 0.1) -> Path:
    """A Pick-a-Pic-schema pairwise table of ``n`` rows: 70/15/15 train/validation/test.

    Decided pairs differ in brightness by at least 0.1 and the brighter image wins; about
    ``tie_fraction`` of the rows are ties (0.5/0.5) between images of equal brightness.
    """
    rng = np.random.default_rng(seed)

    def rows() -> Iterator[PairRow]:
        for i in range(n):
            caption_index = int(rng.integers(len(CAPTIONS)))
            b0 = float(rng.uniform(0.15, 0.85))
            if rng.uniform() < tie_fraction:
                b1, label_0 = b0, 0.5
            else:
                b1 = float(rng.uniform(0.15, 0.85))
                while abs(b1 - b0) < 0.1:
                    b1 = float(rng.uniform(0.15, 0.85))
                label_0 = 1.0 if b0 > b1 else 0.0
            jpg_0, jpg_1 = brightness_image(rng, b0), brightness_image(rng, b1)
            model_0, model_1 = f"v{int(rng.integers(2)) + 1}", f"v{int(rng.integers(2)) + 1}"
            yield (CAPTIONS[caption_index], jpg_0, jpg_1, label_0, 1.0 - label_0, model_0, model_1, 1.0,
                   _split(i, n), f"p{caption_index}")

    return write_pair_rows(path, rows(), row_group_size=64)


def write_brightness_lists(path: Path, n: int, *, k: int = 3, seed: int = 0) -> Path:
    """A listwise table of ``n`` prompts with ``k`` images each, best (brightest) first; equal levels tie."""
    rng = np.random.default_rng(seed)
    prompts, images, ranks, splits, prompt_ids = [], [], [], [], []
    levels = np.linspace(0.15, 0.85, 6)
    for i in range(n):
        chosen = np.sort(rng.choice(levels, size=k, replace=True))[::-1]
        distinct = sorted(set(chosen.tolist()), reverse=True)
        prompts.append(CAPTIONS[i % len(CAPTIONS)])
        images.append([brightness_image(rng, float(b)) for b in chosen])
        ranks.append([distinct.index(float(b)) for b in chosen])
        splits.append(_split(i, n))
        prompt_ids.append(f"p{i % len(CAPTIONS)}")
    table = pa.table(
        {
            "prompt": prompts,
            "images": pa.array(images, type=pa.list_(pa.binary())),
            "ranks": pa.array(ranks, type=pa.list_(pa.int32())),
            "split": splits,
            "prompt_id": prompt_ids,
        }
    )
    pq.write_table(table, path, row_group_size=64)
    return Path(path)


def image_brightness(image: Image.Image) -> float:
    return float(np.asarray(image.convert("L"), dtype=np.float64).mean() / 255.0)


def write_generated_brightness_pairs(
    images: list[Image.Image], prompts: list[str], path: Path, *, export_id: str = "synthetic"
) -> Path:
    """Pair consecutive images of the same prompt (0-1, 2-3, ...); the brighter one wins. All rows train."""
    rows: list[PairRow] = []
    for i in range(0, len(images) - 1, 2):
        if prompts[i] != prompts[i + 1]:
            raise ValueError(f"images {i} and {i + 1} have different prompts")
        label_0 = 1.0 if image_brightness(images[i]) > image_brightness(images[i + 1]) else 0.0
        png_0, png_1 = image_to_png_bytes(images[i]), image_to_png_bytes(images[i + 1])
        rows.append((prompts[i], png_0, png_1, label_0, 1.0 - label_0, export_id, export_id, 1.0, "train", prompts[i]))
    return write_pair_rows(path, rows)


def sized_shapes_image(scene: Scene, rng: np.random.Generator, *, spread: int = 3) -> np.ndarray:
    """A shapes-world rendering of ``scene`` whose shapes' sides are each off by up to ``spread`` pixels.

    Like :func:`generation.shapes.world.render` (same colours, grid and jitter), so images of one
    caption differ in how much of the image their shapes cover, as the shapes model's samples do.
    """
    side_px = world.IMAGE_SIZE
    image = np.empty((side_px, side_px, 3), dtype=np.uint8)
    image[: side_px // 2] = world.BACKGROUNDS[scene.background[0]]
    image[side_px // 2 :] = world.BACKGROUNDS[scene.background[1]]
    for obj in scene.objects:
        side = world.SIZES[obj.size] + int(rng.integers(-spread, spread + 1))
        mask = world.shape_mask(obj.shape, side)
        row, col = world.POSITIONS[obj.position]
        cy = world.GRID_CENTRES[row] + int(rng.integers(-world.JITTER, world.JITTER + 1))
        cx = world.GRID_CENTRES[col] + int(rng.integers(-world.JITTER, world.JITTER + 1))
        top = min(max(cy - side // 2, 0), side_px - side)
        left = min(max(cx - side // 2, 0), side_px - side)
        image[top : top + side, left : left + side][mask] = world.COLOURS[obj.colour]
    return image


def write_shapes_pairs(
    path: Path,
    prompts: int,
    *,
    images: int = 4,
    annotators: int = 1,
    temperature: float = 0.0,
    spread: int = 3,
    seed: int = 0,
) -> Path:
    """A pairwise export of ranked shapes-world images: ``prompts`` captions x ``images`` renderings
    (:func:`sized_shapes_image` with ``spread``).

    Each annotator ranks a caption's images by the ``larger_shapes`` preference with Bradley-Terry noise
    at ``temperature`` (:func:`rlhf.preferences.noisy_ranking`, annotator i drawing from seed + i), and
    every ranking becomes all its pairs, winner first, as the Pick-a-Pic export writes them. Prompts are
    split 70/15/15 train/validation/test.
    """
    rng = np.random.default_rng(seed)
    annotator_rngs = [np.random.default_rng(seed + 1 + i) for i in range(annotators)]

    def rows() -> Iterator[PairRow]:
        for p in range(prompts):
            scene = world.sample_scene(rng, "train")
            rendered = [Image.fromarray(sized_shapes_image(scene, rng, spread=spread)) for _ in range(images)]
            scores = [larger_shapes(image, scene.caption) for image in rendered]
            encoded = [image_to_png_bytes(image) for image in rendered]
            for annotator_rng in annotator_rngs:
                order = noisy_ranking(scores, temperature=temperature, rng=annotator_rng)
                yield from ranking_pair_rows(scene.caption, encoded, order, model="shapes",
                                             split=_split(p, prompts), prompt_id=f"p{p}")

    return write_pair_rows(path, rows(), row_group_size=64)


def fit_tiny_vae(
    pipeline_dir: Path, *, steps: int = 80, seed: int = 0, lr: float = 1e-2, batch: int = 8
) -> Path:
    """Fit a tiny pipeline's randomly initialised VAE to reconstruct textured images, in place.

    A random VAE decodes every latent to nearly the same grey, so no fine-tune can change an image's
    brightness. A few hundred reconstruction steps (seconds on a CPU) make decoded brightness follow
    the latents, which brightness-reward learning tests need. The UNet and text encoder are untouched.
    """
    vae = AutoencoderKL.from_pretrained(Path(pipeline_dir), subfolder="vae")
    side = int(vae.config.sample_size)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    vae.train()
    for _ in range(steps):
        level = rng.uniform(0.05, 0.95, size=(batch, 1, 1, 1))
        coarse = np.kron(rng.uniform(-0.2, 0.2, size=(batch, 3, 4, 4)), np.ones((1, 1, side // 4, side // 4)))
        x = torch.from_numpy(np.clip(level + coarse, 0, 1) * 2 - 1).float()
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval()
    vae.save_pretrained(Path(pipeline_dir) / "vae", safe_serialization=True)
    return Path(pipeline_dir)


# --- image-editing preferences ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditExample:
    """One source scene and ``edits`` inpaintings of it that repaint its first shape in another colour.

    ``scores`` is the simulated annotators' preference, higher better: minus the RGB distance between the
    repainted shape's colour and the source's, so the edit that keeps closest to the source's colour wins.
    The caption ("repaint the circle at the top left") names no colour: only the source tells what is close."""

    caption: str
    source: Image.Image
    mask: Image.Image  # the repainted region (255), as the inpainting mask painter stores it
    edits: list[Image.Image]
    colours: list[str]  # each edit's colour
    scores: list[float]


def shapes_edit_examples(n: int, *, edits: int = 4, seed: int = 0) -> list[EditExample]:
    """``n`` shapes-world sources with ``edits`` recolourings each (distinct colours), deterministic from ``seed``."""
    if not 2 <= edits <= len(world.COLOURS):
        raise ValueError(f"edits must be from 2 to {len(world.COLOURS)}, not {edits}")
    rng = np.random.default_rng(seed)
    names = list(world.COLOURS)
    out: list[EditExample] = []
    for _ in range(n):
        scene = world.sample_scene(rng, "any")
        jitter_seed = int(rng.integers(2**31))
        target = scene.objects[0]
        source = world.render(scene, np.random.default_rng(jitter_seed))
        colours = [names[i] for i in rng.choice(len(names), size=edits, replace=False)]
        rendered = []
        for colour in colours:
            others = tuple(o if k else ShapeSpec(o.shape, colour, o.size, o.position)
                           for k, o in enumerate(scene.objects))
            rendered.append(world.render(Scene(others, scene.background), np.random.default_rng(jitter_seed)))
        changed = np.zeros(source.shape[:2], dtype=bool)
        for image in rendered:
            changed |= (image != source).any(axis=-1)
        mask = np.zeros(source.shape[:2], dtype=np.uint8)
        if changed.any():  # the changed pixels' bounding box, grown by 2 px, as an annotator paints it
            ys, xs = np.nonzero(changed)
            mask[max(ys.min() - 2, 0) : ys.max() + 3, max(xs.min() - 2, 0) : xs.max() + 3] = 255
        kept = np.array(world.COLOURS[target.colour], dtype=np.float64)
        scores = [-float(np.linalg.norm(np.array(world.COLOURS[c], dtype=np.float64) - kept)) for c in colours]
        out.append(EditExample(
            caption=f"repaint the {target.shape} {target.position}", source=Image.fromarray(source),
            mask=Image.fromarray(mask, mode="L"), edits=[Image.fromarray(image) for image in rendered],
            colours=colours, scores=scores,
        ))
    return out


EDIT_COLUMNS = ("edit_kind_0", "edit_kind_1", "edit_0", "edit_1", "source_0", "source_1", "mask_0", "mask_1")


def write_shapes_edit_pairs(
    path: Path, sources: int, *, edits: int = 4, temperature: float = 0.0, noise_labels: bool = False,
    seed: int = 0, split: Callable[[int, int], str] | None = None,
) -> Path:
    """A Pick-a-Pic-schema pairwise export of ranked inpaintings (:func:`shapes_edit_examples`), with the edit
    columns an export of image-editing rankings has (kind, provenance JSON, source and mask bytes).

    One simulated annotator ranks each source's edits by their score with Bradley-Terry noise at
    ``temperature`` (:func:`rlhf.preferences.noisy_ranking`); ``noise_labels`` ranks them at random instead
    (the control). Every ranking becomes all its pairs, winner first; ``split(i, sources)`` names source i's
    split (default 70/15/15 train/validation/test).
    """
    rng = np.random.default_rng(seed + 1)
    columns: dict[str, list[object]] = {k: [] for k in (*PAIR_COLUMNS, *EDIT_COLUMNS)}
    for i, example in enumerate(shapes_edit_examples(sources, edits=edits, seed=seed)):
        source, mask = image_to_png_bytes(example.source), image_to_png_bytes(example.mask)
        encoded = [image_to_png_bytes(image) for image in example.edits]
        order = ([int(k) for k in rng.permutation(edits)] if noise_labels
                 else noisy_ranking(example.scores, temperature=temperature, rng=rng))
        provenance = json.dumps({"kind": "inpaint", "strength": 1.0, "outpaint": None,
                                 "source_width": example.source.width, "source_height": example.source.height})
        for row in ranking_pair_rows(example.caption, encoded, order, model="shapes-edit",
                                     split=(split or _split)(i, sources), prompt_id=f"s{i}"):
            for key, value in zip(PAIR_COLUMNS, row, strict=True):
                columns[key].append(value)
            for side in ("0", "1"):
                columns[f"edit_kind_{side}"].append("inpaint")
                columns[f"edit_{side}"].append(provenance)
                columns[f"source_{side}"].append(source)
                columns[f"mask_{side}"].append(mask)
    binary = {"jpg_0", "jpg_1", "source_0", "source_1", "mask_0", "mask_1"}
    table = pa.table({k: pa.array(v, type=pa.binary()) if k in binary else v for k, v in columns.items()})
    pq.write_table(table, path, row_group_size=256)
    return Path(path)
