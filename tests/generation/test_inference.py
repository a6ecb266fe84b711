"""generation/inference.py on tiny models built from config and loaded from disk like real checkpoints."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from generation.inference import (
    SCHEDULERS,
    GeneratedImage,
    GenerationError,
    GenerationOOM,
    GenerationParams,
    GenerationRequest,
    LoadedPipeline,
    ModelSpec,
    PipelineCache,
    draw_seed,
    generate_batch,
    image_to_png_bytes,
    images_to_png_bytes,
    load_pipeline,
    pipeline_errors,
    resolve_device,
    sha256_hex,
    translate_error,
)
from generation.tiny import TINY_TOKENIZER_DIR, build_tiny_lora, build_tiny_pipeline

# Cheap sampling for the tiny model: 32x32 images are 4x4 latents.
FAST = GenerationParams(scheduler="ddim", steps=2, guidance=5.0, width=32, height=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: many times faster on one thread


@pytest.fixture(scope="module")
def tiny_dir(tiny_pipeline_dir: Path) -> Path:
    """The session's tiny pipeline (tests/conftest.py), read-only here."""
    return tiny_pipeline_dir


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lora")
    return build_tiny_lora(tiny_dir, root / "one", seed=1), build_tiny_lora(tiny_dir, root / "two", seed=2)


@pytest.fixture(scope="module")
def base_spec(tiny_dir: Path) -> ModelSpec:
    return ModelSpec(key="mv-1", source=str(tiny_dir), dtype="float32")


@pytest.fixture(scope="module")
def loaded(base_spec: ModelSpec) -> LoadedPipeline:
    return load_pipeline(base_spec, "cpu")


def pngs(rows: list[list[GeneratedImage]]) -> list[list[bytes]]:
    return [[image_to_png_bytes(g.image) for g in row] for row in rows]


@contextmanager
def count_unet_calls(loaded: LoadedPipeline) -> Iterator[list[int]]:
    """Batch sizes of the UNet's forward calls inside the block (a forward hook observes, it mocks nothing)."""
    rows: list[int] = []
    handle = loaded.pipe.unet.register_forward_hook(
        lambda module, args, output: rows.append(args[0].shape[0])
    )
    try:
        yield rows
    finally:
        handle.remove()


def one(
    loaded: LoadedPipeline, prompt: str, seed: int, params: GenerationParams = FAST, *, max_batch: int = 2
) -> bytes:
    request = GenerationRequest(prompt=prompt, seeds=[seed], params=params, spec=loaded.spec)
    return pngs(generate_batch(loaded, [request], max_batch=max_batch))[0][0]


# --- tiny models -----------------------------------------------------------------------------------


def test_tiny_tokenizer_keeps_known_words_whole_and_spells_unknown_ones() -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    tokens = tokenizer.tokenize("A photo of a cat at night, astronaut zq")
    assert tokens == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "at</w>", "night</w>", ",</w>"] + [
        "astronaut</w>",
        "z",
        "q</w>",
    ]
    assert tokenizer.unk_token_id not in tokenizer("a photo of a zebra").input_ids[1:-1]


def test_build_tiny_pipeline_is_deterministic_in_its_seed(tmp_path: Path, tiny_dir: Path) -> None:
    weights = "unet/diffusion_pytorch_model.safetensors"
    again = build_tiny_pipeline(tmp_path / "again", seed=0)
    other = build_tiny_pipeline(tmp_path / "other", seed=1)
    assert (again / weights).read_bytes() == (tiny_dir / weights).read_bytes()
    assert (other / weights).read_bytes() != (tiny_dir / weights).read_bytes()
    assert json.loads((tiny_dir / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert (tiny_dir / "unet" / "config.json").exists()


# --- params and specs ------------------------------------------------------------------------------


def test_params_round_trip_through_dict() -> None:
    params = GenerationParams(
        scheduler="euler_a", steps=12, guidance=3, width=64, height=128, negative_prompt="x"
    )
    assert GenerationParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    assert GenerationParams.from_dict({"steps": 5}) == GenerationParams(steps=5)
    with pytest.raises(ValueError, match="unknown generation params: seed"):
        GenerationParams.from_dict({"seed": 3})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scheduler", "dpm_magic"),
        ("steps", 0),
        ("steps", 151),
        ("steps", 2.5),
        ("steps", True),
        ("guidance", -0.1),
        ("guidance", 30.5),
        ("guidance", "7"),
        ("width", 4),
        ("width", 2056),
        ("width", 100),
        ("height", 0),
        ("height", 516),
        ("negative_prompt", "n" * 1001),
    ],
)
def test_params_validation_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        GenerationParams(**{field: value})


def test_every_scheduler_name_is_accepted() -> None:
    for name in SCHEDULERS:
        assert GenerationParams(scheduler=name).scheduler == name  # type: ignore[arg-type]


def test_model_spec_validation(tmp_path: Path) -> None:
    base = ModelSpec(key="mv-1", source="/models/sd", dtype="float16")
    child = ModelSpec.lora("mv-2", tmp_path / "lora", base, lora_scale=0.5)
    assert child.root == base and child.lineage() == [base, child] and child.dtype == "float16"
    with pytest.raises(ValueError, match="key"):
        ModelSpec(key="mv.1", source="/models/sd")
    with pytest.raises(ValueError, match="dtype"):
        ModelSpec(key="mv-1", source="/models/sd", dtype="float64")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="together"):
        ModelSpec(key="mv-2", source="/models/sd", lora_path=tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        ModelSpec(key="mv-2", source="/models/sd", dtype="float32", lora_path=tmp_path, parent=base)
    with pytest.raises(ValueError, match="repeats"):
        ModelSpec.lora("mv-1", tmp_path, base)


def test_request_validation(base_spec: ModelSpec) -> None:
    request = GenerationRequest(prompt="a cat", seeds=[1, 2], params=FAST, spec=base_spec)
    assert request.seeds == (1, 2)
    with pytest.raises(ValueError, match="seeds"):
        GenerationRequest(prompt="a cat", seeds=[], params=FAST, spec=base_spec)
    with pytest.raises(ValueError, match="seeds"):
        GenerationRequest(prompt="a cat", seeds=[-1], params=FAST, spec=base_spec)


# --- loading ---------------------------------------------------------------------------------------


def test_load_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_pipeline(ModelSpec(key="m", source=str(missing), dtype="float32"))
    with pytest.raises(ValueError, match="no model_index.json"):
        load_pipeline(ModelSpec(key="m", source=str(tmp_path), dtype="float32"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        load_pipeline(ModelSpec(key="m", source=str(weights), dtype="float32"))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "model_index.json").write_text(json.dumps({"_class_name": "NotAPipeline"}))
    with pytest.raises(ValueError, match=str(odd)):
        load_pipeline(ModelSpec(key="m", source=str(odd), dtype="float32"))


def test_loaded_pipeline_is_quiet_and_unguarded(loaded: LoadedPipeline) -> None:
    assert type(loaded.pipe).__name__ == "StableDiffusionPipeline"
    assert loaded.pipe.safety_checker is None
    assert loaded.pipe.unet.dtype == torch.float32
    assert loaded.device == torch.device("cpu")


# --- generation ------------------------------------------------------------------------------------


def test_same_seed_same_png_other_seed_other_png(loaded: LoadedPipeline) -> None:
    request = GenerationRequest(prompt="a photo of a cat", seeds=[3, 4, 3], params=FAST, spec=loaded.spec)
    [row] = generate_batch(loaded, [request], max_batch=2)
    assert [g.seed for g in row] == [3, 4, 3]
    assert row[0].image.size == (32, 32)
    first, other, again = (image_to_png_bytes(g.image) for g in row)
    assert first == again
    assert first != other
    assert one(loaded, "a photo of a cat", 3) == first  # a later call reproduces it
    assert one(loaded, "a photo of a dog", 3) != first


def test_worker_renders_what_a_plain_diffusers_call_renders(loaded: LoadedPipeline, tiny_dir: Path) -> None:
    """generate_batch (inference_mode, the product's scheduler and padding) changes no pixel of diffusers'."""
    import diffusers

    params = replace(FAST, steps=4)
    seeds = [5, 6]
    request = GenerationRequest(prompt="a red dog", seeds=seeds, params=params, spec=loaded.spec)
    [row] = generate_batch(loaded, [request], max_batch=2)
    plain = diffusers.StableDiffusionPipeline.from_pretrained(tiny_dir, safety_checker=None)
    plain.set_progress_bar_config(disable=True)
    plain.scheduler = diffusers.DDIMScheduler.from_config(plain.scheduler.config, clip_sample=False)
    images = plain(prompt=["a red dog"] * 2, num_inference_steps=params.steps, guidance_scale=params.guidance,
                   width=params.width, height=params.height, output_type="pil",
                   generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds]).images
    assert [image_to_png_bytes(g.image) for g in row] == [image_to_png_bytes(image) for image in images]


@pytest.mark.parametrize(
    "params",
    [
        replace(FAST, width=64, height=64),
        replace(FAST, scheduler="euler_a", negative_prompt="blurry"),
        replace(FAST, scheduler="dpmpp_2m", guidance=1.0),
    ],
    ids=["ddim-64px", "euler_a-negative", "dpmpp_2m-no-cfg"],
)
def test_requests_coalesce_into_one_pass_and_match_lone_images(
    loaded: LoadedPipeline, params: GenerationParams
) -> None:
    asks = [("a red dog", [11]), ("a photo of a cat", [12, 13]), ("blue sky", [14])]
    requests = [GenerationRequest(prompt=p, seeds=s, params=params, spec=loaded.spec) for p, s in asks]
    with count_unet_calls(loaded) as rows:
        batched = generate_batch(loaded, requests, max_batch=4)
    rows_per_image = 2 if params.guidance > 1 else 1  # classifier-free guidance doubles the rows
    assert rows == [4 * rows_per_image] * params.steps  # one pipeline call for all four images
    assert [[g.batch_size for g in row] for row in batched] == [[4], [4, 4], [4]]
    assert all(g.elapsed_s > 0 for row in batched for g in row)

    # Each image alone, and the requests in another order: the same bytes.
    lone = [[one(loaded, prompt, seed, params, max_batch=4) for seed in seeds] for prompt, seeds in asks]
    assert pngs(batched) == lone
    assert pngs(generate_batch(loaded, requests[::-1], max_batch=4))[::-1] == lone


def test_params_groups_and_max_batch_split_calls(loaded: LoadedPipeline) -> None:
    other = replace(FAST, guidance=2.0)
    requests = [
        GenerationRequest(prompt="a cat", seeds=[1, 2, 3], params=FAST, spec=loaded.spec),
        GenerationRequest(prompt="a dog", seeds=[4], params=other, spec=loaded.spec),
        GenerationRequest(prompt="a fox", seeds=[5], params=FAST, spec=loaded.spec),
    ]
    with count_unet_calls(loaded) as rows:
        result = generate_batch(loaded, requests, max_batch=2)
    # FAST: [cat1, cat2] + [cat3, fox5]; other: [dog4] padded to two images; two CFG rows per image.
    assert rows == [4, 4, 4, 4, 4, 4]
    assert [[g.seed for g in row] for row in result] == [[1, 2, 3], [4], [5]]
    assert [[g.request_index for g in row] for row in result] == [[0, 0, 0], [1], [2]]
    assert [[g.batch_size for g in row] for row in result] == [[2, 2, 2], [1], [2]]

    with count_unet_calls(loaded) as rows:
        generate_batch(loaded, requests[1:2], max_batch=2, fixed_shape=False)
    assert rows == [2, 2]


def test_progress_callback_counts_all_steps(loaded: LoadedPipeline) -> None:
    seen: list[tuple[int, int]] = []
    requests = [GenerationRequest(prompt="a cat", seeds=[1, 2, 3], params=FAST, spec=loaded.spec)]
    generate_batch(loaded, requests, max_batch=2, callback=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_callback_exception_cancels_unchanged(loaded: LoadedPipeline) -> None:
    class Cancelled(Exception):
        pass

    def cancel(step: int, total: int) -> None:
        raise Cancelled

    requests = [GenerationRequest(prompt="a cat", seeds=[1], params=FAST, spec=loaded.spec)]
    with pytest.raises(Cancelled):
        generate_batch(loaded, requests, max_batch=2, callback=cancel)


def test_pipeline_failures_become_generation_errors(loaded: LoadedPipeline) -> None:
    def fail_with(exc: Exception) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            raise exc

        return loaded.pipe.unet.register_forward_hook(hook)

    requests = [GenerationRequest(prompt="a cat", seeds=[1], params=FAST, spec=loaded.spec)]
    handle = fail_with(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    with pytest.raises(GenerationOOM, match="Tried to allocate 20.00 GiB"):
        generate_batch(loaded, requests, max_batch=2)
    handle.remove()
    handle = fail_with(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(GenerationError, match="Generation failed: RuntimeError: mat1 and mat2"):
        generate_batch(loaded, requests, max_batch=2)
    handle.remove()
    assert len(generate_batch(loaded, requests, max_batch=2)[0]) == 1  # the pipeline still works


def test_every_scheduler_runs(loaded: LoadedPipeline) -> None:
    for name in SCHEDULERS:
        params = replace(FAST, scheduler=name)
        request = GenerationRequest(prompt="a cat", seeds=[1], params=params, spec=loaded.spec)
        [[image]] = generate_batch(loaded, [request], max_batch=2)
        assert image.image.size == (32, 32), name


def test_ddim_renders_the_shapes_model_like_its_own_scheduler() -> None:
    """DDIM built from a pipeline saved with another scheduler must not clip the clean latent (DDIM's own
    default): the shapes model's latents go beyond [-1, 1], and clipped it rendered only smears."""
    from generation.shapes.judge import judge
    from generation.shapes.model import WEIGHTS_DIR
    from generation.shapes.world import prompt_captions

    loaded = load_pipeline(ModelSpec(key="shapes", source=str(WEIGHTS_DIR), dtype="float32"))
    params = GenerationParams(scheduler="ddim", steps=12, guidance=2.5, width=64, height=64)
    captions = prompt_captions(16, seed=3, split="train")
    rows = generate_batch(loaded, [GenerationRequest(prompt=c, seeds=[0], params=params, spec=loaded.spec)
                                   for c in captions], max_batch=8)
    right = [judge(row[0].image, caption).overall for row, caption in zip(rows, captions, strict=True)]
    assert sum(right) >= 8, f"the judge accepts {sum(right)} of 16 DDIM images"  # about 12; none when clipped


def test_requests_must_match_the_loaded_model(loaded: LoadedPipeline, tmp_path: Path) -> None:
    other = ModelSpec(key="mv-9", source=str(tmp_path), dtype="float32")
    with pytest.raises(ValueError, match="mv-9"):
        generate_batch(loaded, [GenerationRequest(prompt="a", seeds=[1], params=FAST, spec=other)])


# --- LoRA versions and the cache -------------------------------------------------------------------


def test_lora_versions_share_the_parent_without_contaminating_it(
    base_spec: ModelSpec, lora_dirs: tuple[Path, Path]
) -> None:
    one_spec = ModelSpec.lora("mv-2", lora_dirs[0], base_spec)
    two_spec = ModelSpec.lora("mv-3", lora_dirs[1] / "pytorch_lora_weights.safetensors", base_spec)
    cache = PipelineCache("cpu", max_size=1)

    def render(spec: ModelSpec) -> bytes:
        return one(cache.get(spec), "a photo of a cat", 7)

    parent = render(base_spec)
    first = render(one_spec)
    second = render(two_spec)
    assert len({parent, first, second}) == 3  # each adapter changes the image
    assert render(base_spec) == parent  # the parent is untouched after its children ran
    assert render(one_spec) == first  # and each child gets only its own adapter
    assert cache.keys() == ["mv-1"]  # children live in their parent's pipeline
    assert cache.get(one_spec).pipe is cache.get(base_spec).pipe

    half = ModelSpec.lora("mv-4", lora_dirs[0], base_spec, lora_scale=0.5)
    assert render(half) not in {parent, first}


def test_threads_sharing_a_parent_get_their_own_adapter(
    base_spec: ModelSpec, lora_dirs: tuple[Path, Path]
) -> None:
    cache = PipelineCache("cpu", max_size=1)
    specs = [base_spec, ModelSpec.lora("mv-2", lora_dirs[0], base_spec)]
    expected = {spec.key: one(cache.get(spec), "a cat", 9) for spec in specs}
    got: list[tuple[str, bytes]] = []

    def work(spec: ModelSpec) -> None:
        for _ in range(3):
            got.append((spec.key, one(cache.get(spec), "a cat", 9)))

    threads = [threading.Thread(target=work, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 6 and all(data == expected[key] for key, data in got)


def test_lora_adapters_are_bounded_and_reloaded(base_spec: ModelSpec, lora_dirs: tuple[Path, Path]) -> None:
    cache = PipelineCache("cpu", max_size=1, max_adapters=1)
    one_spec = ModelSpec.lora("mv-2", lora_dirs[0], base_spec)
    two_spec = ModelSpec.lora("mv-3", lora_dirs[1], base_spec)
    first = one(cache.get(one_spec), "a cat", 5)
    handle = cache.get(one_spec)
    cache.get(two_spec)  # drops mv-2's adapter
    assert handle.pipe.get_list_adapters()["unet"] == ["mv-3"]
    assert one(handle, "a cat", 5) == first  # reloaded on demand


def test_missing_lora_weights_name_the_path(base_spec: ModelSpec, tmp_path: Path) -> None:
    cache = PipelineCache("cpu")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "gone")):
        cache.get(ModelSpec.lora("mv-2", tmp_path / "gone", base_spec))


def test_cache_is_lazy_lru_and_evicted_handles_fail(tiny_dir: Path, tmp_path: Path) -> None:
    a = ModelSpec(key="mv-a", source=str(tiny_dir), dtype="float32")
    b = ModelSpec(key="mv-b", source=str(build_tiny_pipeline(tmp_path / "b", seed=1)), dtype="float32")
    cache = PipelineCache("cpu", max_size=1)
    assert len(cache) == 0
    handle_a = cache.get(a)
    assert cache.get(a).pipe is handle_a.pipe  # loaded once
    cache.get(b)
    assert cache.keys() == ["mv-b"] and "mv-a" not in cache
    with pytest.raises(GenerationError, match="evicted"):
        one(handle_a, "a cat", 1)
    assert one(cache.get(a), "a cat", 1) == one(load_pipeline(a), "a cat", 1)
    with pytest.raises(ValueError, match="different"):
        cache.get(replace(a, source=str(tmp_path / "b")))
    assert cache.evict("mv-a") and not cache.evict("mv-a")
    cache.clear()
    assert cache.keys() == []


# --- small helpers ---------------------------------------------------------------------------------


def test_png_bytes_depend_only_on_pixels() -> None:
    image = Image.new("RGB", (4, 4), (10, 20, 30))
    tagged = image.copy()
    tagged.info["comment"] = "made at noon"
    data = image_to_png_bytes(image)
    assert data == image_to_png_bytes(tagged)
    assert data.startswith(b"\x89PNG") and b"tIME" not in data and b"tEXt" not in data
    assert Image.open(io.BytesIO(data)).getpixel((0, 0)) == (10, 20, 30)
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_parallel_png_encoding_keeps_order_and_bytes() -> None:
    images = [Image.new("RGB", (64, 48), (i * 20, 255 - i * 20, 7)) for i in range(10)]
    assert images_to_png_bytes(images) == [image_to_png_bytes(image) for image in images]
    assert images_to_png_bytes(images[:1]) == [image_to_png_bytes(images[0])] and images_to_png_bytes([]) == []


def test_draw_seed_range() -> None:
    seeds = {draw_seed() for _ in range(50)}
    assert all(0 <= s <= 2**31 - 1 for s in seeds) and len(seeds) > 1


def test_errors_are_translated() -> None:
    assert isinstance(
        translate_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")), GenerationOOM
    )
    assert isinstance(translate_error(torch.cuda.OutOfMemoryError("boom")), GenerationOOM)
    plain = translate_error(ValueError("bad shape\nmore"))
    assert type(plain) is GenerationError and str(plain) == "Generation failed: ValueError: bad shape"
    with pytest.raises(GenerationOOM, match="fewer images"), pipeline_errors():
        raise RuntimeError("MPS backend out of memory")
    with pytest.raises(KeyboardInterrupt), pipeline_errors():
        raise KeyboardInterrupt


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_generation_on_cuda(tiny_dir: Path) -> None:
    cuda = load_pipeline(ModelSpec(key="mv-gpu", source=str(tiny_dir), dtype="float16"), "cuda")
    assert cuda.pipe.unet.dtype == torch.float16 and cuda.device.type == "cuda"
    request = GenerationRequest(prompt="a photo of a cat", seeds=[1, 2, 1], params=FAST, spec=cuda.spec)
    [row] = generate_batch(cuda, [request], max_batch=2)
    first, other, again = (image_to_png_bytes(g.image) for g in row)
    assert first == again and first != other
    assert one(cuda, "a photo of a cat", 1) == one(cuda, "a photo of a cat", 1)
