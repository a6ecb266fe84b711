"""Exports of image-editing rankings: every format carries the edit kind, the source image and the mask (bytes
where the export holds image bytes, storage paths always), read back by the formats' own readers."""

from __future__ import annotations

import io
import json

import datasets
import pyarrow.parquet as pq
import pytest
from django.core.files.storage import default_storage
from PIL import Image

from annotate.models import AnnotationTask
from generation import services as generation_services
from generation.editing import EditRequest
from generation.models import GeneratedImage
from tests.rlhf.test_exports import build, data_dir, ranked_project  # noqa: F401 - the fixture


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def stored(key: str) -> bytes:
    with default_storage.open(key, "rb") as handle:
        return handle.read()


@pytest.fixture
def edited(ranked_project):  # noqa: F811 - the fixture above
    """Task 0's candidates are inpaintings of one source, task 1's img2img edits of another; task 2 stays
    text to image. Returns {image id: its edit provenance} (the images' rows as the worker writes them)."""
    version = GeneratedImage.objects.exclude(model_version=None).first().model_version
    source = Image.new("RGB", (64, 64), (128, 128, 128))
    source.paste((220, 30, 30), (16, 16, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (12, 12, 44, 44))
    edits = [
        EditRequest("inpaint", _png(source), mask=_png(mask), strength=0.9),
        EditRequest("img2img", _png(source.rotate(90)), strength=0.6),
    ]
    by_image = {}
    tasks = list(AnnotationTask.objects.filter(project=ranked_project).order_by("pk"))
    for task, edit in zip(tasks, edits, strict=False):
        prepared = generation_services.edit_validate(edit=edit, model_version=version)
        generation_services.edit_files_store(prepared)
        ids = [ti.image_id for ti in task.task_images.all()]
        GeneratedImage.objects.filter(pk__in=ids).update(edit=prepared.provenance())
        by_image.update({str(pk): prepared.provenance() for pk in ids})
    return by_image


def test_pickapic_and_jsonl_carry_kind_source_and_mask(ranked_project, ml_engineer, edited):  # noqa: F811
    export = build(ranked_project, ml_engineer, format="pickapic")
    rows = pq.read_table(data_dir(export) / "pairs.parquet").to_pylist()
    kinds = {"inpaint": 0, "img2img": 0, "": 0}
    for row in rows:
        for side in ("0", "1"):
            edit = edited.get(row[f"image_{side}_uid"])
            kinds[row[f"edit_kind_{side}"]] += 1
            if edit is None:
                assert row[f"edit_kind_{side}"] == "" and row[f"edit_{side}"] == ""
                assert row[f"source_{side}"] is None and row[f"mask_{side}"] is None
                assert row[f"source_path_{side}"] == row[f"mask_path_{side}"] == ""
                continue
            assert row[f"edit_kind_{side}"] == edit["kind"] and json.loads(row[f"edit_{side}"]) == edit
            assert row[f"source_path_{side}"] == edit["source_key"]
            assert row[f"source_{side}"] == stored(edit["source_key"])
            if edit["kind"] == "inpaint":
                assert row[f"mask_path_{side}"] == edit["mask_key"]
                assert row[f"mask_{side}"] == stored(edit["mask_key"])
            else:
                assert row[f"mask_{side}"] is None and row[f"mask_path_{side}"] == ""
    assert kinds["inpaint"] > 0 and kinds["img2img"] > 0 and kinds[""] > 0
    # Without image bytes: the paths only.
    lean = build(ranked_project, ml_engineer, format="pickapic", include_images=False)
    for row in pq.read_table(data_dir(lean) / "pairs.parquet").to_pylist():
        assert row["source_0"] is None and row["mask_0"] is None
        if row["image_0_uid"] in edited:
            assert row["source_path_0"] == edited[row["image_0_uid"]]["source_key"]
    # datasets reads the Parquet file as is (Diffusion-DPO's loader).
    loaded = datasets.load_dataset("parquet", data_files=str(data_dir(export) / "pairs.parquet"), split="train")
    assert {"edit_kind_0", "source_0", "mask_0", "source_path_0"} <= set(loaded.column_names)
    jsonl = build(ranked_project, ml_engineer, format="jsonl")
    lines = datasets.load_dataset("json", data_files=str(data_dir(jsonl) / "pairs.jsonl"), split="train")
    assert "source_0" not in lines.column_names and "mask_0" not in lines.column_names
    assert {row["edit_kind_0"] for row in lines} == {"inpaint", "img2img", ""}
    assert all(row["source_path_0"] == edited.get(row["image_0_uid"], {}).get("source_key", "") for row in lines)


def test_listwise_lists_each_candidates_edit(ranked_project, ml_engineer, edited):  # noqa: F811
    export = build(ranked_project, ml_engineer, format="listwise")
    for row in pq.read_table(data_dir(export) / "rankings.parquet").to_pylist():
        for uid, kind, edit, source, mask, source_path, mask_path in zip(
                row["image_uids"], row["edit_kinds"], row["edits"], row["sources"], row["masks"],
                row["source_paths"], row["mask_paths"], strict=True):
            expected = edited.get(uid)
            if expected is None:
                assert (kind, edit, source, mask, source_path, mask_path) == ("", "", None, None, "", "")
            else:
                assert kind == expected["kind"] and json.loads(edit) == expected
                assert source == stored(expected["source_key"]) and source_path == expected["source_key"]
                assert mask == (stored(expected["mask_key"]) if expected["mask_key"] else None)


def test_hf_and_trl_datasets_carry_sources_and_masks_as_images(ranked_project, ml_engineer, edited):  # noqa: F811
    from trl.data_utils import unpair_preference_dataset

    export = build(ranked_project, ml_engineer, format="hf", tie_policy="soft")
    dataset = datasets.load_from_disk(str(data_dir(export) / "dataset"))
    assert isinstance(dataset.features["source_0"], datasets.Image)
    raw = dataset.cast_column("source_0", datasets.Image(decode=False)).cast_column(
        "mask_0", datasets.Image(decode=False))
    for row in raw:
        expected = edited.get(row["image_0_uid"])
        if expected is None:
            assert row["edit_kind_0"] == "" and row["source_0"] is None and row["mask_0"] is None
            continue
        assert row["edit_kind_0"] == expected["kind"] and json.loads(row["edit_0"]) == expected
        assert row["source_0"]["bytes"] == stored(expected["source_key"])
        if expected["mask_key"]:
            assert row["mask_0"]["bytes"] == stored(expected["mask_key"])
        else:
            assert row["mask_0"] is None
    assert dataset.filter(lambda r: r["edit_kind_0"] == "inpaint")[0]["mask_0"].size == (64, 64)

    trl_export = build(ranked_project, ml_engineer, format="trl", tie_policy="soft")
    trl = datasets.load_from_disk(str(data_dir(trl_export) / "dataset"))
    assert {"prompt", "chosen", "rejected", "edit_kind", "source", "mask"} <= set(trl.column_names)
    assert sorted(set(trl["edit_kind"])) == ["", "img2img", "inpaint"]
    sources = trl.cast_column("source", datasets.Image(decode=False))
    expected_sources = {stored(e["source_key"]) for e in edited.values()}
    for row in sources:
        assert (row["source"] is None) == (row["edit_kind"] == "")
        if row["source"] is not None:
            assert row["source"]["bytes"] in expected_sources
    assert unpair_preference_dataset(trl).num_rows == 2 * trl.num_rows
