"""Imported (external) images behave like generated ones downstream: rankings export in every format with
their bytes and origin, the trainers' reader takes them, and whatever needs a seed says there is none."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from annotate.workflow import queue
from annotate.workflow.imports import services as import_services
from annotate.workflow.services import Submission, annotation_submit
from core.exceptions import ApplicationError
from generation.models import GeneratedImage
from generation.worker import reproduce_image
from rlhf.datasets import services as export_services
from rlhf.datasets.services import export_request_parse, preference_export_build, preference_export_create
from rlhf.training.data import decode_image, iter_rows
from tests.annotate.factories_workflow import set_workflow

pytestmark = pytest.mark.django_db


def _jpeg(n: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (20 * n, 100, 255 - 20 * n)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def imported(project, admin_user, annotator, settings, tmp_path):
    """Four imported pair tasks (model names from the table), each ranked image 1 over image 0."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PICKWISE_EXPORT_DIR = tmp_path / "exports"
    set_workflow(project, images_per_task=2)
    folder = tmp_path / "set"
    folder.mkdir()
    rows = []
    for t in range(4):
        for j in range(2):
            (folder / f"{t}-{j}.jpg").write_bytes(_jpeg(2 * t + j))
        rows.append(f"k{t},caption {t},{t}-0.jpg,{t}-1.jpg,sdxl,sd15")
    (folder / "pairs.csv").write_text("key,caption,jpg_0,jpg_1,model_0,model_1\n" + "\n".join(rows) + "\n")
    task_import = import_services.task_import_create(project=project, user=admin_user, local=True,
                                                     table_path=str(folder / "pairs.csv"))
    assert import_services.task_import_start(task_import=task_import, inline=True).status == "succeeded"
    while (handout := queue.task_next(project=project, user=annotator)).task is not None:
        ids = [str(ti.image_id) for ti in handout.task.task_images.order_by("position")]
        annotation_submit(project=project, user=annotator, task_id=handout.task.pk, submission=Submission(
            idempotency_key=f"k-{handout.task.pk}", ranking=[[ids[1]], [ids[0]]]))
    return project


def build(project, user, **fields):
    export = preference_export_create(project=project, user=user, request=export_request_parse(fields))
    return preference_export_build(export_id=export.pk)


def test_pickapic_export_of_external_images_says_there_is_no_seed(imported, ml_engineer):
    export = build(imported, ml_engineer, format="pickapic", tie_policy="drop")
    assert export.status == "succeeded", export.error
    table = pq.read_table(export_services.export_directory(export) / "pairs.parquet").to_pylist()
    assert len(table) == 4
    row = table[0]
    assert (row["origin_0"], row["origin_1"], row["seed_0"], row["params_0"], row["model_version_id_0"]) == (
        "external", "external", None, "", None)
    assert (row["model_0"], row["model_1"], row["label_0"], row["task_key"]) == ("sd15", "sdxl", 1.0, "k0")
    assert decode_image(row["jpg_0"]).size == (16, 16)
    card = export_services.export_card(export)
    assert "no seed to regenerate" in card and export.counts["external_images"] == 8
    # The reward trainer's reader takes the rows as they are.
    records = list(iter_rows(export_services.export_directory(export) / "pairs.parquet"))
    assert len(records) == 4 and records[0].models == ["sd15", "sdxl"] and records[0].ranks == [0, 1]


def test_listwise_and_jsonl_exports_carry_origins_and_task_keys(imported, ml_engineer):
    listwise = build(imported, ml_engineer, format="listwise")
    rows = pq.read_table(export_services.export_directory(listwise) / "rankings.parquet").to_pylist()
    assert rows[0]["origins"] == ["external", "external"] and rows[0]["seeds"] == [None, None]
    assert json.loads(rows[0]["task_metadata"]) == {} and rows[0]["task_key"] == "k0"
    jsonl = build(imported, ml_engineer, format="jsonl")
    line = json.loads((export_services.export_directory(jsonl) / "pairs.jsonl").read_text().splitlines()[0])
    assert line["origin_0"] == "external" and line["image_0_path"].startswith("external/")


def test_reproducing_an_external_image_says_it_has_no_seed(imported):
    image = GeneratedImage.objects.filter(project=imported).first()
    with pytest.raises(ApplicationError) as refused:
        reproduce_image(image)
    assert refused.value.message == f"Image {image.pk}: external image: no seed to regenerate."
