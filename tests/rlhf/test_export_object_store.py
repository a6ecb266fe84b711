"""Exports to an S3-compatible bucket (EXPORT_STORAGE_URL), against moto's real S3 server on loopback.

Read back the way a trainer would: ``datasets.load_dataset("parquet", data_files="s3://...")`` through s3fs.
"""

from __future__ import annotations

import io
import subprocess
import sys
import urllib.request
import zipfile

import datasets
import pyarrow.parquet as pq
import pytest

from core.exceptions import ApplicationError
from rlhf.datasets import services as export_services
from rlhf.datasets.services import export_request_parse, preference_export_build, preference_export_create
from rlhf.models import PreferenceExport, RunStatus
from tests.conftest import ROOT
from tests.factories import PASSWORD, api_client_for
from tests.rlhf.conftest import build_export

BUCKET = "pickwise-exports"


@pytest.fixture
def export_bucket(settings, s3_server, tmp_path):
    """EXPORT_STORAGE_URL pointing at a fresh bucket on the loopback S3 server; server-side exports in tmp."""
    settings.PICKWISE_EXPORT_DIR = tmp_path / "exports"
    settings.EXPORT_STORAGE_URL = f"s3://{BUCKET}/team/exports"
    settings.EXPORT_S3_ENDPOINT_URL = s3_server.endpoint
    settings.EXPORT_S3_REGION_NAME = s3_server.region
    settings.EXPORT_S3_ACCESS_KEY_ID = s3_server.key
    settings.EXPORT_S3_SECRET_ACCESS_KEY = s3_server.secret
    client = s3_server.client()
    client.create_bucket(Bucket=BUCKET)
    return client


def keys(client) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_an_export_streams_into_the_bucket_and_datasets_reads_it_back(ranked, ml_engineer, export_bucket, s3_server):
    on_server = build_export(ranked, ml_engineer, format="pickapic", split_seed=0)
    stored = build_export(ranked, ml_engineer, format="pickapic", split_seed=0, destination="object_store")
    assert stored.status == RunStatus.SUCCEEDED, stored.error
    assert stored.storage_url == f"s3://{BUCKET}/team/exports"
    # Same data, same content hash, wherever it is kept; only the published objects remain (no attempt folder).
    assert stored.content_hash == on_server.content_hash
    data = f"team/exports/data/{stored.content_hash}"
    assert keys(export_bucket) == [f"{data}/image_strengths.parquet", f"{data}/pairs.parquet"]
    assert export_services.export_data_url(stored) == f"s3://{BUCKET}/{data}"
    assert export_services.export_files_present(stored)

    read = datasets.load_dataset("parquet", data_files=f"s3://{BUCKET}/{data}/pairs.parquet",
                                 storage_options=s3_server.storage_options(), split="train",
                                 cache_dir=str(export_services.export_root() / "hf-cache"))
    local = pq.read_table(export_services.export_directory(on_server) / "pairs.parquet")
    assert read.num_rows == local.num_rows == stored.pairs > 0
    assert read["jpg_0"] == local.column("jpg_0").to_pylist()  # the image bytes, byte for byte
    assert read["caption"] == local.column("caption").to_pylist()

    # A second export of the same data publishes nothing new.
    again = build_export(ranked, ml_engineer, format="pickapic", split_seed=0, destination="object_store")
    assert again.content_hash == stored.content_hash and len(keys(export_bucket)) == 2


@pytest.mark.parametrize("fmt", ["listwise", "jsonl"])
def test_listwise_and_jsonl_exports_go_to_the_bucket_too(ranked, ml_engineer, export_bucket, s3_server, fmt):
    export = build_export(ranked, ml_engineer, format=fmt, destination="object_store")
    assert export.status == RunStatus.SUCCEEDED, export.error
    name = {"listwise": "rankings.parquet", "jsonl": "pairs.jsonl"}[fmt]
    builder = "json" if fmt == "jsonl" else "parquet"
    read = datasets.load_dataset(builder, data_files=f"{export_services.export_data_url(export)}/{name}",
                                 storage_options=s3_server.storage_options(), split="train",
                                 cache_dir=str(export_services.export_root() / "hf-cache"))
    assert read.num_rows == (export.counts["rankings"] if fmt == "listwise" else export.pairs)


def test_downloading_an_object_store_export_redirects_to_a_signed_link(
    pairs_export, ranked, ml_engineer, annotator, export_bucket, s3_server, client
):
    export = build_export(ranked, ml_engineer, format="pickapic", destination="object_store")
    assert client.login(username=ml_engineer.username, password=PASSWORD)
    response = client.get(f"/ml/exports/{export.pk}/download/")
    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith(f"{s3_server.endpoint}/{BUCKET}/team/exports/archives/") and "Signature" in location
    with urllib.request.urlopen(location, timeout=30) as fetched:  # noqa: S310 - the loopback S3 server
        archive = zipfile.ZipFile(io.BytesIO(fetched.read()))
    prefix = f"pickwise-export-{export.pk}"
    assert sorted(archive.namelist()) == [f"{prefix}/README.md", f"{prefix}/image_strengths.parquet",
                                          f"{prefix}/pairs.parquet"]
    assert pq.read_table(io.BytesIO(archive.read(f"{prefix}/pairs.parquet"))).num_rows == export.pairs
    archives = [k for k in keys(export_bucket) if "/archives/" in k]
    assert len(archives) == 1 and archives[0].endswith(".zip")  # no partial zip left behind
    page = client.get(f"/ml/exports/{export.pk}/").content.decode()
    assert f"s3://{BUCKET}/team/exports/data/{export.content_hash}" in page

    api = api_client_for(ml_engineer)
    body = api.get(f"/api/exports/{export.pk}/").json()
    assert body["data_url"] == f"s3://{BUCKET}/team/exports/data/{export.content_hash}"
    assert api.get(f"/api/exports/{export.pk}/download/").status_code == 302
    assert api.get(f"/api/exports/{pairs_export.pk}/").json()["data_url"] is None  # kept on the server
    # Who may not see the export gets no link.
    assert api_client_for(annotator).get(f"/api/exports/{export.pk}/download/").status_code == 404
    client.logout()
    assert client.login(username=annotator.username, password=PASSWORD)
    assert client.get(f"/ml/exports/{export.pk}/download/").status_code == 404


def test_a_failed_export_leaves_no_object(ranked, ml_engineer, export_bucket, settings):
    """The pair limit trips after rows were streamed: the attempt's objects are deleted, nothing is published."""
    settings.EXPORT_MAX_PAIRS = 10
    export = preference_export_create(project=ranked, user=ml_engineer, request=export_request_parse(
        {"format": "pickapic", "destination": "object_store"}))
    with pytest.raises(Exception, match="EXPORT_MAX_PAIRS"):
        preference_export_build(export_id=export.pk)
    export.refresh_from_db()
    assert export.status == RunStatus.FAILED and "EXPORT_MAX_PAIRS" in export.error
    assert keys(export_bucket) == []


def test_a_cancelled_export_leaves_no_object(ranked, ml_engineer, export_bucket):
    export = preference_export_create(project=ranked, user=ml_engineer, request=export_request_parse(
        {"format": "pickapic", "destination": "object_store"}))
    export_services.preference_export_cancel(export=export)
    assert preference_export_build(export_id=export.pk).status == RunStatus.CANCELLED
    assert keys(export_bucket) == []


KILLED_UPLOAD = """
import os, signal, sys
import pyarrow.fs as fs
store = fs.S3FileSystem(access_key=sys.argv[2], secret_key=sys.argv[3], region="us-east-1",
                        endpoint_override=sys.argv[1].split("://")[1], scheme="http")
stream = store.open_output_stream(sys.argv[4])
stream.write(os.urandom(6 << 20))  # more than one 5 MiB part: a multipart upload is under way
stream.flush()
print("written", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_attempt_leaves_no_object_and_its_folder_is_cleared(ranked, ml_engineer, export_bucket, s3_server):
    """A worker killed mid-stream (SIGKILL: no destructor runs) leaves an unfinished multipart upload, not an
    object; once the export is done, its attempt folders are cleared."""
    export = preference_export_create(project=ranked, user=ml_engineer, request=export_request_parse(
        {"format": "pickapic", "destination": "object_store"}))
    partial = f"team/exports/building/{export.pk}-attempt-1/pairs.parquet"
    killed = subprocess.run([sys.executable, "-c", KILLED_UPLOAD, s3_server.endpoint, s3_server.key, s3_server.secret,
                             f"{BUCKET}/{partial}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9 and "written" in killed.stdout, killed.stderr
    uploads = export_bucket.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [partial]
    assert keys(export_bucket) == []  # nothing is visible
    # A stale completed object from an earlier attempt is cleared once the export is finished.
    export_bucket.put_object(Bucket=BUCKET, Key=f"team/exports/building/{export.pk}-attempt-1/old.parquet", Body=b"x")
    done = preference_export_build(export_id=export.pk)
    assert done.status == RunStatus.SUCCEEDED
    assert not [k for k in keys(export_bucket) if "/building/" in k]
    assert keys(export_bucket) == [f"team/exports/data/{done.content_hash}/{n}"
                                   for n in ("image_strengths.parquet", "pairs.parquet")]


@pytest.mark.parametrize(("payload", "message"), [
    ({"format": "pickapic", "destination": "bucket"}, "Unknown destination 'bucket'"),
    ({"format": "hf", "destination": "object_store"}, "Format 'hf' is written on the server"),
])
def test_bad_destinations_get_a_400_naming_the_field(project, ml_engineer, export_bucket, payload, message):
    response = api_client_for(ml_engineer).post("/api/exports/", {"project": project.pk, **payload}, format="json")
    assert response.status_code == 400
    assert response.json()["field"] == "destination", response.json()
    assert not PreferenceExport.objects.exists()
    with pytest.raises(ApplicationError, match=message) as caught:
        export_request_parse(payload)
    assert caught.value.field == "destination"


def test_object_store_without_a_configured_store_is_a_field_error(project, ml_engineer, settings):
    settings.EXPORT_STORAGE_URL = ""
    response = api_client_for(ml_engineer).post(
        "/api/exports/", {"project": project.pk, "format": "pickapic", "destination": "object_store"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"detail": "No object store is configured for exports (EXPORT_STORAGE_URL is empty).",
                               "field": "destination"}
    assert not PreferenceExport.objects.exists()


def test_a_missing_bucket_fails_the_export_naming_the_setting(ranked, ml_engineer, export_bucket, settings):
    settings.EXPORT_STORAGE_URL = "s3://no-such-bucket/exports"
    export = preference_export_create(project=ranked, user=ml_engineer, request=export_request_parse(
        {"format": "pickapic", "destination": "object_store"}))
    with pytest.raises(Exception, match="no such bucket"):
        preference_export_build(export_id=export.pk)
    export.refresh_from_db()
    assert export.status == RunStatus.FAILED
    assert export.error == "EXPORT_STORAGE_URL s3://no-such-bucket/exports: no such bucket."
    assert keys(export_bucket) == []


def test_training_refuses_an_object_store_export(ranked, ml_engineer, export_bucket):
    from rlhf.runs.data import check_export

    export = build_export(ranked, ml_engineer, format="pickapic", destination="object_store")
    with pytest.raises(ApplicationError, match="export again with destination server") as caught:
        check_export(export, formats=("pickapic",))
    assert caught.value.field == "export"
