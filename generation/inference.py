"""Text-to-image inference with diffusers, free of Django: dataclasses and paths in, plain results out.

The pieces, in the order a worker uses them:

- `ModelSpec` says which weights to load (a base pipeline, or a LoRA adapter on top of a parent spec);
  `GenerationParams` says how to sample; `GenerationRequest` = prompt + seeds + params + spec.
- `PipelineCache(device).get(spec)` loads lazily and keeps at most `max_size` base pipelines (LRU).
  LoRA versions share their root's pipeline: each is a named peft adapter on it, and every
  `generate_batch` call activates exactly the adapters of the spec it was handed (none for the base).
- `generate_batch(loaded, requests)` coalesces requests with equal params into batched pipeline calls and
  returns PIL images; `image_to_png_bytes` + `sha256_hex` give deterministic storage bytes and keys.

Reproducibility: an image depends only on (model, prompt, negative prompt, params, seed), not on which
other requests shared its batch. Two things make that true:
- Noise: every image gets its own CPU `torch.Generator` seeded with its seed, which draws its initial
  latents and any scheduler noise (euler_a), so the noise never depends on batch neighbours.
- Arithmetic: convolution and matmul kernels (oneDNN on CPU, cuBLAS/cuDNN on GPU) choose their algorithm,
  and so their rounding, by tensor shape. Measured on CPU/float32 with the tiny model: the same image in a
  batch of 1, 2 or 8 differs by up to ~1e-6 (a 1x1 conv is the first layer to differ), which flips a few
  8-bit pixels, and which batch sizes agree changes with the thread count. So with `fixed_shape=True` (the
  default) `generate_batch` pads every pipeline call to exactly `max_batch` images (repeats of the first
  one, discarded), so the VAE also decodes a batch of that fixed size (one image at a time when the
  batch is unpadded or too large for memory, see VAE_BATCH_PIXELS). Then every image is computed with the same
  shapes, and the row position inside a call does not matter: bit-identical PNGs whatever the batch
  composition (tested). The price is the padding's compute for calls with fewer than `max_batch` images
  (only the last call of a large job; a lone image costs `max_batch` images), so keep `max_batch` modest.
  Bit-identity also needs the same `max_batch`, device, dtype, torch build and CPU thread count.

Importing this module is cheap: torch and diffusers are imported on first use, so the web process can use
the dataclasses to validate input without loading them.
"""

from __future__ import annotations

import gc
import hashlib
import io
import math
import os
import re
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from PIL import Image

from generation.editing import EDIT_KINDS, EditKind, outpaint_canvas, png_bytes

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_SEED",
    "SCHEDULERS",
    "DTypeName",
    "EditInput",
    "GeneratedImage",
    "GenerationError",
    "GenerationOOM",
    "GenerationParams",
    "GenerationRequest",
    "LoadedPipeline",
    "ModelSpec",
    "PipelineCache",
    "ProgressCallback",
    "SchedulerName",
    "draw_seed",
    "generate_batch",
    "image_to_png_bytes",
    "load_adapter",
    "load_base_pipeline",
    "load_pipeline",
    "pipeline_errors",
    "resolve_device",
    "sha256_hex",
    "translate_error",
]

SchedulerName = Literal["ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "lms", "heun", "unipc"]
DTypeName = Literal["float32", "float16", "bfloat16"]

# Scheduler name -> (diffusers class name, extra config). Each is built with `from_config` on the
# model's own scheduler config, so beta schedule, prediction type and timestep spacing stay the model's.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
assert set(SCHEDULERS) == set(get_args(SchedulerName))

# Seeds are stored in signed 64-bit columns; `draw_seed` stays within 31 bits so any UI can show them.
MAX_SEED = 2**63 - 1
_MAX_DRAWN_SEED = 2**31 - 1
# Cache keys double as peft adapter names, which become module-dict keys: no dots, no spaces.
# A padded call decodes its latents in one VAE batch up to this many pixels (eight 512x512 images),
# one image at a time above it (memory) and always when unpadded (same decode shape for every image).
VAE_BATCH_PIXELS = 8 * 512 * 512
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
# A hub id is "org/name"; anything else that does not exist on disk is reported as a missing path.
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# The file a saved LoRA adapter's weights are in (diffusers' ``save_lora_weights``).
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"

# (images done so far in steps, total steps of the whole generate_batch call)
ProgressCallback = Callable[[int, int], None]


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class GenerationParams:
    """How to sample. Hashable: requests with equal params share one batched pipeline call."""

    # Scheduler (sampler) name; see SCHEDULERS.
    scheduler: SchedulerName = "dpmpp_2m"
    # Denoising steps, 1..150.
    steps: int = 30
    # Classifier-free guidance scale, 0..30; <= 1 disables guidance (and the negative prompt).
    guidance: float = 7.0
    # Image size in pixels, multiples of 8 in 8..2048 (the model's own constraints may be stricter).
    width: int = 512
    height: int = 512
    # What the image should not show; at most 1000 characters.
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {self.scheduler!r}")
        _check_int("steps", self.steps, 1, 150)
        if (
            isinstance(self.guidance, bool)
            or not isinstance(self.guidance, int | float)
            or not 0 <= self.guidance <= 30
        ):
            raise ValueError(f"guidance must be a number in [0, 30], got {self.guidance!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value, 8, 2048)
            if value % 8:
                raise ValueError(f"{name} must be a multiple of 8, got {value}")
        if not isinstance(self.negative_prompt, str) or len(self.negative_prompt) > 1000:
            raise ValueError("negative_prompt must be a string of at most 1000 characters")
        object.__setattr__(self, "guidance", float(self.guidance))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict for provenance records."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationParams:
        """Inverse of `to_dict`; missing keys take defaults, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown generation params: {', '.join(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to load. A LoRA version names its parent spec; its pipeline is the root's."""

    # Cache key and adapter name, e.g. "mv-12": letters, digits, "_" and "-".
    key: str
    # Local diffusers pipeline directory, or a hub id ("org/name", read from the local HF cache only
    # unless the cache is told otherwise). For a LoRA version: its root model's source.
    source: str
    # Weights dtype; a LoRA version must match its parent.
    dtype: DTypeName = "float16"
    # LoRA version only: a directory with pytorch_lora_weights.safetensors, or that file itself.
    lora_path: Path | None = None
    # LoRA version only: the spec the adapter was trained on (itself possibly a LoRA version).
    parent: ModelSpec | None = None
    # LoRA version only: adapter weight at generation time (1.0 = as trained).
    lora_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not _KEY_RE.match(self.key):
            raise ValueError(f"key must match {_KEY_RE.pattern}, got {self.key!r}")
        if not isinstance(self.source, str) or not self.source:
            raise ValueError("source must be a non-empty path or hub id")
        if self.dtype not in get_args(DTypeName):
            raise ValueError(f"dtype must be one of {get_args(DTypeName)}, got {self.dtype!r}")
        if (self.lora_path is None) != (self.parent is None):
            raise ValueError("lora_path and parent must be given together (a LoRA version) or not at all")
        if self.lora_path is not None:
            object.__setattr__(self, "lora_path", Path(self.lora_path))
        if self.parent is not None:
            if self.parent.dtype != self.dtype:
                raise ValueError(f"dtype must equal the parent's ({self.parent.dtype}), got {self.dtype}")
            if self.parent.source != self.source:
                raise ValueError("source of a LoRA version must be its parent's source")
            if self.key in {s.key for s in self.parent.lineage()}:
                raise ValueError(f"key {self.key!r} repeats a key of its parents")
        if not isinstance(self.lora_scale, int | float) or not 0 <= self.lora_scale <= 10:
            raise ValueError(f"lora_scale must be a number in [0, 10], got {self.lora_scale!r}")

    @classmethod
    def lora(cls, key: str, lora_path: Path, parent: ModelSpec, *, lora_scale: float = 1.0) -> ModelSpec:
        """A LoRA version of `parent` (source and dtype are inherited)."""
        return cls(
            key=key,
            source=parent.source,
            dtype=parent.dtype,
            lora_path=Path(lora_path),
            parent=parent,
            lora_scale=lora_scale,
        )

    def lineage(self) -> list[ModelSpec]:
        """The chain from the root base model down to this spec."""
        chain: list[ModelSpec] = []
        spec: ModelSpec | None = self
        while spec is not None:
            chain.append(spec)
            spec = spec.parent
        return chain[::-1]

    @property
    def root(self) -> ModelSpec:
        """The base model whose pipeline this spec runs on."""
        return self.lineage()[0]

    @property
    def is_lora(self) -> bool:
        return self.lora_path is not None


@dataclass(frozen=True)
class EditInput:
    """What an image-editing request starts from (validated by ``generation.editing.edit_prepare``).

    img2img renders from the noised source (``StableDiffusionImg2ImgPipeline``); inpaint repaints the
    mask's white part (``StableDiffusionInpaintPipeline``; a 4-channel UNet keeps the rest by blending
    latents each step); outpaint pads the source by ``outpaint`` (edge pixels plus fixed noise,
    ``editing.outpaint_canvas``) and inpaints the new border at strength 1. Both pipelines are built from
    the loaded text-to-image pipeline's components (``from_pipe``): no second copy of the weights.
    """

    kind: EditKind
    # The source as canonical PNG bytes (RGB, the output's size or, for outpaint, the size inside the box).
    source_png: bytes
    # Inpaint: the mask as PNG bytes (L, the source's size; 255 = repaint).
    mask_png: bytes | None = None
    # How far from the source to start, in (0, 1]; outpaint: 1.
    strength: float = 1.0
    # Outpaint: px added left, top, right, bottom.
    outpaint: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in EDIT_KINDS:
            raise ValueError(f"kind must be one of {EDIT_KINDS}, got {self.kind!r}")
        if (self.kind == "inpaint") != (self.mask_png is not None):
            raise ValueError("an inpaint edit needs a mask, and only an inpaint edit takes one")
        if (self.kind == "outpaint") != (self.outpaint is not None):
            raise ValueError("an outpaint edit needs its box, and only an outpaint edit takes one")
        if self.outpaint is not None:
            object.__setattr__(self, "outpaint", tuple(int(px) for px in self.outpaint))
        if isinstance(self.strength, bool) or not isinstance(self.strength, int | float) or not 0 < self.strength <= 1:
            raise ValueError(f"strength must be a number in (0, 1], got {self.strength!r}")
        object.__setattr__(self, "strength", float(self.strength))

    def images(self, width: int, height: int) -> tuple[Image.Image, Image.Image | None]:
        """The pipeline's image and mask (None for img2img), checked against the output size."""
        source = Image.open(io.BytesIO(self.source_png)).convert("RGB")
        mask: Image.Image | None = None
        if self.kind == "outpaint":
            assert self.outpaint is not None
            source, mask = outpaint_canvas(source, self.outpaint, seed=0)
        elif self.kind == "inpaint":
            assert self.mask_png is not None
            mask = Image.open(io.BytesIO(self.mask_png)).convert("L")
            if mask.size != source.size:
                raise GenerationError(f"the mask is {mask.size} but the source is {source.size}")
        if source.size != (width, height):
            raise GenerationError(f"the edit's image is {source.width}x{source.height}, the job's size {width}x{height}")
        return source, mask


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, rendered once per seed (from an edit's source image when ``edit`` is given)."""

    prompt: str
    # One image per seed, each in [0, MAX_SEED]; stored as a tuple.
    seeds: Sequence[int]
    params: GenerationParams
    spec: ModelSpec
    # Image editing (img2img, inpaint, outpaint); None: text to image.
    edit: EditInput | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ValueError("prompt must be a string")
        seeds = tuple(self.seeds)
        if not seeds:
            raise ValueError("seeds must not be empty")
        for seed in seeds:
            _check_int("seeds", seed, 0, MAX_SEED)
        object.__setattr__(self, "seeds", seeds)


@dataclass(frozen=True)
class GeneratedImage:
    """One output image and how it was made."""

    image: Image.Image
    seed: int
    # Index of the request (in the list given to generate_batch) this image belongs to.
    request_index: int
    # This image's share of its pipeline call's wall time, in seconds.
    elapsed_s: float
    # Number of images in the pipeline call that produced it.
    batch_size: int


class GenerationError(RuntimeError):
    """The pipeline failed; the message is meant for people."""


class GenerationOOM(GenerationError):
    """The accelerator ran out of memory; fewer images per batch or a smaller size may fit."""


# Errors a failing pipeline raises; anything else (timeouts, interrupts, callback aborts) passes through.
_PIPELINE_ERRORS: tuple[type[Exception], ...] = (
    RuntimeError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    MemoryError,
)


def translate_error(exc: BaseException) -> GenerationError:
    """Map a pipeline exception to GenerationOOM (out of memory) or GenerationError (anything else)."""
    if isinstance(exc, GenerationError):
        return exc
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else type(exc).__name__
    oom_type = type(exc).__name__ == "OutOfMemoryError"  # torch.cuda.OutOfMemoryError
    if oom_type or isinstance(exc, MemoryError) or "out of memory" in text.lower():
        _free_accelerator_memory()
        return GenerationOOM(
            f"Out of memory while generating ({first_line}). Try fewer images per batch or a smaller size."
        )
    return GenerationError(f"Generation failed: {type(exc).__name__}: {first_line}")


@contextmanager
def pipeline_errors() -> Iterator[None]:
    """Re-raise pipeline failures inside the block as GenerationError / GenerationOOM."""
    try:
        yield
    except GenerationError:
        raise
    except _PIPELINE_ERRORS as exc:
        raise translate_error(exc) from exc


def _free_accelerator_memory() -> None:
    import torch  # lazy: web processes import this module (for its types) and never load torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if hasattr(torch, "mps") and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def resolve_device(setting: str) -> torch.device:
    """Map a device setting to a usable torch.device.

    "auto" picks cuda, then mps, then cpu; "cuda" / "cuda:N", "mps" and "cpu" are taken as given and
    raise RuntimeError when that device is not available.
    """
    import torch  # lazy: web processes import this module (for its types) and never load torch

    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda" or re.fullmatch(r"cuda:\d+", setting):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {setting!r} requested but CUDA is not available")
        return torch.device(setting)
    if setting == "mps":
        if not torch.backends.mps.is_available():
            raise RuntimeError("device 'mps' requested but MPS is not available")
        return torch.device("mps")
    raise ValueError(f"device must be 'auto', 'cuda', 'cuda:N', 'mps' or 'cpu', got {setting!r}")


def _torch_dtype(name: DTypeName) -> torch.dtype:
    import torch  # lazy: web processes import this module (for its types) and never load torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# --- loading ---------------------------------------------------------------------------------------


class _Slot:
    """One loaded base pipeline plus the LoRA adapters loaded into it. `lock` serialises all use."""

    def __init__(self, spec: ModelSpec, pipe: Any, device: torch.device, max_adapters: int) -> None:
        self.spec = spec
        self.pipe: Any = pipe
        self.device = device
        self.max_adapters = max_adapters
        self.lock = threading.RLock()
        self.scheduler_config = dict(pipe.scheduler.config)
        # adapter name -> spec, least recently used first
        self.adapters: OrderedDict[str, ModelSpec] = OrderedDict()
        # "img2img" / "inpaint" -> that pipeline, sharing this one's components (built on first use)
        self.edit_pipes: dict[str, Any] = {}

    def pipe_for(self, kind: EditKind | None) -> Any:
        """The pipeline for an edit kind (None: text to image). Call with `lock` held.

        The image-to-image and inpainting pipelines are diffusers' ``AutoPipelineFor*.from_pipe`` of the
        loaded text-to-image pipeline: the same UNet, VAE and text encoder objects (LoRA adapters included),
        no second copy of the weights. Outpainting is an inpainting.
        """
        if self.pipe is None:
            raise GenerationError(f"pipeline {self.spec.key!r} was evicted from the cache; get it again")
        if kind is None:
            return self.pipe
        name = "img2img" if kind == "img2img" else "inpaint"
        pipe = self.edit_pipes.get(name)
        if pipe is None:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting  # lazy: as torch

            auto = AutoPipelineForImage2Image if name == "img2img" else AutoPipelineForInpainting
            pipe = auto.from_pipe(self.pipe)
            pipe.set_progress_bar_config(disable=True)
            self.edit_pipes[name] = pipe
        return pipe

    def ensure_adapters(self, spec: ModelSpec) -> None:
        """Load the LoRA adapters of `spec`'s lineage that are not loaded yet (call with `lock` held)."""
        if self.pipe is None:
            raise GenerationError(f"pipeline {self.spec.key!r} was evicted from the cache; get it again")
        chain = [s for s in spec.lineage() if s.is_lora]
        for lora in chain:
            loaded = self.adapters.get(lora.key)
            if loaded is not None and loaded != lora:
                raise ValueError(f"adapter {lora.key!r} is already loaded from a different spec")
            if loaded is None:
                _load_adapter(self.pipe, lora)
                self.adapters[lora.key] = lora
            self.adapters.move_to_end(lora.key)
        wanted = {s.key for s in chain}
        for name in [n for n in self.adapters if n not in wanted]:
            if len(self.adapters) <= self.max_adapters:
                break
            self.pipe.delete_adapters(name)
            del self.adapters[name]

    def activate(self, spec: ModelSpec) -> None:
        """Make exactly `spec`'s adapters active (none for a base model). Call with `lock` held."""
        self.ensure_adapters(spec)
        chain = [s for s in spec.lineage() if s.is_lora]
        if chain:
            self.pipe.enable_lora()
            self.pipe.set_adapters(
                [s.key for s in chain], adapter_weights=[float(s.lora_scale) for s in chain]
            )
        elif self.adapters:
            self.pipe.disable_lora()

    def close(self) -> None:
        """Drop the pipeline (waiting for a running generation), moving it off the accelerator first."""
        with self.lock:
            pipe, self.pipe = self.pipe, None
            self.adapters.clear()
            self.edit_pipes.clear()
            if pipe is not None and self.device.type != "cpu":
                pipe.to("cpu")
            del pipe
        _free_accelerator_memory()


@dataclass(frozen=True, eq=False)
class LoadedPipeline:
    """A loaded model version, ready for `generate_batch`. LoRA versions share their root's pipeline."""

    spec: ModelSpec
    _slot: _Slot

    @property
    def pipe(self) -> Any:
        """The diffusers pipeline (shared with sibling LoRA versions; use under `generate_batch`'s lock)."""
        if self._slot.pipe is None:
            raise GenerationError(f"pipeline {self.spec.key!r} was evicted from the cache; get it again")
        return self._slot.pipe

    @property
    def device(self) -> torch.device:
        return self._slot.device


def _local_path(source: str) -> Path | None:
    """The directory of a local pipeline, None for a hub id; raises for unusable paths."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is a file, not a diffusers pipeline directory (with model_index.json)")
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path} is not a diffusers pipeline directory: it has no model_index.json")
        return path
    if HUB_ID_RE.match(source) and not source.startswith("."):
        return None
    raise FileNotFoundError(f"model path does not exist: {path}")


def load_base_pipeline(
    source: str | Path, *, dtype: DTypeName = "float32", device: torch.device | str = "cpu",
    local_files_only: bool = True,
) -> Any:
    """The one pipeline loader, for generation workers and training alike: a diffusers text-to-image
    pipeline (``AutoPipelineForText2Image``: SD 1.x/2.x, SDXL, SD3, ...) from a local directory or a hub
    id, in ``dtype`` on ``device``, with its progress bar off and no safety checker.

    Raises FileNotFoundError for a missing path, ValueError for a path that is not a diffusers
    text-to-image pipeline. Hub ids are read from the local Hugging Face cache unless
    ``local_files_only=False``.
    """
    import torch  # lazy: web processes import this module (for its types) and never load torch
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline  # lazy: as torch

    path = _local_path(str(source))
    location = str(path) if path is not None else str(source)
    try:
        index = DiffusionPipeline.load_config(location, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot read the diffusers pipeline {str(source)!r}: {exc}") from exc
    extra: dict[str, Any] = {}
    if "safety_checker" in index:
        # Skip loading it at all; images are reviewed by people, and it blacks out false positives.
        extra = {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(
            location, dtype=_torch_dtype(dtype), local_files_only=local_files_only, **extra
        )
    except ValueError as exc:
        raise ValueError(f"{location} is not a text-to-image pipeline diffusers can load: {exc}") from exc
    except OSError as exc:
        raise FileNotFoundError(f"cannot load the diffusers pipeline {location}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(device) if isinstance(device, str) else torch.device(device))


def load_adapter(pipe: Any, path: str | Path, *, adapter_name: str | None = None) -> None:
    """Load the LoRA weights at ``path`` (a directory or a weights file) into ``pipe``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"LoRA weights do not exist: {path}")
    location, weight_name = (path.parent, path.name) if path.is_file() else (path, None)
    with warnings.catch_warnings():
        # peft warns whenever a second adapter joins a model; sharing the parent is the point here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        pipe.load_lora_weights(str(location), weight_name=weight_name, adapter_name=adapter_name)


def _load_adapter(pipe: Any, spec: ModelSpec) -> None:
    assert spec.lora_path is not None
    load_adapter(pipe, spec.lora_path, adapter_name=spec.key)


def load_pipeline(
    spec: ModelSpec,
    device: torch.device | str = "cpu",
    *,
    local_files_only: bool = True,
    max_adapters: int = 8,
) -> LoadedPipeline:
    """Load `spec` (uncached). A LoRA version loads its root pipeline and its adapter chain.

    Raises FileNotFoundError for a missing path, ValueError for a path that is not a diffusers
    text-to-image pipeline. Hub ids are read from the local Hugging Face cache unless
    `local_files_only=False`. Use `PipelineCache` in workers.
    """
    import torch  # lazy: web processes import this module (for its types) and never load torch

    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    root = spec.root
    pipe = load_base_pipeline(root.source, dtype=root.dtype, device=device, local_files_only=local_files_only)
    slot = _Slot(root, pipe, device, max_adapters)
    with slot.lock:
        slot.ensure_adapters(spec)
    return LoadedPipeline(spec, slot)


class PipelineCache:
    """Per-process LRU of loaded base pipelines, keyed by the root model's key; thread-safe and lazy.

    LoRA versions do not take slots: their adapters live in the root's pipeline (at most `max_adapters`
    each, least recently used dropped first) and are re-loaded on demand. Evicting a pipeline moves it
    off the accelerator and frees its memory; handles to it then raise GenerationError.
    Loading happens under the cache lock, so concurrent `get`s of one model load it once.
    """

    def __init__(
        self,
        device: torch.device | str = "auto",
        *,
        max_size: int = 1,
        max_adapters: int = 8,
        local_files_only: bool = True,
    ) -> None:
        import torch  # lazy: web processes import this module (for its types) and never load torch

        if max_size < 1 or max_adapters < 1:
            raise ValueError("max_size and max_adapters must be at least 1")
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.max_size = max_size
        self.max_adapters = max_adapters
        self.local_files_only = local_files_only
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec) -> LoadedPipeline:
        """The loaded pipeline for `spec`, loading (and evicting the least recently used) as needed."""
        root = spec.root
        with self._lock:
            slot = self._slots.get(root.key)
            if slot is not None and slot.spec != root:
                raise ValueError(f"cache key {root.key!r} already holds a different model spec")
            if slot is None:
                while len(self._slots) >= self.max_size:
                    _, old = self._slots.popitem(last=False)
                    old.close()
                pipe = load_base_pipeline(root.source, dtype=root.dtype, device=self.device,
                                          local_files_only=self.local_files_only)
                slot = _Slot(root, pipe, self.device, self.max_adapters)
                self._slots[root.key] = slot
            self._slots.move_to_end(root.key)
        with slot.lock:
            slot.ensure_adapters(spec)
        return LoadedPipeline(spec, slot)

    def evict(self, key: str) -> bool:
        """Drop the pipeline cached under `key`; False if there was none."""
        with self._lock:
            slot = self._slots.pop(key, None)
        if slot is None:
            return False
        slot.close()
        return True

    def clear(self) -> None:
        with self._lock:
            slots, self._slots = list(self._slots.values()), OrderedDict()
        for slot in slots:
            slot.close()

    def keys(self) -> list[str]:
        """Cached root keys, least recently used first."""
        with self._lock:
            return list(self._slots)

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()


# --- generation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    request_index: int
    seed_index: int
    prompt: str
    seed: int


class _CallbackAbort(Exception):
    """Carries an exception raised by the caller's progress callback through the pipeline."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


def ddim_from_config(config: Mapping[str, Any], **overrides: Any) -> Any:
    """A DDIMScheduler from any scheduler's saved config (``overrides`` win).

    It clips the predicted clean sample to [-1, 1] only where the config says so. DDIM's own default
    is to clip, and a pipeline saved with another scheduler (the shapes model's DPM-Solver) carries no
    such key, while its scaled latents go well beyond that range: clipped, it renders smears.
    """
    import diffusers  # lazy: web processes import this module (for its types) and never load torch

    return diffusers.DDIMScheduler.from_config(
        dict(config), **{"clip_sample": bool(config.get("clip_sample", False)), **overrides})


def make_scheduler(name: SchedulerName, base_config: Mapping[str, Any]) -> Any:
    """The named scheduler (``SCHEDULERS``) built from a pipeline's scheduler config: what the worker samples with."""
    import diffusers  # lazy: web processes import this module (for its types) and never load torch

    class_name, extra = SCHEDULERS[name]
    if class_name == "DDIMScheduler":
        return ddim_from_config(base_config, **extra)
    return getattr(diffusers, class_name).from_config(dict(base_config), **extra)


def generate_batch(
    loaded: LoadedPipeline,
    requests: Sequence[GenerationRequest],
    *,
    callback: ProgressCallback | None = None,
    max_batch: int = 8,
    fixed_shape: bool = True,
) -> list[list[GeneratedImage]]:
    """Render every seed of every request; result[i][j] is request i's image for seeds[j].

    Requests with equal params run as one pipeline call (prompts repeated per seed, one CPU generator
    per image), split into calls of at most `max_batch` images; with `fixed_shape` each call is padded
    to exactly `max_batch` images so pixels do not depend on batch neighbours (see the module docstring).
    `callback(step, total)` reports progress over all calls. All requests must be for `loaded.spec`.
    Pipeline failures raise GenerationOOM or GenerationError; an exception raised by `callback`
    propagates unchanged (use it to cancel).
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    for request in requests:
        if request.spec != loaded.spec:
            raise ValueError(f"request for {request.spec.key!r} given to the pipeline of {loaded.spec.key!r}")

    groups: dict[tuple[GenerationParams, EditInput | None], list[_Item]] = {}
    for r_index, request in enumerate(requests):
        for s_index, seed in enumerate(request.seeds):
            groups.setdefault((request.params, request.edit), []).append(_Item(r_index, s_index, request.prompt, seed))
    chunks = [
        (params, edit, items[start : start + max_batch])
        for (params, edit), items in groups.items()
        for start in range(0, len(items), max_batch)
    ]
    total_steps = sum(params.steps for params, _, _ in chunks)

    results: list[list[GeneratedImage | None]] = [[None] * len(r.seeds) for r in requests]
    slot = loaded._slot
    with slot.lock:
        slot.activate(loaded.spec)
        done_steps = 0
        for params, edit, chunk in chunks:
            images, elapsed = _run_chunk(
                slot, params, chunk, callback, done_steps, total_steps, pad_to=max_batch if fixed_shape else 0,
                edit=edit,
            )
            done_steps += params.steps
            for item, image in zip(chunk, images, strict=True):
                results[item.request_index][item.seed_index] = GeneratedImage(
                    image=image,
                    seed=item.seed,
                    request_index=item.request_index,
                    elapsed_s=elapsed / len(chunk),
                    batch_size=len(chunk),
                )
    return [[image for image in row if image is not None] for row in results]


def _run_chunk(
    slot: _Slot,
    params: GenerationParams,
    chunk: Sequence[_Item],
    callback: ProgressCallback | None,
    steps_before: int,
    total_steps: int,
    *,
    pad_to: int,
    edit: EditInput | None = None,
) -> tuple[list[Image.Image], float]:
    """One pipeline call for `chunk`; returns its images (in order) and its wall time."""
    import torch  # lazy: web processes import this module (for its types) and never load torch

    pipe = slot.pipe_for(edit.kind if edit is not None else None)
    prompts = [item.prompt for item in chunk]
    seeds = [item.seed for item in chunk]
    if len(prompts) < pad_to:
        # Same tensor shapes for every call: kernels pick their algorithm (and rounding) by shape.
        padding = pad_to - len(prompts)
        prompts, seeds = prompts + [prompts[0]] * padding, seeds + [seeds[0]] * padding
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "use_slicing"):
        vae.use_slicing = not pad_to or len(prompts) * params.width * params.height > VAE_BATCH_PIXELS
    pipe.scheduler = make_scheduler(params.scheduler, slot.scheduler_config)

    last_reported = -1

    def on_step_end(p: Any, step_index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        nonlocal last_reported
        if callback is not None:
            # Some schedulers (heun) take more than one denoiser call per step: scale to params.steps.
            num_timesteps = getattr(p, "num_timesteps", None) or params.steps
            step = steps_before + min(
                params.steps, math.ceil((step_index + 1) * params.steps / num_timesteps)
            )
            if step != last_reported:
                last_reported = step
                try:
                    callback(step, total_steps)
                except BaseException as exc:
                    raise _CallbackAbort(exc) from exc
        return tensors

    # An edit's inputs, one copy per row: the pipelines encode row i's image with generator i only when
    # the image batch is as long as the prompt batch (otherwise every row would draw from row 0's generator).
    edit_kwargs: dict[str, Any] = {"width": params.width, "height": params.height}
    if edit is not None:
        with pipeline_errors():
            image, mask = edit.images(params.width, params.height)
        edit_kwargs = {"image": [image] * len(prompts), "strength": edit.strength}
        if mask is not None:
            edit_kwargs.update(mask_image=[mask] * len(prompts), width=params.width, height=params.height)

    started = time.perf_counter()
    try:
        # inference_mode, not the pipeline's own no_grad: no autograd bookkeeping on any tensor (version
        # counters, views), which is most of a small model's per-step cost; the arithmetic is the same.
        with pipeline_errors(), torch.inference_mode():
            output = pipe(
                prompt=prompts,
                negative_prompt=[params.negative_prompt] * len(prompts) if params.negative_prompt else None,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance,
                generator=generators,
                output_type="pil",
                callback_on_step_end=on_step_end,
                **edit_kwargs,
            )
    except _CallbackAbort as abort:  # not a pipeline error, so pipeline_errors lets it through
        raise abort.original from None
    elapsed = time.perf_counter() - started
    images = list(output.images)[: len(chunk)]
    if len(images) != len(chunk):
        raise GenerationError(f"pipeline returned {len(images)} images for {len(chunk)} prompts")
    return images, elapsed


# --- outputs ---------------------------------------------------------------------------------------


def image_to_png_bytes(image: Image.Image) -> bytes:
    """PNG bytes that depend only on the pixels: no metadata, no timestamps, fixed compression (the encoding
    an edit's source and mask are stored in too, ``editing.png_bytes``)."""
    return png_bytes(image)


_png_pool: ThreadPoolExecutor | None = None
_png_pool_lock = threading.Lock()


def images_to_png_bytes(images: Sequence[Image.Image]) -> list[bytes]:
    """``image_to_png_bytes`` of each image, in order, encoded on several cores at once.

    PNG encoding holds no GIL (zlib) and costs tens of milliseconds for a 512x512 image, a quarter of a
    GPU's time per image if done one by one; a batch's images encode in parallel instead.
    """
    global _png_pool
    if len(images) < 2:
        return [image_to_png_bytes(image) for image in images]
    with _png_pool_lock:
        if _png_pool is None:
            _png_pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="png")
    return list(_png_pool.map(image_to_png_bytes, images))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def draw_seed() -> int:
    """A fresh random seed in [0, 2**31 - 1]."""
    return secrets.randbelow(_MAX_DRAWN_SEED + 1)
