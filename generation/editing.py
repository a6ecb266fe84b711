"""Image-editing requests (image-to-image, inpainting, outpainting): the request, its limits and its
validation, free of Django (bytes and numbers in, normalised PNG bytes out).

An ``EditRequest`` is what the annotate side hands ``generation_job_create(edit=...)``: the kind, the
source image's file bytes, the mask's (inpaint), the strength (img2img, inpaint) and the outpaint box
(px added left, top, right, bottom). ``edit_prepare(edit, limits)`` checks it and returns a
``PreparedEdit``: the source and mask as canonical PNG bytes with their sha256 (the content keys they
are stored under, ``edits/sources/<sha256>.png`` and ``edits/masks/<sha256>.png``), the strength, the box
and the output size. Every problem raises ``EditInputError`` naming the field (``source_image``,
``mask``, ``strength`` or ``outpaint``); services turn it into an ``ApplicationError``.

Normalisation (so the sha256 names exactly the pixels the model sees):
- the source is decoded, converted to RGB, scaled down to fit ``max_source_side`` when larger, and its
  sides floored to multiples of 8 (the VAE's factor); a generated image passes through unchanged;
- the mask must have the uploaded source's size; it is composited over black (transparent = keep),
  converted to grey, scaled to the source's working size (nearest) and thresholded: >= 128 is 255
  (repaint), the rest 0 (keep);
- an outpaint's output is the source padded by the box; the worker fills the border (edge pixels plus
  noise) and repaints it as an inpainting with the border as the mask, at strength 1.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

__all__ = [
    "EDIT_KINDS",
    "EditInputError",
    "EditKind",
    "EditLimits",
    "EditRequest",
    "PreparedEdit",
    "edit_prepare",
    "mask_storage_key",
    "outpaint_canvas",
    "png_bytes",
    "source_storage_key",
]

EditKind = Literal["img2img", "inpaint", "outpaint"]
EDIT_KINDS: tuple[str, ...] = get_args(EditKind)

# Formats an upload may be in (PIL's names).
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
# Decoded pixels an upload may have before it is scaled down (a decompression bomb is refused unread).
MAX_DECODED_PIXELS = 64 * 1024 * 1024
# Sides of the working image are multiples of this (the VAE downsamples by 8).
SIDE_MULTIPLE = 8


def source_storage_key(sha256: str) -> str:
    """Where a normalised source image is stored (shared by every job that edits the same pixels)."""
    return f"edits/sources/{sha256}.png"


def mask_storage_key(sha256: str) -> str:
    """Where a normalised mask is stored."""
    return f"edits/masks/{sha256}.png"


@dataclass(frozen=True)
class EditRequest:
    """An edit the caller asks for; validated by :func:`edit_prepare`."""

    kind: EditKind
    # The image file as uploaded or read from storage (PNG, JPEG or WebP).
    source: bytes
    # Inpaint only: an image of the uploaded source's size; white (>= 128) = repaint, black = keep.
    mask: bytes | None = None
    # img2img / inpaint: 0 < strength <= 1 (None: the limits' default). Outpaint takes none (it is 1).
    strength: float | None = None
    # Outpaint only: px to add left, top, right, bottom; multiples of 8, each 0..limit, not all 0.
    outpaint: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class EditLimits:
    """What a model version accepts (``services.edit_limits`` fills it from settings; the UI shows it)."""

    # Largest upload (source or mask file), bytes.
    max_upload_bytes: int
    # Largest side of the working source image and of an outpaint's output, px (larger sources are scaled down).
    max_source_side: int
    # Most px an outpaint may add on one side.
    outpaint_max_per_side: int
    # Default strength for img2img and inpaint.
    strength_default: float
    # Each outpaint side is a multiple of this.
    outpaint_multiple: int = SIDE_MULTIPLE

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_source_side": self.max_source_side,
            "outpaint_max_per_side": self.outpaint_max_per_side,
            "outpaint_multiple": self.outpaint_multiple,
            "strength_default": self.strength_default,
            "strength_min_exclusive": 0.0,
            "strength_max": 1.0,
            "kinds": list(EDIT_KINDS),
            "formats": sorted(ACCEPTED_FORMATS),
        }


class EditInputError(ValueError):
    """An edit request is wrong; ``field`` is source_image, mask, strength or outpaint."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class PreparedEdit:
    """A validated edit: canonical PNG bytes with their content keys, and the numbers the worker needs."""

    kind: EditKind
    source_png: bytes
    source_sha256: str
    # Working size of the source, px.
    source_width: int
    source_height: int
    mask_png: bytes | None
    mask_sha256: str
    # img2img / inpaint: the strength used; outpaint: 1.0.
    strength: float
    outpaint: tuple[int, int, int, int] | None
    # Output size, px (the source's, or the padded size of an outpaint).
    width: int
    height: int

    def provenance(self) -> dict[str, Any]:
        """What a job and its images record (JSON-ready); equal dicts mean the same edit."""
        return {
            "kind": self.kind,
            "source_sha256": self.source_sha256,
            "source_key": source_storage_key(self.source_sha256),
            "mask_sha256": self.mask_sha256,
            "mask_key": mask_storage_key(self.mask_sha256) if self.mask_sha256 else "",
            "strength": self.strength,
            "outpaint": list(self.outpaint) if self.outpaint is not None else None,
            "source_width": self.source_width,
            "source_height": self.source_height,
        }


def _megabytes(n: int) -> str:
    value = n / 1_000_000
    return f"{value:.1f}".rstrip("0").rstrip(".") + " MB"


def _decode(data: object, *, field: str, limits: EditLimits, what: str) -> Image.Image:
    if not isinstance(data, bytes | bytearray) or not data:
        raise EditInputError(f"Upload {what}: a PNG, JPEG or WebP file.", field=field)
    if len(data) > limits.max_upload_bytes:
        raise EditInputError(
            f"The image is {_megabytes(len(data))}; the limit is {_megabytes(limits.max_upload_bytes)}.", field=field)
    not_an_image = EditInputError("Not an image: upload a PNG, JPEG or WebP.", field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(bytes(data)))
            if image.format not in ACCEPTED_FORMATS:
                raise not_an_image
            if image.width * image.height > MAX_DECODED_PIXELS:
                raise EditInputError(
                    f"The image is {image.width}x{image.height} px; at most {MAX_DECODED_PIXELS // 1_000_000} "
                    "megapixels are accepted.", field=field)
            image.load()
    except EditInputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise not_an_image from None
    return image


def png_bytes(image: Image.Image) -> bytes:
    """PNG bytes that depend only on the pixels: no metadata, no timestamps, fixed compression. Generated
    images are stored in the same encoding (``inference.image_to_png_bytes``)."""
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    bare = Image.frombytes(image.mode, image.size, image.tobytes())
    buffer = io.BytesIO()
    bare.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _working_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    w, h = int(width * scale), int(height * scale)
    return max(SIDE_MULTIPLE, w - w % SIDE_MULTIPLE), max(SIDE_MULTIPLE, h - h % SIDE_MULTIPLE)


def _flatten(image: Image.Image, mode: str, background: tuple[int, int, int, int]) -> Image.Image:
    """``image`` in ``mode`` ("RGB" or "L"), any transparency composited over ``background``."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, background), rgba).convert(mode)
    return image.convert(mode)


def _rgb(image: Image.Image) -> Image.Image:
    """A source image's pixels; transparent pixels become white."""
    return _flatten(image, "RGB", (255, 255, 255, 255))


def _mask_grey(image: Image.Image) -> Image.Image:
    """Grey levels where white = repaint; transparent pixels count as keep (black)."""
    return _flatten(image, "L", (0, 0, 0, 255))


def _strength(value: object, default: float) -> float:
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < float(value) <= 1:
        raise EditInputError(f"The strength is a number above 0 and at most 1 (got {value!r}).", field="strength")
    return float(value)


def _outpaint_box(value: object, limits: EditLimits) -> tuple[int, int, int, int]:
    sides = ("left", "top", "right", "bottom")
    multiple, most = limits.outpaint_multiple, limits.outpaint_max_per_side
    rule = f"Extend each side by a multiple of {multiple} px, at most {most} px"
    if not isinstance(value, tuple | list) or len(value) != 4:
        raise EditInputError(f"{rule}: give four numbers (left, top, right, bottom).", field="outpaint")
    for side, px in zip(sides, value, strict=True):
        if isinstance(px, bool) or not isinstance(px, int) or px < 0 or px > most or px % multiple:
            raise EditInputError(f"{rule} ({side}: {px}).", field="outpaint")
    if not any(value):
        raise EditInputError("Choose how far to extend at least one side.", field="outpaint")
    return (int(value[0]), int(value[1]), int(value[2]), int(value[3]))


def edit_prepare(edit: EditRequest, limits: EditLimits, *, steps: int | None = None) -> PreparedEdit:
    """Validate ``edit`` against ``limits`` and normalise its images; ``EditInputError`` names the field.

    With ``steps`` (the job's denoising steps), a strength that would leave no step to run is refused.
    """
    if not isinstance(edit, EditRequest):
        raise TypeError(f"edit must be an EditRequest, got {type(edit).__name__}")
    if edit.kind not in EDIT_KINDS:
        raise EditInputError(f"Unknown edit kind {edit.kind!r}; one of {', '.join(EDIT_KINDS)}.", field="kind")
    # Fields that do not belong to this kind, before any decoding.
    if edit.kind != "inpaint" and edit.mask is not None:
        raise EditInputError(f"A mask is for inpainting, not {edit.kind}.", field="mask")
    if edit.kind != "outpaint" and edit.outpaint is not None:
        raise EditInputError(f"An outpaint box is for outpainting, not {edit.kind}.", field="outpaint")
    if edit.kind == "outpaint" and edit.strength is not None:
        raise EditInputError("Outpainting repaints the new border fully: it takes no strength.", field="strength")
    if edit.kind == "inpaint" and edit.mask is None:
        raise EditInputError("The mask is empty: paint the part to repaint.", field="mask")
    if edit.kind == "outpaint" and edit.outpaint is None:
        raise EditInputError("Choose how far to extend at least one side.", field="outpaint")

    strength = 1.0 if edit.kind == "outpaint" else _strength(edit.strength, limits.strength_default)
    if steps is not None and edit.kind != "outpaint" and int(steps * strength) < 1:
        raise EditInputError(
            f"At {steps} steps a strength of {strength:g} runs no step; use at least {1 / steps:.2f}.",
            field="strength")
    box = _outpaint_box(edit.outpaint, limits) if edit.kind == "outpaint" else None

    uploaded = _decode(edit.source, field="source_image", limits=limits, what="a source image")
    width, height = _working_size(uploaded.width, uploaded.height, limits.max_source_side)
    source = _rgb(uploaded)
    if source.size != (width, height):
        source = source.resize((width, height), Image.Resampling.LANCZOS)
    source_png = png_bytes(source)

    mask_png: bytes | None = None
    if edit.kind == "inpaint":
        mask_image = _decode(edit.mask, field="mask", limits=limits, what="a mask")
        if mask_image.size != uploaded.size:
            raise EditInputError(
                f"The mask is {mask_image.width}x{mask_image.height} but the source image is "
                f"{uploaded.width}x{uploaded.height}.", field="mask")
        grey = _mask_grey(mask_image)
        if grey.size != (width, height):
            grey = grey.resize((width, height), Image.Resampling.NEAREST)
        binary = (np.asarray(grey) >= 128).astype(np.uint8) * 255
        if not binary.any():
            raise EditInputError("The mask is empty: paint the part to repaint.", field="mask")
        mask_png = png_bytes(Image.fromarray(binary, mode="L"))

    out_w, out_h = width, height
    if box is not None:
        out_w, out_h = width + box[0] + box[2], height + box[1] + box[3]
        if max(out_w, out_h) > limits.max_source_side:
            raise EditInputError(
                f"The extended image would be {out_w}x{out_h} px; at most {limits.max_source_side} px a side.",
                field="outpaint")
    return PreparedEdit(
        kind=edit.kind, source_png=source_png, source_sha256=_sha256(source_png), source_width=width,
        source_height=height, mask_png=mask_png, mask_sha256=_sha256(mask_png) if mask_png else "",
        strength=strength, outpaint=box, width=out_w, height=out_h,
    )


def outpaint_canvas(source: Image.Image, box: tuple[int, int, int, int], *, seed: int) -> tuple[Image.Image, Image.Image]:
    """The source padded by ``box`` (edge pixels repeated, plus noise drawn from ``seed``) and the mask of
    the new border (255 = repaint). Deterministic: the same inputs give the same pixels."""
    left, top, right, bottom = box
    pixels = np.asarray(source.convert("RGB"), dtype=np.int16)
    padded = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    border = np.ones(padded.shape[:2], dtype=bool)
    border[top : top + pixels.shape[0], left : left + pixels.shape[1]] = False
    noise = np.random.default_rng(seed).integers(-32, 33, size=padded.shape, dtype=np.int16)
    padded = np.where(border[..., None], np.clip(padded + noise, 0, 255), padded).astype(np.uint8)
    mask = border.astype(np.uint8) * 255
    return Image.fromarray(padded, mode="RGB"), Image.fromarray(mask, mode="L")
