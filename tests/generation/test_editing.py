"""Image-editing jobs: the request's validation (each bad input names its field and stores nothing), the
content-keyed source and mask files, the provenance a job records, and coalescing keys."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from PIL import Image

from core.exceptions import ApplicationError
from generation import editing, inference, services, worker
from generation.editing import EditRequest
from generation.models import GenerationJob


def png(size=(32, 32), colour=(200, 30, 30), mode="RGB", fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def mask_png(size=(32, 32), box=(8, 8, 24, 24)) -> bytes:
    image = Image.new("L", size, 0)
    image.paste(255, box)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def media(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def create(user, version, project, edit, **kwargs):
    kwargs.setdefault("prompt", "a green circle")
    return services.generation_job_create(user=user, model_version=version, project=project, edit=edit, **kwargs)


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (EditRequest("img2img", b"GIF89a not really"), "source_image", "Not an image: upload a PNG, JPEG or WebP."),
        (EditRequest("img2img", png(fmt="GIF", mode="P", colour=1)), "source_image",
         "Not an image: upload a PNG, JPEG or WebP."),
        (EditRequest("img2img", b""), "source_image", "Upload a source image: a PNG, JPEG or WebP file."),
        (EditRequest("img2img", b"\x89PNG" + b"\0" * 2_100_000), "source_image",
         "The image is 2.1 MB; the limit is 2 MB."),
        (EditRequest("inpaint", png(), mask=mask_png(size=(64, 64))), "mask",
         "The mask is 64x64 but the source image is 32x32."),
        (EditRequest("inpaint", png(), mask=mask_png(box=(0, 0, 0, 0))), "mask",
         "The mask is empty: paint the part to repaint."),
        (EditRequest("inpaint", png(), mask=png(colour=(100, 100, 100))), "mask",
         "The mask is empty: paint the part to repaint."),
        (EditRequest("inpaint", png()), "mask", "The mask is empty: paint the part to repaint."),
        (EditRequest("inpaint", png(), mask=b"not a png"), "mask", "Not an image: upload a PNG, JPEG or WebP."),
        (EditRequest("img2img", png(), mask=mask_png()), "mask", "A mask is for inpainting, not img2img."),
        (EditRequest("outpaint", png(), mask=mask_png(), outpaint=(8, 0, 0, 0)), "mask",
         "A mask is for inpainting, not outpaint."),
        (EditRequest("img2img", png(), strength=0.0), "strength",
         "The strength is a number above 0 and at most 1 (got 0.0)."),
        (EditRequest("img2img", png(), strength=1.5), "strength",
         "The strength is a number above 0 and at most 1 (got 1.5)."),
        (EditRequest("inpaint", png(), mask=mask_png(), strength=0.1), "strength",
         "At 4 steps a strength of 0.1 runs no step; use at least 0.25."),
        (EditRequest("outpaint", png(), strength=0.5, outpaint=(8, 0, 0, 0)), "strength",
         "Outpainting repaints the new border fully: it takes no strength."),
        (EditRequest("outpaint", png(), outpaint=(12, 0, 0, 0)), "outpaint",
         "Extend each side by a multiple of 8 px, at most 64 px (left: 12)."),
        (EditRequest("outpaint", png(), outpaint=(0, 0, 72, 0)), "outpaint",
         "Extend each side by a multiple of 8 px, at most 64 px (right: 72)."),
        (EditRequest("outpaint", png(), outpaint=(0, 0, 0, 0)), "outpaint",
         "Choose how far to extend at least one side."),
        (EditRequest("outpaint", png()), "outpaint", "Choose how far to extend at least one side."),
        (EditRequest("img2img", png(), outpaint=(8, 8, 8, 8)), "outpaint",
         "An outpaint box is for outpainting, not img2img."),
        (EditRequest("outpaint", png(size=(96, 96)), outpaint=(64, 0, 0, 0)), "outpaint",
         "The extended image would be 160x96 px; at most 128 px a side."),
    ],
)
def test_bad_edits_name_the_field_and_store_nothing(annotator, project, tiny_version, media, settings,
                                                     edit, field, message):
    settings.GENERATION_EDIT_MAX_UPLOAD_BYTES = 2_000_000
    settings.GENERATION_EDIT_OUTPAINT_MAX_PER_SIDE = 64
    settings.GENERATION_MAX_IMAGE_SIDE = 128
    with pytest.raises(ApplicationError) as info:
        create(annotator, tiny_version, project, edit)
    assert (info.value.field, info.value.message) == (field, message)
    assert not GenerationJob.objects.exists()
    assert not (media / "edits").exists()


def test_edit_limits_for_the_ui(tiny_version, settings):
    settings.GENERATION_EDIT_MAX_UPLOAD_BYTES = 5_000_000
    settings.GENERATION_EDIT_OUTPAINT_MAX_PER_SIDE = 64
    settings.GENERATION_EDIT_STRENGTH_DEFAULT_PERCENT = 60
    limits = services.edit_limits(tiny_version)
    assert limits == {
        "max_upload_bytes": 5_000_000, "max_source_side": settings.GENERATION_MAX_IMAGE_SIDE,
        "outpaint_max_per_side": 64, "outpaint_multiple": 8, "strength_default": 0.6,
        "strength_min_exclusive": 0.0, "strength_max": 1.0, "kinds": ["img2img", "inpaint", "outpaint"],
        "formats": ["JPEG", "PNG", "WEBP"],
    }


def test_inpaint_job_stores_source_and_mask_by_content_and_records_provenance(annotator, project, tiny_version,
                                                                              media):
    # A JPEG source with an RGBA mask (transparent = keep) is normalised to PNGs.
    source = png(fmt="JPEG")
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    mask.paste((255, 255, 255, 255), (4, 4, 20, 20))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    job = create(annotator, tiny_version, project, EditRequest("inpaint", source, mask=buffer.getvalue()),
                 num_images=2)
    edit = job.edit
    assert job.edit_kind == "inpaint"
    assert edit["kind"] == "inpaint" and edit["strength"] == 0.75 and edit["outpaint"] is None
    assert edit["source_key"] == f"edits/sources/{edit['source_sha256']}.png"
    assert edit["mask_key"] == f"edits/masks/{edit['mask_sha256']}.png"
    stored_source = default_storage.open(edit["source_key"]).read()
    stored_mask = default_storage.open(edit["mask_key"]).read()
    assert editing._sha256(stored_source) == edit["source_sha256"]
    assert editing._sha256(stored_mask) == edit["mask_sha256"]
    assert Image.open(io.BytesIO(stored_source)).mode == "RGB"
    grey = Image.open(io.BytesIO(stored_mask))
    assert grey.mode == "L" and grey.getpixel((10, 10)) == 255 and grey.getpixel((25, 25)) == 0
    assert (job.params["width"], job.params["height"]) == (32, 32)
    # The same edit again stores nothing new and coalesces with the first; another strength does not.
    again = create(annotator, tiny_version, project, EditRequest("inpaint", source, mask=buffer.getvalue()))
    assert again.params_hash == job.params_hash
    assert sorted(p.name for p in (media / "edits" / "sources").iterdir()) == [f"{edit['source_sha256']}.png"]
    other = create(annotator, tiny_version, project,
                   EditRequest("inpaint", source, mask=buffer.getvalue(), strength=0.5))
    assert other.params_hash != job.params_hash
    plain = services.generation_job_create(user=annotator, model_version=tiny_version, project=project,
                                           prompt="a green circle")
    assert plain.edit_kind == "" and plain.edit == {}
    assert plain.params_hash != job.params_hash


def test_outpaint_job_grows_the_output_and_big_sources_are_scaled_down(annotator, project, tiny_version, media,
                                                                      settings):
    job = create(annotator, tiny_version, project, EditRequest("outpaint", png(), outpaint=(8, 0, 16, 8)))
    assert (job.params["width"], job.params["height"]) == (56, 40)
    assert job.edit["outpaint"] == [8, 0, 16, 8] and job.edit["strength"] == 1.0 and job.edit["mask_sha256"] == ""
    settings.GENERATION_MAX_IMAGE_SIDE = 64
    big = create(annotator, tiny_version, project, EditRequest("img2img", png(size=(203, 101)), strength=0.5))
    assert (big.params["width"], big.params["height"]) == (64, 24)  # 64x31 floored to multiples of 8
    assert (big.edit["source_width"], big.edit["source_height"]) == (64, 24)


def test_outpaint_canvas_pads_and_masks_the_border():
    source = Image.new("RGB", (16, 8), (10, 200, 30))
    canvas, mask = editing.outpaint_canvas(source, (8, 0, 0, 8), seed=3)
    assert canvas.size == mask.size == (24, 16)
    assert canvas.crop((8, 0, 24, 8)).tobytes() == source.tobytes()
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((8, 0)) == 0 and mask.getpixel((8, 8)) == 255
    again, _ = editing.outpaint_canvas(source, (8, 0, 0, 8), seed=3)
    assert again.tobytes() == canvas.tobytes()


# --- rendering edits (in this process, through the worker code a Celery task runs) ------------------------


@pytest.fixture
def shapes_version(db):
    from generation.shapes.model import DEFAULT_GUIDANCE, DEFAULT_STEPS, WEIGHTS_DIR

    return services.model_version_register(
        name="shapes", source=str(WEIGHTS_DIR), dtype="float32", scheduler="dpmpp_2m", steps=DEFAULT_STEPS,
        guidance=DEFAULT_GUIDANCE, width=64, height=64,
    )


def edit_of(kind: str, size: int) -> EditRequest:
    source = Image.new("RGB", (size, size), (128, 128, 128))
    source.paste((220, 30, 30), (size // 4, size // 4, size // 2, size // 2))
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    if kind == "img2img":
        return EditRequest("img2img", buffer.getvalue(), strength=0.5)
    if kind == "inpaint":
        return EditRequest("inpaint", buffer.getvalue(), mask=mask_png((size, size), (0, 0, size // 2, size // 2)))
    return EditRequest("outpaint", buffer.getvalue(), outpaint=(8, 0, 16, 8))


@pytest.mark.parametrize("model", ["tiny", "shapes"])
@pytest.mark.parametrize("kind", ["img2img", "inpaint", "outpaint"])
def test_each_kind_renders_and_reproduces_byte_for_byte(annotator, project, media, request, model, kind):
    version = request.getfixturevalue(f"{model}_version")
    size = version.default_width
    job = create(annotator, version, project, edit_of(kind, size), num_images=3, prompt="a blue circle in the center")
    result = worker.run_job(job.pk)
    assert result.outcome == "succeeded", job.error
    images = list(job.images.order_by("index"))
    grown = (24, 8) if kind == "outpaint" else (0, 0)
    for image in images:
        assert (image.width, image.height) == (size + grown[0], size + grown[1])
        assert image.edit == job.edit and image.edit_kind == kind
        assert image.edit_source_key == job.edit["source_key"]
        assert image.edit_mask_key == (job.edit["mask_key"] if kind == "inpaint" else "")
        assert image.batch_size == 3 and image.runtime["batch_shape"] == 4
    assert len({image.sha256 for image in images}) == 3  # one seed each
    # Alone in a fresh process's cache, from the provenance only: the same bytes.
    worker.reset_pipeline_cache()
    assert inference.sha256_hex(worker.reproduce_image(images[2])) == images[2].sha256


def test_edit_pipelines_share_the_loaded_weights(tiny_version):
    loaded = worker.pipeline_cache().get(worker.spec_for(tiny_version))
    slot = loaded._slot
    text = slot.pipe_for(None)
    for kind in ("img2img", "inpaint", "outpaint"):
        edit_pipe = slot.pipe_for(kind)
        assert edit_pipe is not text
        for name in ("unet", "vae", "text_encoder", "tokenizer"):
            assert getattr(edit_pipe, name) is getattr(text, name)
    assert slot.pipe_for("outpaint") is slot.pipe_for("inpaint")
    assert type(slot.pipe_for("img2img")).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(slot.pipe_for("inpaint")).__name__ == "StableDiffusionInpaintPipeline"


def test_edit_jobs_coalesce_only_with_the_same_edit(annotator, project, tiny_version, media):
    same = [create(annotator, tiny_version, project, edit_of("inpaint", 32), seeds=[i]) for i in range(2)]
    stronger = create(annotator, tiny_version, project,
                      EditRequest("inpaint", edit_of("inpaint", 32).source, mask=mask_png(), strength=0.5))
    other_mask = create(annotator, tiny_version, project,
                        EditRequest("inpaint", edit_of("inpaint", 32).source, mask=mask_png(box=(0, 0, 8, 8))))
    plain = services.generation_job_create(user=annotator, model_version=tiny_version, project=project,
                                           prompt="a green circle")
    result = worker.run_job(same[0].pk)
    assert sorted(result.claimed) == sorted(job.pk for job in same)
    for job in (stronger, other_mask, plain):
        job.refresh_from_db()
        assert job.status == "queued"
    # Each renders on its own claim, and the same seed on another edit gives other pixels.
    assert [worker.run_job(job.pk).claimed for job in (stronger, other_mask, plain)] == [
        [stronger.pk], [other_mask.pk], [plain.pk]]


def test_a_missing_source_file_fails_the_job_with_the_reason(annotator, project, tiny_version, media):
    job = create(annotator, tiny_version, project, edit_of("img2img", 32))
    default_storage.delete(job.edit["source_key"])
    assert worker.run_job(job.pk).outcome == "failed"
    job.refresh_from_db()
    assert job.status == "failed" and job.error.startswith("The edit's source or mask file is missing")


def test_the_judge_reads_the_new_colour_where_the_shape_was_painted_over():
    """Paint over a shape (its bounding box), prompt for another colour: the judge reads the new colour in
    at least 80% of 50 cases. In this process, through the inference code the worker runs (one case per
    pipeline call, as a job would be), on the shipped shapes model at its defaults."""
    from generation.shapes.edits import recolour_cases, recoloured
    from generation.shapes.model import DEFAULT_GUIDANCE, DEFAULT_STEPS, WEIGHTS_DIR

    spec = inference.ModelSpec(key="shapes", source=str(WEIGHTS_DIR), dtype="float32")
    loaded = inference.load_pipeline(spec)
    params = inference.GenerationParams(scheduler="dpmpp_2m", steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE,
                                        width=64, height=64)
    hits = []
    for index, case in enumerate(recolour_cases(50, seed=0)):
        edit = inference.EditInput(kind="inpaint", source_png=editing.png_bytes(case.source),
                                   mask_png=editing.png_bytes(case.mask), strength=1.0)
        request = inference.GenerationRequest(prompt=case.prompt, seeds=[index], params=params, spec=spec, edit=edit)
        [[generated]] = inference.generate_batch(loaded, [request], max_batch=1)
        hits.append(recoloured(generated.image, case))
    assert sum(hits) >= 40, f"{sum(hits)} of 50"
