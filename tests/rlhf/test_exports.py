"""Exports end to end: real rankings through the workflow services, every format read back."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from django.http import Http404

from annotate.builder import services as template_services
from annotate.workflow import queue
from annotate.workflow.services import Submission, annotation_submit
from projects.roles import Role
from rlhf.datasets import services as export_services
from rlhf.datasets.services import export_request_parse, preference_export_build, preference_export_create
from rlhf.models import PreferenceExport, RunStatus
from tests.annotate.factories_workflow import set_workflow, task_with_images
from tests.factories import MembershipFactory, UserFactory, api_client_for

RANKING_SCHEMA = {
    "schema_version": 1,
    "components": [
        {"type": "images", "name": "images", "config": {"source": "task", "count": 4}},
        {
            "type": "ranking",
            "name": "ranking",
            "config": {"images": "images", "mode": "full", "allow_ties": True, "allow_partial": False},
        },
        {"type": "rating", "name": "quality", "config": {"images": "images", "scale_min": 1, "scale_max": 5}},
        {"type": "flags", "name": "problems", "config": {"images": "images", "options": ["artifact", "unsafe"]}},
        {"type": "text", "name": "rationale", "config": {"label": "Why", "required": False}},
    ],
}


@pytest.fixture
def ranked_project(project, admin_user, settings, tmp_path):
    """Three tasks of four stored images, each ranked by three annotators.

    Task 0: all three agree (a > b > c > d). Task 1: the third annotator reverses the order.
    Task 2: everyone ties b and c (a > b = c > d).
    """
    settings.PICKWISE_EXPORT_DIR = tmp_path / "exports"
    template = template_services.template_create(
        project=project, name="Rank", created_by=admin_user, schema=RANKING_SCHEMA, strict=True
    )
    version = template_services.template_version_publish(template=template, created_by=admin_user)
    set_workflow(project, template_version=version, overlap=3)
    tasks = [task_with_images(project, prompt=f"a shape number {i}", store=True) for i in range(3)]
    annotators = [UserFactory(username=f"rater{i}", role=Role.ANNOTATOR) for i in range(3)]
    for user in annotators:
        MembershipFactory(project=project, user=user, role=Role.ANNOTATOR)
    for rater, user in enumerate(annotators):
        for _ in tasks:
            handout = queue.task_next(project=project, user=user)
            task = handout.task
            ids = [str(ti.image_id) for ti in task.task_images.order_by("position")]
            position = [t.pk for t in tasks].index(task.pk)
            if position == 1 and rater == 2:
                ranking = [[i] for i in reversed(ids)]
            elif position == 2:
                ranking = [[ids[0]], [ids[1], ids[2]], [ids[3]]]
            else:
                ranking = [[i] for i in ids]
            answers = {"quality": {ids[0]: 5, ids[3]: 1}, "problems": {ids[3]: ["artifact"]}}
            annotation_submit(
                project=project,
                user=user,
                task_id=task.pk,
                submission=Submission(
                    idempotency_key=f"{user.pk}-{task.pk}", ranking=ranking, answers=answers,
                    rationale=f"rater {rater}",
                ),
            )
    return project


def build(project, user, **fields) -> PreferenceExport:
    export = preference_export_create(project=project, user=user, request=export_request_parse(fields))
    return preference_export_build(export_id=export.pk)


def data_dir(export: PreferenceExport) -> Path:
    return export_services.export_directory(export)


@pytest.mark.parametrize(
    ("policy", "pairs", "ties"), [("drop", 6 * 9 - 3, 0), ("soft", 6 * 9, 3), ("mark", 6 * 9, 3)]
)
def test_pickapic_parquet_holds_every_pair_under_each_tie_policy(
    ranked_project, ml_engineer, policy, pairs, ties
):
    export = build(ranked_project, ml_engineer, format="pickapic", tie_policy=policy)
    assert export.status == RunStatus.SUCCEEDED, export.error
    table = pq.read_table(data_dir(export) / "pairs.parquet")
    assert table.num_rows == pairs == export.counts["pairs"]
    rows = table.to_pylist()
    assert sum(r["tie"] for r in rows) == ties
    expected_tie_label = {"soft": 0.5, "mark": 0.0}.get(policy)
    for row in rows:
        if row["tie"]:
            assert row["label_0"] == row["label_1"] == expected_tie_label
        else:
            assert (row["label_0"], row["label_1"]) == (1.0, 0.0)
            assert row["best_image_uid"] == row["image_0_uid"]
    # diffusers' Diffusion-DPO example reads it through datasets as is.
    loaded = datasets.load_dataset(
        "parquet", data_files=str(data_dir(export) / "pairs.parquet"), split="train"
    )
    assert loaded.num_rows == pairs
    assert {
        "caption",
        "jpg_0",
        "jpg_1",
        "label_0",
        "label_1",
        "model_0",
        "model_1",
        "user_id",
        "ranking_id",
    } <= set(loaded.column_names)


def test_exported_images_are_byte_identical_with_provenance(ranked_project, ml_engineer):
    export = build(ranked_project, ml_engineer, format="pickapic")
    for row in pq.read_table(data_dir(export) / "pairs.parquet").to_pylist():
        for side in ("0", "1"):
            with default_storage.open(row[f"image_{side}_path"], "rb") as handle:
                assert row[f"jpg_{side}"] == handle.read()
            assert row[f"sha256_{side}"]
            assert row[f"seed_{side}"] is not None and row[f"model_{side}"] == "test-shapes"


def test_votes_majority_agreement_and_bradley_terry(ranked_project, ml_engineer):
    export = build(ranked_project, ml_engineer, format="pickapic", tie_policy="soft")
    rows = pq.read_table(data_dir(export) / "pairs.parquet").to_pylist()
    by_task: dict[int, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(row)
    agreements = sorted({row["task_agreement"] for row in rows})
    assert agreements == [pytest.approx(2 / 3), 1.0]  # the disputed task, and the two agreed ones
    disputed = next(rs for rs in by_task.values() if rs[0]["task_agreement"] < 1)
    for row in disputed:
        assert row["votes_0"] + row["votes_1"] == 3 and row["votes_tie"] == 0
        assert {row["votes_0"], row["votes_1"]} == {2, 1}
    strengths = pq.read_table(data_dir(export) / "image_strengths.parquet").to_pylist()
    assert len(strengths) == 12
    agreed_task = next(
        rs for rs in by_task.values() if rs[0]["task_agreement"] == 1 and not any(r["tie"] for r in rs)
    )
    order = []
    for row in agreed_task:
        for uid in (row["image_0_uid"], row["image_1_uid"]):
            if uid not in order:
                order.append(uid)
    strength = {s["image_uid"]: s["bt_strength"] for s in strengths}
    best = next(
        r["image_0_uid"]
        for r in agreed_task
        if all(x["image_1_uid"] != r["image_0_uid"] for x in agreed_task)
    )
    assert strength[best] == max(strength[uid] for uid in order)


def test_min_agreement_filter_and_per_prompt_weights(ranked_project, ml_engineer):
    export = build(
        ranked_project,
        ml_engineer,
        format="pickapic",
        tie_policy="drop",
        min_agreement=0.9,
        weight_per_prompt=True,
    )
    rows = pq.read_table(data_dir(export) / "pairs.parquet").to_pylist()
    assert {row["task_agreement"] for row in rows} == {1.0}
    assert len({row["task_id"] for row in rows}) == 2
    per_prompt: dict[str, float] = {}
    for row in rows:
        per_prompt[row["prompt_id"]] = per_prompt.get(row["prompt_id"], 0.0) + row["weight"]
    assert all(total == pytest.approx(1.0) for total in per_prompt.values())


def test_splits_never_share_a_prompt(ranked_project, ml_engineer):
    export = build(
        ranked_project,
        ml_engineer,
        format="jsonl",
        split_train=0.34,
        split_validation=0.33,
        split_test=0.33,
        split_seed=3,
    )
    rows = [json.loads(line) for line in (data_dir(export) / "pairs.jsonl").read_text().splitlines()]
    split_of: dict[str, set[str]] = {}
    for row in rows:
        split_of.setdefault(row["prompt_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in split_of.values())
    assert sum(export.split_counts.values()) == len(rows)


def test_listwise_table_keeps_ranks_ties_and_rationale(ranked_project, ml_engineer):
    export = build(ranked_project, ml_engineer, format="listwise")
    table = pq.read_table(data_dir(export) / "rankings.parquet")
    assert table.num_rows == 9
    rows = table.to_pylist()
    tied = [r for r in rows if r["has_ties"]]
    assert len(tied) == 3
    assert tied[0]["ranks"] == [0, 1, 1, 3]
    assert all(tied[0]["ranked"])
    for row in rows:  # the image bytes are the stored ones, in ranked order
        for data, path in zip(row["images"], row["image_paths"], strict=True):
            with default_storage.open(path, "rb") as handle:
                assert data == handle.read()
    assert {r["rationale"] for r in rows} == {"rater 0", "rater 1", "rater 2"}
    for row in rows:
        best_and_worst = {row["image_uids"][row["ranks"].index(0)], row["image_uids"][row["ranks"].index(3)]}
        ratings, flags = json.loads(row["ratings"])["quality"], json.loads(row["flags"])["problems"]
        assert set(ratings) <= set(row["image_uids"]) and sorted(ratings.values()) == [1, 5]
        assert list(flags.values()) == [["artifact"]]
        assert set(ratings) == best_and_worst
    assert (
        datasets.load_dataset(
            "parquet", data_files=str(data_dir(export) / "rankings.parquet"), split="train"
        ).num_rows
        == 9
    )


def test_jsonl_loads_with_datasets(ranked_project, ml_engineer):
    export = build(ranked_project, ml_engineer, format="jsonl", tie_policy="drop")
    loaded = datasets.load_dataset("json", data_files=str(data_dir(export) / "pairs.jsonl"), split="train")
    assert loaded.num_rows == 51
    assert "jpg_0" not in loaded.column_names
    assert loaded[0]["image_0_url"].startswith("/generation/images/")


def test_hf_dataset_has_image_features_with_the_stored_bytes(ranked_project, ml_engineer):
    export = build(ranked_project, ml_engineer, format="hf", tie_policy="soft")
    dataset = datasets.load_from_disk(str(data_dir(export) / "dataset"))
    assert dataset.num_rows == 54 == export.counts["pairs"]
    assert isinstance(dataset.features["image_0"], datasets.Image)
    raw = dataset.cast_column("image_0", datasets.Image(decode=False))[0]["image_0"]["bytes"]
    row = pq.read_table(
        build(ranked_project, ml_engineer, format="pickapic").pk
        and data_dir(PreferenceExport.objects.latest("pk")) / "pairs.parquet"
    ).to_pylist()
    assert raw in {r["jpg_0"] for r in row}


def test_trl_preference_format_passes_trls_data_utilities(ranked_project, ml_engineer):
    from trl.data_utils import is_conversational, unpair_preference_dataset

    export = build(ranked_project, ml_engineer, format="trl", tie_policy="soft")
    dataset = datasets.load_from_disk(str(data_dir(export) / "dataset"))
    assert dataset.num_rows == 51  # ties have no chosen/rejected; trl's format drops them
    assert set(dataset.column_names) >= {"prompt", "chosen", "rejected"}
    assert not is_conversational(dataset[0])
    unpaired = unpair_preference_dataset(dataset)
    assert unpaired.num_rows == 2 * dataset.num_rows
    assert sorted(set(unpaired["label"])) == [False, True]


def test_filters_matching_nothing_give_an_empty_export_with_a_card_that_says_so(ranked_project, ml_engineer):
    export = build(
        ranked_project, ml_engineer, format="pickapic", date_from="2001-01-01", date_to="2001-01-02"
    )
    assert export.status == RunStatus.SUCCEEDED
    assert pq.read_table(data_dir(export) / "pairs.parquet").num_rows == 0
    card = export_services.export_card(export)
    assert "This export is empty" in card and "date_from" in card


def test_card_and_content_hash(ranked_project, ml_engineer):
    first = build(ranked_project, ml_engineer, format="pickapic", tie_policy="drop")
    again = build(ranked_project, ml_engineer, format="pickapic", tie_policy="drop")
    assert len(first.content_hash) == 64
    card = export_services.export_card(first)
    for needle in ("Tie policy: `drop`", "Pairs: 51", "| train |", ranked_project.name):
        assert needle in card
    assert first.content_hash == again.content_hash
    assert data_dir(first) == data_dir(again) == Path(settings.PICKWISE_EXPORT_DIR) / "data" / first.content_hash


def test_cached_files_are_keyed_by_content_not_by_id(ranked_project, ml_engineer):
    """After a database restore an id may name another export: its files and zip are found by content hash,
    so the restored row never serves the other export's data."""
    from rlhf.datasets.archive import export_archive

    soft = build(ranked_project, ml_engineer, format="pickapic", tie_policy="soft")
    drop = build(ranked_project, ml_engineer, format="pickapic", tie_policy="drop")
    soft_zip = export_archive(soft)
    # "Restore" a backup in which the soft export's id holds the drop export's row (its hash, its settings).
    PreferenceExport.objects.filter(pk=drop.pk).delete()
    PreferenceExport.objects.filter(pk=soft.pk).update(content_hash=drop.content_hash, tie_policy="drop",
                                                        counts=drop.counts, split_counts=drop.split_counts)
    restored = PreferenceExport.objects.get(pk=soft.pk)
    restored_zip = export_archive(restored)
    assert restored_zip != soft_zip
    with zipfile.ZipFile(restored_zip) as bundle:
        name = next(n for n in bundle.namelist() if n.endswith("pairs.parquet"))
        pairs = pq.read_table(io.BytesIO(bundle.read(name)))
    assert pairs.num_rows == drop.counts["pairs"] and not any(pairs.column("tie").to_pylist())
    # A row whose data was never on this machine gets a 404, not someone else's files.
    PreferenceExport.objects.filter(pk=soft.pk).update(content_hash="0" * 64)
    with pytest.raises(Http404):
        export_archive(PreferenceExport.objects.get(pk=soft.pk))


# --- API and permissions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"format": "csv"}, "format"),
        ({"format": "pickapic", "date_from": "2026-02-01", "date_to": "2026-01-01"}, "date_from"),
        ({"format": "pickapic", "date_from": "yesterday"}, "date_from"),
        ({"format": "pickapic", "tie_policy": "coin"}, "tie_policy"),
        ({"format": "pickapic", "min_agreement": 1.5}, "min_agreement"),
    ],
)
def test_bad_export_requests_get_a_400_naming_the_field(project, ml_engineer, payload, field):
    response = api_client_for(ml_engineer).post(
        "/api/exports/", {"project": project.pk, **payload}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert not PreferenceExport.objects.exists()


@pytest.mark.parametrize(
    ("user_fixture", "status"), [("ml_engineer", 201), ("admin_user", 201), ("annotator", 403)]
)
def test_only_ml_engineers_and_admins_of_the_project_export(request, project, user_fixture, status):
    client = api_client_for(request.getfixturevalue(user_fixture))
    response = client.post("/api/exports/", {"project": project.pk, "format": "jsonl"}, format="json")
    assert response.status_code == status, response.content


def test_exports_of_other_projects_are_invisible(project, other_project, ml_engineer, admin_user):
    outsider_export = PreferenceExport.objects.create(project=other_project, format="jsonl")
    client = api_client_for(ml_engineer)
    assert client.get(f"/api/exports/{outsider_export.pk}/").status_code == 404
    assert client.get("/api/exports/").json()["results"] == []
    response = client.post("/api/exports/", {"project": other_project.pk, "format": "jsonl"}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "project"


@pytest.mark.django_db(transaction=True)
def test_export_runs_on_a_real_worker_and_downloads_as_zip(
    celery_worker_process, ml_engineer, project, client, settings
):
    from tests.factories import PASSWORD

    settings.PICKWISE_EXPORT_DIR = Path(settings.PICKWISE_EXPORT_DIR)
    api = api_client_for(ml_engineer)
    created = api.post("/api/exports/", {"project": project.pk, "format": "pickapic"}, format="json").json()
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = api.get(f"/api/exports/{created['id']}/").json()
        if body["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.3)
    assert body["status"] == "succeeded", body
    download = api.get(body["download_url"])
    assert download.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))
    names = archive.namelist()
    assert any(name.endswith("pairs.parquet") for name in names)
    assert any(name.endswith("README.md") for name in names)
    assert client.login(username=ml_engineer.username, password=PASSWORD)
    page = client.get(f"/ml/exports/{created['id']}/")
    assert page.status_code == 200 and "Download (.zip)" in page.content.decode()


def test_export_pages_with_and_without_htmx(ranked_project, ml_engineer, annotator, client):
    from tests.factories import PASSWORD

    export = build(ranked_project, ml_engineer, format="jsonl")
    assert client.login(username=ml_engineer.username, password=PASSWORD)
    full = client.get(f"/ml/exports/{export.pk}/")
    assert (
        full.status_code == 200
        and "<html" in full.content.decode()
        and "Dataset card" in full.content.decode()
    )
    fragment = client.get(f"/ml/exports/{export.pk}/", HTTP_HX_REQUEST="true")
    assert "<html" not in fragment.content.decode() and "export-progress" in fragment.content.decode()
    assert fragment.status_code == 286  # finished: htmx stops polling
    created = client.post(
        f"/ml/projects/{ranked_project.pk}/exports/new/",
        {
            "format": "pickapic",
            "tie_policy": "soft",
            "gold": "exclude",
            "split_train": 0.8,
            "split_validation": 0.1,
            "split_test": 0.1,
            "split_seed": 0,
        },
    )
    assert created.status_code == 303
    bad = client.post(
        f"/ml/projects/{ranked_project.pk}/exports/new/",
        {
            "format": "pickapic",
            "tie_policy": "soft",
            "gold": "exclude",
            "split_train": 0.9,
            "split_validation": 0.3,
            "split_test": 0.1,
            "split_seed": 0,
        },
    )
    assert bad.status_code == 400 and "add up to 1" in bad.content.decode()
    client.logout()
    assert client.login(username=annotator.username, password=PASSWORD)
    assert client.get(f"/ml/exports/{export.pk}/").status_code == 404
    assert client.get(f"/ml/projects/{ranked_project.pk}/exports/new/").status_code == 403


def test_an_export_over_the_pair_limit_fails_with_the_reason_and_leaves_no_files(
    ranked_project, ml_engineer, settings
):
    settings.EXPORT_MAX_PAIRS = 10
    export = preference_export_create(
        project=ranked_project, user=ml_engineer, request=export_request_parse({"format": "pickapic"})
    )
    with pytest.raises(Exception, match="EXPORT_MAX_PAIRS"):
        preference_export_build(export_id=export.pk)
    export.refresh_from_db()
    assert export.status == RunStatus.FAILED and "EXPORT_MAX_PAIRS" in export.error
    assert not data_dir(export).exists()
    assert not list((export_services.export_root() / "building").glob(f"{export.pk}-attempt-*"))
