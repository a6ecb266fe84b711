"""Task imports with candidate images: each format and image source against real storage (local disk, an
S3 server on loopback) and a real HTTP server on loopback; bad rows; nothing half-written."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from PIL import Image

from annotate.models import AnnotationTask, Prompt, TaskImport, TaskImportImage
from annotate.workflow.imports import services as import_services
from generation.models import GeneratedImage, ImageOrigin
from projects.roles import Role
from tests.annotate.factories_workflow import set_workflow
from tests.factories import UserFactory, api_client_for

pytestmark = pytest.mark.django_db


def picture(n: int, fmt: str = "PNG") -> bytes:
    """A small image whose pixels (and so bytes) differ for every ``n``."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (n % 251, (n * 7) % 251, (n * 13) % 251)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.IMPORT_ROOT = (tmp_path / "import-root").resolve()
    settings.IMPORT_ROOT.mkdir()
    return tmp_path


@pytest.fixture
def pairs(project, media):
    """The project shows two images per task."""
    set_workflow(project, images_per_task=2)
    return project


def run(project, user=None, **kwargs) -> TaskImport:
    task_import = import_services.task_import_create(project=project, user=user, **kwargs)
    return import_services.task_import_start(task_import=task_import, inline=True)


def external_files(media: Path) -> list[str]:
    root = media / "media" / "external"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data)


def test_csv_with_uploaded_images_creates_tasks_with_external_images(pairs, admin_user, annotator, media):
    table = (b"key,prompt,image_0,image_1,style\n"
             b"t1,a red cat,a.png,b.png,photo\n"
             b"t2,a red cat,b.png,c.jpg,\n")
    result = run(pairs, admin_user, table=upload("tasks.csv", table),
                 images=[upload("a.png", picture(1)), upload("b.png", picture(2)), upload("c.jpg", picture(3, "JPEG"))])
    assert result.status == "succeeded", result.report
    assert result.report["tasks"] == 2 and result.report["new_images"] == 3
    first, second = AnnotationTask.objects.filter(project=pairs).order_by("position")
    assert (first.external_key, first.metadata, first.prompt.text) == ("t1", {"style": "photo"}, "a red cat")
    assert second.prompt.text == "a red cat" and second.prompt_id != first.prompt_id  # repeated prompts kept
    a, b = (ti.image for ti in first.task_images.order_by("position"))
    b_again, c = (ti.image for ti in second.task_images.order_by("position"))
    assert b_again.pk == b.pk  # one row per (project, sha256)
    assert (a.origin, a.external_source, a.external_name, a.job_id, a.seed, a.model_version_id) == (
        ImageOrigin.EXTERNAL, "upload", "a.png", None, None, None)
    assert a.sha256 == hashlib.sha256(picture(1)).hexdigest() and a.storage_key.endswith(f"{a.sha256}.png")
    assert c.content_type == "image/jpeg" and default_storage.open(c.storage_key).read() == picture(3, "JPEG")
    assert len(external_files(media)) == 3
    assert not default_storage.exists(f"imports/{result.pk}/table/tasks.csv")  # uploads are removed
    # An annotator is handed the task with its key and metadata and sees the image.
    client = api_client_for(annotator)
    handout = client.post(f"/api/projects/{pairs.pk}/tasks/next/").json()
    assert handout["task_key"] == "t1" and handout["task_metadata"] == {"style": "photo"}
    served = client.get(handout["images"][0]["url"])
    assert served.status_code == 200 and served["Content-Type"] == "image/png"
    assert b"".join(served.streaming_content) == picture(1)
    outsider = api_client_for(UserFactory(username="not-a-member", role=Role.ANNOTATOR))
    assert outsider.get(handout["images"][0]["url"]).status_code == 404  # never revealed outside its project


def test_identical_bytes_in_two_projects_are_one_file(pairs, other_project, admin_user, media):
    set_workflow(other_project, images_per_task=2)
    table = b"prompt,image_0,image_1\nx,a.png,b.png\n"
    for project in (pairs, other_project):
        result = run(project, admin_user, table=upload("t.csv", table),
                     images=[upload("a.png", picture(1)), upload("b.png", picture(2))])
        assert result.status == "succeeded", result.report
    assert GeneratedImage.objects.filter(origin=ImageOrigin.EXTERNAL).count() == 4
    assert len(external_files(media)) == 2


def test_jsonl_with_a_zip_and_files_under_the_import_root(pairs, admin_user, media, settings):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("pics/one.png", picture(11))
        bundle.writestr("pics/two.png", picture(12))
    (settings.IMPORT_ROOT / "shared").mkdir()
    (settings.IMPORT_ROOT / "shared" / "three.webp").write_bytes(picture(13, "WEBP"))
    lines = [{"prompt": "p1", "images": ["pics/one.png", "two.png"], "metadata": {"batch": 7}},
             {"prompt": "p2", "images": ["one.png", "shared/three.webp"], "seed_hint": 3}]
    result = run(pairs, admin_user, table=upload("t.jsonl", "\n".join(json.dumps(x) for x in lines).encode()),
                 images_zip=upload("images.zip", archive.getvalue()))
    assert result.status == "succeeded", result.report
    tasks = list(AnnotationTask.objects.filter(project=pairs).order_by("position"))
    assert [t.metadata for t in tasks] == [{"batch": 7}, {"seed_hint": 3}]
    sources = [ti.image.external_source for t in tasks for ti in t.task_images.order_by("position")]
    assert sources == ["zip", "zip", "zip", "path"]


def test_a_table_named_by_path_outside_the_import_root_is_refused(pairs, admin_user, media):
    with pytest.raises(import_services.ApplicationError) as refused:
        run(pairs, admin_user, table_path="../elsewhere.csv")
    assert refused.value.field == "path" and "outside the import root" in refused.value.message


def pickapic_table(n: int, *, start: int = 0) -> pa.Table:
    return pa.table({
        "caption": [f"caption {i % 3}" for i in range(start, start + n)],
        "jpg_0": [picture(2 * i, "JPEG") for i in range(start, start + n)],
        "jpg_1": [picture(2 * i + 1, "JPEG") for i in range(start, start + n)],
        "label_0": [1.0] * n, "label_1": [0.0] * n,
        "model_0": ["sdxl"] * n, "model_1": ["sd15"] * n,
        "ranking_id": list(range(1000 + start, 1000 + start + n)),
        "user_id": [5] * n,
    })


def test_pickapic_parquet_with_image_bytes(pairs, admin_user, media, tmp_path):
    path = tmp_path / "pickapic.parquet"
    pq.write_table(pickapic_table(4), path)
    result = run(pairs, admin_user, table=upload("train-00000.parquet", path.read_bytes()))
    assert result.status == "succeeded", result.report
    task = AnnotationTask.objects.filter(project=pairs).order_by("position").first()
    assert task.external_key == "1000" and task.prompt.text == "caption 0"
    assert task.metadata == {"label_0": 1.0, "label_1": 0.0, "user_id": 5}
    left, right = (ti.image for ti in task.task_images.order_by("position"))
    assert (left.external_source, left.external_metadata) == ("inline", {"column": "jpg_0", "model": "sdxl"})
    assert right.model_label == "sd15"


def test_hugging_face_dataset_directory_with_image_features(pairs, admin_user, media, settings):
    import datasets

    features = datasets.Features({"prompt": datasets.Value("string"), "image_0": datasets.Image(),
                                  "image_1": datasets.Image(), "key": datasets.Value("string")})
    data = datasets.Dataset.from_dict({
        "prompt": ["hf one", "hf two"], "key": ["k1", "k2"],
        "image_0": [{"bytes": picture(21), "path": None}, {"bytes": picture(23), "path": None}],
        "image_1": [{"bytes": picture(22), "path": None}, {"bytes": picture(24), "path": None}],
    }, features=features)
    data.save_to_disk(str(settings.IMPORT_ROOT / "hf-set"))
    result = run(pairs, admin_user, table_path="hf-set")
    assert result.status == "succeeded", result.report
    assert list(AnnotationTask.objects.filter(project=pairs).values_list("external_key", flat=True)) == ["k1", "k2"]


class _Images(BaseHTTPRequestHandler):
    routes: dict[str, tuple[str, bytes]] = {}
    delay = 0.0

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        time.sleep(self.delay)
        content_type, body = self.routes.get(self.path, ("text/plain", b""))
        self.send_response(200 if self.path in self.routes else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_urls_are_fetched_with_the_outbound_guard(pairs, admin_user, media, image_server, settings):
    _Images.routes = {"/a.png": ("image/png", picture(31)), "/b.png": ("image/png", picture(32)),
                      "/page": ("text/html", b"<html></html>")}
    table = (f"prompt,image_0,image_1\nurl task,{image_server}/a.png,{image_server}/b.png\n"
             f"bad urls,{image_server}/missing.png,{image_server}/page\n").encode()
    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = False
    refused = run(pairs, admin_user, table=upload("u.csv", table), dry_run=True)
    assert refused.status == "failed"
    assert "private, loopback or link-local" in refused.report["errors"][0]["message"]
    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = True
    checked = run(pairs, admin_user, table=upload("u.csv", table), dry_run=True)
    assert [(e["line"], e["column"]) for e in checked.report["errors"]] == [(3, "image_0"), (3, "image_1")]
    assert "answered 404" in checked.report["errors"][0]["message"]
    assert "text/html, not image" in checked.report["errors"][1]["message"]
    good = run(pairs, admin_user, table=upload("u.csv", table.split(b"\nbad")[0] + b"\n"))
    assert good.status == "succeeded", good.report
    image = GeneratedImage.objects.get(project=pairs, external_name=f"{image_server}/a.png")
    assert image.external_source == "url"


def test_dry_run_reports_every_bad_row_with_its_line_and_column(pairs, admin_user, media):
    AnnotationTask.objects.create(project=pairs, prompt=Prompt.objects.create(project=pairs, text="old"),
                                  position=1, random_key=1, external_key="taken")
    table = (b"key,prompt,image_0,image_1\n"
             b"k1,fine,a.png,b.png\n"           # 2: fine
             b"k2,missing,a.png,nowhere.png\n"  # 3: missing image
             b"k3,broken,a.png,broken.png\n"    # 4: unreadable image
             b"k4,short,a.png,\n"               # 5: empty cell -> wrong count
             b"k1,again,a.png,b.png\n"          # 6: duplicate key in the file
             b"taken,old key,a.png,b.png\n"     # 7: key the project has
             b"k7,,a.png,b.png\n")     # 8: empty prompt
    result = run(pairs, admin_user, table=upload("t.csv", table), dry_run=True,
                 images=[upload("a.png", picture(1)), upload("b.png", picture(2)),
                         upload("broken.png", b"\x89PNG\r\n\x1a\nnot really")])
    assert result.status == "failed"
    errors = [(e["line"], e["column"]) for e in result.report["errors"]]
    assert errors == [(3, "image_1"), (4, "image_1"), (5, "image_1"), (6, "key"), (7, "key"), (8, "prompt")]
    messages = [e["message"] for e in result.report["errors"]]
    assert messages[0].startswith("missing image: no file 'nowhere.png'")
    assert messages[1].startswith("unreadable image")
    assert messages[2] == "missing image: the cell is empty"
    assert messages[3] == "duplicate key 'k1': line 2 has it too"
    assert "the project already has it" in messages[4] and messages[5] == "the prompt is empty"
    assert external_files(media) == [] and not GeneratedImage.objects.exists()
    assert AnnotationTask.objects.filter(project=pairs).count() == 1


def test_a_row_with_the_wrong_number_of_images_for_the_template(pairs, admin_user, media):
    table = b"prompt,images\nthree,a.png;b.png;c.png\n"
    result = run(pairs, admin_user, table=upload("t.csv", table), images=[
        upload("a.png", picture(1)), upload("b.png", picture(2)), upload("c.png", picture(3))])
    assert result.status == "failed"
    assert result.report["errors"] == [{"line": 2, "column": "images", "message": (
        "wrong count for the template: the row has 3 images; the project has 2 images per task")}]


def test_a_failed_import_deletes_the_files_it_stored_and_keeps_shared_ones(pairs, admin_user, media):
    shared = run(pairs, admin_user, table=upload("s.csv", b"prompt,image_0,image_1\ns,a.png,b.png\n"),
                 images=[upload("a.png", picture(0)), upload("b.png", picture(1))])
    assert shared.status == "succeeded"
    rows = [f"p{i},img{2 * i}.png,img{2 * i + 1}.png" for i in range(40)] + ["last,img0.png,nowhere.png"]
    files = [upload(f"img{i}.png", picture(i)) for i in range(80)]
    result = run(pairs, admin_user, table=upload("t.csv", ("prompt,image_0,image_1\n" + "\n".join(rows)).encode()),
                 images=files)
    assert result.status == "failed" and result.report["errors"][0]["line"] == 42
    assert "Nothing was imported" in result.error
    # The first chunk's images were stored before the bad row was read; only the two shared ones stay.
    assert len(external_files(media)) == 2
    assert AnnotationTask.objects.filter(project=pairs).count() == 1
    assert not TaskImportImage.objects.exists()


def test_deduplicate_skips_repeated_prompts(pairs, admin_user, media):
    table = b"prompt,image_0,image_1\nsame,a.png,b.png\nsame,b.png,a.png\nother,a.png,b.png\n"
    result = run(pairs, admin_user, table=upload("t.csv", table), options=import_services.ImportOptions(
        deduplicate=True), images=[upload("a.png", picture(1)), upload("b.png", picture(2))])
    assert result.status == "succeeded", result.report
    assert result.report["duplicates"] == [{"line": 3, "text": "same", "first_line": 2}]
    assert AnnotationTask.objects.filter(project=pairs).count() == 2


def test_cancelling_a_queued_import_removes_its_uploads(pairs, admin_user, media,
                                                      django_capture_on_commit_callbacks):
    task_import = import_services.task_import_create(
        project=pairs, user=admin_user, table=upload("t.csv", b"prompt,image_0,image_1\nx,a.png,b.png\n"))
    key = task_import.inputs["table_key"]
    assert default_storage.exists(key)
    with django_capture_on_commit_callbacks(execute=True):
        import_services.task_import_cancel(task_import=task_import)
    task_import.refresh_from_db()
    assert task_import.status == "cancelled" and not default_storage.exists(key)
    assert import_services.task_import_run(import_id=task_import.pk).status == "cancelled"  # a late worker: no-op


def test_management_command_imports_a_folder_with_a_progress_bar(pairs, admin_user, media, tmp_path, capsys):
    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.png").write_bytes(picture(50 + i))
    (folder / "tasks.csv").write_text("prompt,image_0,image_1\nc1,0.png,1.png\nc2,2.png,3.png\n")
    call_command("import_tasks", str(folder / "tasks.csv"), project=pairs.pk, user=admin_user.username, dry_run=True)
    assert "Dry run: 2 rows and 4 images are fine" in capsys.readouterr().out
    assert not AnnotationTask.objects.filter(project=pairs).exists()
    call_command("import_tasks", str(folder / "tasks.csv"), project=pairs.pk, user=admin_user.username)
    captured = capsys.readouterr()
    assert "Imported 2 tasks (4 new images)" in captured.out and "100%" in captured.err
    assert AnnotationTask.objects.filter(project=pairs).count() == 2
    done = TaskImport.objects.get(project=pairs, dry_run=False)
    assert [entry["phase"] for entry in done.progress_history] == [
        "reading_data", "checking_images", "creating_tasks", "done"]
    assert (done.status, done.attempts, done.step, done.total_steps, done.lease_expires_at) == (
        "succeeded", 1, 2, 2, None)


# --- the API --------------------------------------------------------------------------------------


def test_api_import_runs_in_the_request_and_lists_errors(pairs, admin_user, annotator, media):
    client = api_client_for(admin_user)
    url = f"/api/projects/{pairs.pk}/imports/"
    bad = client.post(url, {"file": upload("t.csv", b"prompt,image_0,image_1\nx,a.png,zzz.png\n"),
                            "images": [upload("a.png", picture(1))]}, format="multipart")
    assert bad.status_code == 201 and bad.json()["status"] == "failed"
    assert bad.json()["report"]["errors"] == [{"line": 2, "column": "image_1",
                                               "message": "missing image: no file 'zzz.png' among the uploaded "
                                                          "images or under the import root"}]
    good = client.post(url, {"file": upload("t.csv", b"prompt,image_0,image_1\nx,a.png,b.png\n"), "name": "set A",
                             "images": [upload("a.png", picture(1)), upload("b.png", picture(2))]}, format="multipart")
    assert good.status_code == 201 and good.json()["status"] == "succeeded", good.json()
    assert good.json()["report"]["tasks"] == 1
    assert client.get(url + f"{good.json()['id']}/").json()["prompt_set"] == good.json()["prompt_set"]
    assert [i["name"] for i in client.get(url).json()["results"]] == ["set A", "t.csv"]
    neither = client.post(url, {"name": "x"}, format="multipart")
    assert neither.status_code == 400 and "file" in neither.json()
    assert api_client_for(annotator).post(url, {"path": "x.csv"}, format="multipart").status_code == 403


def test_api_import_of_another_project_is_not_found(other_project, admin_user, media):
    response = api_client_for(admin_user).get(f"/api/projects/{other_project.pk}/imports/")
    assert response.status_code == 404


# --- S3: keys in the configured bucket, on a real S3 server on loopback (moto's) ---------------------


@pytest.fixture
def s3_bucket(settings, media, s3_server):
    settings.AWS_STORAGE_BUCKET_NAME = "pickwise-media"
    settings.AWS_S3_ENDPOINT_URL = s3_server.endpoint
    settings.AWS_S3_REGION_NAME = s3_server.region
    settings.AWS_ACCESS_KEY_ID = s3_server.key
    settings.AWS_SECRET_ACCESS_KEY = s3_server.secret
    settings.AWS_QUERYSTRING_AUTH = True
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "storages.backends.s3.S3Storage",
                                                          "OPTIONS": {"file_overwrite": True}}}
    s3 = s3_server.client()
    s3.create_bucket(Bucket="pickwise-media")
    return s3


def test_s3_keys_in_the_configured_bucket(pairs, admin_user, s3_bucket):
    s3_bucket.put_object(Bucket="pickwise-media", Key="incoming/a.png", Body=picture(41))
    s3_bucket.put_object(Bucket="pickwise-media", Key="incoming/b.png", Body=picture(42))
    table = (b"prompt,image_0,image_1\n"
             b"from s3,s3://pickwise-media/incoming/a.png,s3://pickwise-media/incoming/b.png\n"
             b"elsewhere,s3://other-bucket/a.png,s3://pickwise-media/incoming/none.png\n")
    checked = run(pairs, admin_user, table=upload("s3.csv", table), dry_run=True)
    assert [(e["line"], e["message"]) for e in checked.report["errors"]] == [
        (3, "s3://other-bucket/a.png: only keys in the configured bucket 'pickwise-media' can be imported"),
        (3, "missing image: no key 'incoming/none.png' in bucket 'pickwise-media'")]
    result = run(pairs, admin_user, table=upload("s3.csv", table.split(b"\nelsewhere")[0] + b"\n"))
    assert result.status == "succeeded", result.report
    image = GeneratedImage.objects.get(project=pairs, external_name="s3://pickwise-media/incoming/a.png")
    stored = s3_bucket.get_object(Bucket="pickwise-media", Key=image.storage_key)["Body"].read()
    assert image.external_source == "s3" and stored == picture(41)
    keys = [o["Key"] for o in s3_bucket.list_objects_v2(Bucket="pickwise-media")["Contents"]]
    assert not any(key.startswith("imports/") for key in keys)  # the uploaded table was removed


# --- an import killed midway ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("max_attempts", [1, 2], ids=["given-up", "retried"])
def test_an_import_killed_midway_is_reaped(pairs, admin_user, media, image_server, settings, tmp_path, monkeypatch,
                                          max_attempts):
    """``manage.py import_tasks`` in its own process, killed (SIGKILL) after it stored its first images: no
    task, prompt or image row exists; once its lease lapses the reaper (``annotate.task_imports``, as beat
    runs it) takes it exactly once. With attempts left it is re-queued, keeping its staged files, and the
    retried attempt imports every row; with none left it is failed and no file it stored is left."""
    import os
    import signal
    import subprocess
    import sys

    from django.db import connection
    from django.utils import timezone

    from annotate import tasks as annotate_tasks
    from core.tasks import run_reapers
    from tests.conftest import ROOT, _worker_env
    from tests.workers import wait_for

    _Images.routes = {f"/{i}.png": ("image/png", picture(100 + i)) for i in range(120)}
    _Images.delay = 0.05
    rows = [f"slow {i},{image_server}/{2 * i}.png,{image_server}/{2 * i + 1}.png" for i in range(60)]
    table = tmp_path / "slow.csv"
    table.write_text("prompt,image_0,image_1\n" + "\n".join(rows) + "\n")
    env = {**_worker_env(connection.settings_dict["NAME"]), "MEDIA_ROOT": str(settings.MEDIA_ROOT),
           "OUTBOUND_ALLOW_PRIVATE_ADDRESSES": "true", "JOB_MAX_ATTEMPTS": str(max_attempts),
           "JOB_LEASE_SECONDS": "3", "JOB_HEARTBEAT_SECONDS": "1"}
    proc = subprocess.Popen([sys.executable, "manage.py", "import_tasks", str(table), "--project", str(pairs.pk),
                             "--user", admin_user.username], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not TaskImportImage.objects.exists():
            assert proc.poll() is None, "the import ended before it could be killed"
            assert time.monotonic() < deadline, "the import stored nothing within 60 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        _Images.delay = 0.0
        if proc.poll() is None:
            proc.kill()
    stored = external_files(media)
    assert stored  # files were written before the kill...
    assert not AnnotationTask.objects.filter(project=pairs).exists() and not Prompt.objects.exists()
    assert not GeneratedImage.objects.exists()  # ...but no row: the commit never ran
    task_import = TaskImport.objects.get(project=pairs)
    assert task_import.status == "running" and task_import.attempts == 1
    assert task_import.phase == "checking_images" and task_import.total_steps == 60

    queued: list[tuple[int, ...]] = []  # what the reaper sends to the workers' queue
    monkeypatch.setattr(annotate_tasks.run_task_import, "delay_on_commit", lambda *args: queued.append(args))
    wait_for(lambda: TaskImport.objects.get(pk=task_import.pk).lease_expires_at < timezone.now(), 30,
             "the dead command's lease")
    assert run_reapers()["annotate.task_imports"] == 1
    assert run_reapers()["annotate.task_imports"] == 0  # taken once
    task_import.refresh_from_db()
    if max_attempts == 1:
        assert task_import.status == "failed" and task_import.lease_token is None and queued == []
        assert "stopped 1 time while importing" in task_import.error and "Nothing was imported" in task_import.error
        assert external_files(media) == [] and not TaskImportImage.objects.exists()
        return
    assert task_import.status == "queued" and task_import.lease_token is None and task_import.attempts == 1
    assert queued == [(task_import.pk,)]
    assert set(stored) <= set(external_files(media))  # kept for the retry, which reuses them
    settings.OUTBOUND_ALLOW_PRIVATE_ADDRESSES = True  # as the command's environment had it
    annotate_tasks.run_task_import(*queued[0])  # the retried attempt, as a worker runs it
    task_import.refresh_from_db()
    assert task_import.status == "succeeded", (task_import.error, task_import.report.get("errors"))
    assert task_import.attempts == 2 and task_import.phase == "done" and task_import.report["tasks"] == 60
    assert {entry["attempt"] for entry in task_import.progress_history} == {1, 2}
    assert AnnotationTask.objects.filter(project=pairs).count() == 60 and GeneratedImage.objects.count() == 120
    assert len(external_files(media)) == 120 and not TaskImportImage.objects.exists()


# --- the pages ------------------------------------------------------------------------------------


def test_import_pages_with_and_without_htmx(client, pairs, admin_user, annotator, media):
    client.force_login(admin_user)
    page_url = f"/projects/{pairs.pk}/imports/"
    assert client.get(page_url).status_code == 200
    missing = client.post(page_url, {"name": "nothing"})
    assert missing.status_code == 400 and "Give the table" in missing.content.decode()
    response = client.post(page_url, {"file": upload("t.csv", b"prompt,image_0,image_1\nx,a.png,b.png\n"),
                                      "images": [upload("a.png", picture(1)), upload("b.png", picture(2))],
                                      "import": "1"})
    assert response.status_code == 303
    detail = response["Location"]
    page = client.get(detail).content.decode()
    assert "Imported 1 task with 2 new images" in page and "<html" in page
    fragment = client.get(detail, headers={"HX-Request": "true"})
    assert fragment.status_code == 286  # finished: htmx stops polling
    assert "<html" not in fragment.content.decode() and 'id="import-progress"' in fragment.content.decode()
    checked = client.post(page_url, {"file": upload("t.csv", b"prompt,image_0,image_1\nx,a.png,gone.png\n"),
                                     "images": [upload("a.png", picture(1))], "check": "1"})
    report = client.get(checked["Location"]).content.decode()
    assert "missing image: no file &#x27;gone.png&#x27;" in report and "Nothing was imported" in report
    client.force_login(annotator)
    assert client.get(page_url).status_code == 403
