"""Model versions (base and LoRA), the registration command, and the database's own rules."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction

from core.exceptions import ApplicationError
from generation import inference, selectors, services, worker
from generation.models import GeneratedImage, GenerationJob, ModelVersion


def test_register_command_loads_the_pipeline(db, tiny_pipeline_dir, capsys):
    call_command(
        "register_model_version",
        "tiny-cmd",
        "--source",
        str(tiny_pipeline_dir),
        "--dtype",
        "float32",
        "--scheduler",
        "euler_a",
        "--steps",
        "12",
        "--width",
        "64",
        "--height",
        "64",
    )
    out = capsys.readouterr().out
    assert "Loaded tiny-cmd as StableDiffusionPipeline" in out
    version = ModelVersion.objects.get(name="tiny-cmd")
    assert version.default_params() == inference.GenerationParams(
        scheduler="euler_a", steps=12, guidance=7.0, width=64, height=64
    )
    assert selectors.model_version_choices() == [(version.pk, "tiny-cmd")]


def test_register_command_rolls_back_when_the_weights_do_not_load(db, tmp_path):
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(CommandError, match="does not load"):
        call_command("register_model_version", "broken", "--source", str(tmp_path), "--dtype", "float32")
    with pytest.raises(CommandError, match="source"):
        call_command("register_model_version", "nothing")
    assert not ModelVersion.objects.exists()


def test_lora_version_loads_its_adapter_onto_the_cached_parent(
    annotator, project, tiny_version, tiny_lora_dir
):
    lora = services.model_version_register(name="tiny-lora", parent=tiny_version, lora_path=str(tiny_lora_dir))
    assert lora.dtype == "float32" and lora.kind == "lora"
    # Its generation settings are its parent's unless given: an adapter generates at its base's size.
    assert lora.default_params() == tiny_version.default_params() and lora.default_width == 32
    assert services.model_version_register(name="tiny-lora-8", parent=tiny_version, lora_path=str(tiny_lora_dir),
                                           steps=8).default_params() == inference.GenerationParams(
        **{**tiny_version.default_params().to_dict(), "steps": 8})
    spec = worker.spec_for(lora)
    assert spec.is_lora and spec.parent == worker.spec_for(tiny_version) and spec.key == f"mv-{lora.pk}"
    jobs = [
        services.generation_job_create(
            user=annotator, model_version=v, prompt="a star", seeds=[7], project=project
        )
        for v in (tiny_version, lora)
    ]
    for job in jobs:
        worker.run_job(job.pk)
    assert len(worker.pipeline_cache()) == 1  # one base pipeline; the adapter lives on it
    base_image, lora_image = (GeneratedImage.objects.get(job=job) for job in jobs)
    assert base_image.sha256 != lora_image.sha256
    assert inference.sha256_hex(worker.reproduce_image(lora_image)) == lora_image.sha256


def test_register_validates(db, tiny_version):
    with pytest.raises(ApplicationError, match="exists already"):
        services.model_version_register(name="tiny", source="x")
    with pytest.raises(ApplicationError) as info:
        services.model_version_register(name="lora-no-weights", parent=tiny_version)
    assert info.value.field == "lora_path"
    with pytest.raises(ApplicationError) as info:
        services.model_version_register(name="odd", source="org/model", width=500)
    assert info.value.field == "width"
    with pytest.raises(ApplicationError):
        services.model_version_register(name="bad name!", source="org/model")
    before = tiny_version.default_params().to_dict()
    updated = services.model_version_register(name="tiny", source="org/model", steps=9, update=True)
    assert updated.pk == tiny_version.pk and updated.default_steps == 9
    assert updated.default_params().to_dict() == {**before, "steps": 9}  # what is not given stays as it was


def test_database_constraints(annotator, tiny_version):
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(name="no-source", kind="base", source="")
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(name="orphan-lora", kind="lora", lora_path="/x")
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(name="bad-sched", source="x", default_scheduler="magic")
    job = GenerationJob.objects.create(
        model_version=tiny_version,
        prompt="p",
        params={},
        params_hash="h",
        num_images=1,
        seeds=[1],
        created_by=annotator,
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        GenerationJob.objects.filter(pk=job.pk).update(status="exploded")
    with pytest.raises(IntegrityError), transaction.atomic():
        GenerationJob.objects.filter(pk=job.pk).update(status="running")  # running needs a lease
    fields = {
        "model_version": tiny_version,
        "prompt": "p",
        "seed": 1,
        "params": {},
        "sha256": "0" * 64,
        "width": 8,
        "height": 8,
        "size_bytes": 1,
        "generation_seconds": 0.1,
    }
    GeneratedImage.objects.create(job=job, index=0, storage_key="generated/a.png", **fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        GeneratedImage.objects.create(job=job, index=0, storage_key="generated/b.png", **fields)


def test_seed_demo_skips_the_shapes_model_until_its_weights_exist(db, settings, tmp_path):
    settings.BASE_DIR = tmp_path  # no generation/weights/shapes here
    call_command("seed_demo")
    assert not ModelVersion.objects.filter(name="shapes-v1").exists()


def test_seed_demo_registers_the_shipped_shapes_model(db, settings, tmp_path, tiny_pipeline_dir):
    import shutil

    weights = tmp_path / "generation" / "weights" / "shapes"
    shutil.copytree(tiny_pipeline_dir, weights)
    settings.BASE_DIR = tmp_path
    call_command("seed_demo")
    call_command("seed_demo")  # idempotent
    version = ModelVersion.objects.get(name="shapes-v1")
    assert version.enabled and version.source == "generation/weights/shapes"
    assert worker.resolve_source(version.source) == str(weights)
    assert (version.default_width, version.default_height) == (32, 32)
