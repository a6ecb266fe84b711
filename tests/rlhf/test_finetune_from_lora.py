"""Fine-tune runs that continue a LoRA version: the service, its registration, its field errors, the form and API."""

from __future__ import annotations

import math
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.test import Client
from PIL import Image

from generation import services as generation_services
from generation.models import ModelKind
from rlhf.models import FineTuneRun, RunStatus
from rlhf.runs import finetune
from tests.factories import PASSWORD, api_client_for
from tests.rlhf.conftest import TINY_GENERATION
from tests.rlhf.test_finetune_runs import DPO_FAST, ONE_PROMPT, generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def start(tiny_base, tiny_base_dir, tmp_path):
    """An enabled LoRA version on the tiny base, with a non-trivial adapter: what a run continues."""
    from generation.tiny import build_tiny_lora

    adapter = build_tiny_lora(tiny_base_dir, tmp_path / "start-lora", seed=3)
    return generation_services.model_version_register(name="tiny-start", parent=tiny_base, lora_path=str(adapter),
                                                      **TINY_GENERATION)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.int16)


def stored(key: str) -> np.ndarray:
    with default_storage.open(key, "rb") as handle:
        return pixels(handle.read())


def test_a_dpo_run_continues_a_lora_version_and_registers_its_result_on_the_base(
    pairs_export, ml_engineer, tiny_base, tiny_base_dir, start, model_cache, client
):
    from generation.inference import image_to_png_bytes
    from rlhf.training.lora import eval_images, load_pipeline

    pairs_export.project.model_versions.add(start)  # the project offers the start version
    run = finetune.finetune_run_create(user=ml_engineer, base_version=start, method="dpo", export=pairs_export,
                                           hyperparameters=DPO_FAST, eval_prompts=ONE_PROMPT)
    assert run.config["base_model"] == str(tiny_base_dir) and run.config["init_lora"] == start.lora_path
    assert run.config["lora_rank"] == 4 and run.config["resolution"] == 32  # the adapter's rank, the base's size
    assert run.lineage["continued_from"] == {"id": start.pk, "name": "tiny-start"}
    assert run.lineage["base_version"]["id"] == tiny_base.pk
    run = finetune.finetune_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    first = run.history[0]  # the reference is the start version: the first step has nothing to prefer yet
    assert first["reward_margin"] == 0.0 and first["loss"] == pytest.approx(math.log(2), abs=1e-6)

    # The "base" grid is where the run started: the start version's images, not the base's.
    base_grid = next(g for g in run.eval_grids if g["label"] == "base")
    prompts = [i["prompt"] for i in base_grid["images"]]
    seeds = [i["seed"] for i in base_grid["images"]]

    def render(lora_dir):
        pipe = load_pipeline(tiny_base_dir, lora_dir)
        images = eval_images(pipe, prompts, seeds, num_inference_steps=start.default_steps,
                             guidance_scale=start.default_guidance, resolution=32)
        return [pixels(image_to_png_bytes(image)) for image in images]

    grid = [stored(i["key"]) for i in base_grid["images"]]
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(grid, render(start.lora_path), strict=True))
    assert any(np.abs(a - b).max() > 5 for a, b in zip(grid, render(None), strict=True))

    version = run.result_version
    assert version.kind == ModelKind.LORA and version.parent == tiny_base  # one adapter on the base
    assert version.name == f"tiny-base-dpo-{run.pk}" == finetune.finetune_version_name(run)
    assert "continuing tiny-start" in version.description and f"export {pairs_export.pk}" in version.description
    assert version in pairs_export.project.model_versions.all()
    base_image = generate(ml_engineer, tiny_base, pairs_export.project)
    new_image = generate(ml_engineer, version, pairs_export.project)
    assert new_image.model_version == version and new_image.sha256 != base_image.sha256

    assert client.login(username=ml_engineer.username, password=PASSWORD)
    page = client.get(f"/ml/finetune-runs/{run.pk}/").content.decode()
    assert "Continues" in page and "tiny-start" in page and "start (tiny-start)" in page


def test_a_ddpo_run_continues_a_lora_version(ranked, ml_engineer, tiny_base, start, model_cache):
    run = finetune.finetune_run_create(
        user=ml_engineer, base_version=start, method="ddpo", project=ranked, reward_name="brightness",
        prompt_source="project", eval_prompts=ONE_PROMPT,
        hyperparameters={"iterations": 1, "prompts_per_iteration": 2, "images_per_prompt": 2, "sample_steps": 3,
                         "train_batch_size": 4},
    )
    assert run.config["init_lora"] == start.lora_path
    run = finetune.finetune_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.result_version.parent == tiny_base and run.lineage["continued_from"]["name"] == "tiny-start"


def test_bad_lora_starts_are_field_errors_and_create_nothing(
    pairs_export, ml_engineer, tiny_base, tiny_base_dir, start, tmp_path, client, django_capture_on_commit_callbacks
):
    from generation.tiny import build_tiny_lora

    def lora(name, **kwargs):
        kwargs.setdefault("parent", tiny_base)
        kwargs.setdefault("lora_path", str(build_tiny_lora(tiny_base_dir, tmp_path / name)))
        return generation_services.model_version_register(name=name, **kwargs)

    disabled = lora("off", enabled=False)
    gone = lora("gone")
    (Path(gone.lora_path) / "pytorch_lora_weights.safetensors").unlink()
    stacked = lora("stacked", parent=start)
    scaled = lora("scaled", lora_scale=0.5)
    payload = {"method": "dpo", "export": pairs_export.pk, "hyperparameters": DPO_FAST}
    cases = [
        ({"base_version": disabled.pk}, "base_version", "disabled"),
        ({"base_version": gone.pk}, "base_version", "missing"),
        ({"base_version": stacked.pk}, "base_version", "not on a base version"),
        ({"base_version": scaled.pk}, "base_version", "scale"),
        ({"base_version": start.pk, "hyperparameters": {"lora_rank": 8}}, "lora_rank", "rank 4"),
        ({"base_version": start.pk, "hyperparameters": {"lora_alpha": 2}}, "lora_alpha", "alpha 4"),
        ({"base_version": start.pk, "hyperparameters": {"init_lora": "/tmp"}}, "init_lora", "Unknown"),
    ]
    api = api_client_for(ml_engineer)
    assert client.login(username=ml_engineer.username, password=PASSWORD)
    url = f"/ml/projects/{pairs_export.project_id}/finetune-runs/new/"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        for case, field, words in cases:
            response = api.post("/api/finetune-runs/", {**payload, **case}, format="json")
            assert response.status_code == 400, (case, response.content)
            assert response.json()["field"] == field and words in response.json()["detail"], response.json()
        # The form offers neither the disabled LoRA nor the stacked one; a LoRA whose files are gone is a field error.
        for version, words in ((disabled, "Select a valid choice"), (stacked, "Select a valid choice"),
                               (gone, "are missing")):
            response = client.post(url, {"base_version": version.pk, "method": "dpo", "export": pairs_export.pk,
                                         "preset": "tiny"})
            assert response.status_code == 400 and words in response.content.decode()
            assert "Start from:" in response.content.decode()
    assert not callbacks and not FineTuneRun.objects.exists()


def test_the_form_and_api_offer_lora_starts_to_ml_engineers_only(
    pairs_export, ml_engineer, annotator, outsider, tiny_base, start, client, django_capture_on_commit_callbacks
):
    url = f"/ml/projects/{pairs_export.project_id}/finetune-runs/new/"
    assert client.login(username=ml_engineer.username, password=PASSWORD)
    page = client.get(url).content.decode()
    assert ">tiny-base<" in page and "tiny-start: continue this LoRA (on tiny-base)" in page
    payload = {"base_version": "tiny-start", "method": "dpo", "export": pairs_export.pk, "hyperparameters": DPO_FAST}
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        posted = client.post(url, {"base_version": start.pk, "method": "dpo", "export": pairs_export.pk,
                                   "preset": "tiny", "hyperparameters": "max_steps = 2"})
        assert posted.status_code == 303
        created = api_client_for(ml_engineer).post("/api/finetune-runs/", payload, format="json")
        assert created.status_code == 201 and created.json()["base_version"] == "tiny-start"
        assert created.json()["lineage"]["continued_from"] == {"id": start.pk, "name": "tiny-start"}
        assert api_client_for(annotator).post("/api/finetune-runs/", payload, format="json").status_code == 403
        refused = api_client_for(outsider).post("/api/finetune-runs/", payload, format="json")  # as if it did not exist
        assert (refused.status_code, refused.json()["field"]) == (400, "export")
        for user, expected in ((annotator, 403), (outsider, 404)):
            browser = Client()
            assert browser.login(username=user.username, password=PASSWORD)
            assert browser.post(url, {"base_version": start.pk, "method": "dpo", "export": pairs_export.pk,
                                      "preset": "tiny"}).status_code == expected
    assert len(callbacks) == 2
    assert [run.lineage["continued_from"]["name"] for run in FineTuneRun.objects.all()] == ["tiny-start"] * 2
