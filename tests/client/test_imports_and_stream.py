"""The client against the live server: task imports (a folder of images, a dataset folder, a dry run), the
annotator loop through submit-returns-next (by id and by task key), and the streamed export."""

from __future__ import annotations

import io
import json

import pytest
from pickwise_client import ConfigurationError
from PIL import Image

from annotate.models import AnnotationTask
from tests.annotate.factories_workflow import set_workflow

pytestmark = pytest.mark.django_db(transaction=True)


def _png(n: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (30 * n % 256, 60, 200 - 10 * n)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return tmp_path


def test_import_then_annotate_in_one_round_trip_then_stream_every_annotation(
    admin_api, annotator_api, ml_api, project, media, tmp_path
):
    set_workflow(project, images_per_task=2)
    folder = tmp_path / "images"
    folder.mkdir()
    for n in range(6):
        (folder / f"{n}.png").write_bytes(_png(n))
    table = tmp_path / "tasks.csv"
    table.write_text("key,prompt,image_0,image_1,batch\n"
                     "a/1,a cat,0.png,1.png,7\nb/2,a dog,2.png,3.png,7\nc/3,a cat,4.png,missing.png,8\n")
    checked = admin_api.imports.create(project.pk, table, images=folder, dry_run=True, progress=False)
    assert checked["status"] == "failed"
    assert checked["report"]["errors"] == [{"line": 4, "column": "image_1", "message": (
        "missing image: no file 'missing.png' among the uploaded images")}]
    table.write_text(table.read_text().replace("missing.png", "5.png"))
    done = admin_api.imports.create(project.pk, table, images=folder, name="three tasks", progress=False)
    assert done["status"] == "succeeded" and done["report"]["tasks"] == 3
    assert [i["name"] for i in admin_api.imports.list(project.pk)] == ["three tasks", "tasks.csv"]
    with pytest.raises(ConfigurationError):
        admin_api.imports.create(project.pk)

    handout = annotator_api.tasks.next(project.pk)
    submitted = []
    while handout is not None:
        assert handout["task_metadata"]["batch"] in ("7", "8")  # CSV cells are text
        ranking = [[image["id"]] for image in reversed(handout["images"])]
        key = handout["task_key"]
        submit = annotator_api.tasks.submit_by_key if key != "b/2" else None
        result = (submit(project.pk, key, ranking) if submit is not None
                  else annotator_api.tasks.submit(project.pk, handout["task_id"], ranking))
        submitted.append(key)
        handout = result
    assert submitted == ["a/1", "b/2", "c/3"]

    records = list(ml_api.annotations.stream(project.pk))
    assert [r["task_key"] for r in records] == ["a/1", "b/2", "c/3"]
    assert records[0]["ranking"] == [[records[0]["images"][1]["id"]], [records[0]["images"][0]["id"]]]
    assert {image["origin"] for r in records for image in r["images"]} == {"external"}
    assert list(ml_api.annotations.stream(project.pk, status=["rejected"])) == []
    frame = ml_api.annotations.to_pandas(project.pk, status="submitted")
    assert list(frame["prompt"]) == ["a cat", "a dog", "a cat"]
    target = ml_api.annotations.export(project.pk, tmp_path / "tasks.json", format="json")
    assert [len(task["annotations"]) for task in json.loads(target.read_text())] == [1, 1, 1]
    assert AnnotationTask.objects.filter(project=project).count() == 3


def test_a_dataset_folder_is_zipped_and_imported(admin_api, project, media, tmp_path):
    import datasets

    set_workflow(project, images_per_task=2)
    features = datasets.Features({"caption": datasets.Value("string"), "jpg_0": datasets.Image(),
                                  "jpg_1": datasets.Image()})
    folder = tmp_path / "hf"
    datasets.Dataset.from_dict({"caption": ["one", "two"],
                                "jpg_0": [{"bytes": _png(1), "path": None}, {"bytes": _png(3), "path": None}],
                                "jpg_1": [{"bytes": _png(2), "path": None}, {"bytes": _png(4), "path": None}]},
                               features=features).save_to_disk(str(folder))
    done = admin_api.imports.create(project.pk, folder, progress=False)
    assert done["status"] == "succeeded", done["report"]
    assert done["source_format"] == "hf" and done["report"]["tasks"] == 2
