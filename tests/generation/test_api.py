"""The REST API and the htmx pages, plus one request through the whole path with a real worker."""

from __future__ import annotations

import time

import pytest
from django.core.files.storage import default_storage
from django.test import override_settings
from django.urls import reverse
from rest_framework.test import APIClient

from generation import inference, services, worker
from generation.models import GenerationJob, JobStatus
from tests.factories import api_client_for

JOBS = "/api/generation-jobs/"


def test_model_versions_lists_only_enabled(annotator, tiny_version):
    services.model_version_register(name="off", source=tiny_version.source, dtype="float32", enabled=False)
    response = api_client_for(annotator).get("/api/model-versions/")
    assert response.status_code == 200
    assert [v["name"] for v in response.json()] == ["tiny"]
    assert response.json()[0]["default_steps"] == 4


def test_create_poll_and_cancel(annotator, admin_user, project, tiny_version):
    client = api_client_for(annotator)
    response = client.post(
        JOBS,
        {
            "prompt": "a blue star",
            "model_version": "tiny",
            "num_images": 2,
            "seeds": [5, 6],
            "params": {"steps": 3},
            "project": project.pk,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "queued" and body["seeds"] == [5, 6] and body["params"]["steps"] == 3
    assert body["queue_position"] == 0 and body["images"] == []
    job_url = f"{JOBS}{body['id']}/"
    assert client.get(job_url).json()["id"] == body["id"]
    # Members of the project see it too; the list shows only your own.
    assert api_client_for(admin_user).get(job_url).status_code == 200
    assert api_client_for(admin_user).get(JOBS).json() == []
    assert client.post(f"{job_url}cancel/").json()["status"] == "cancelled"
    assert client.post(f"{job_url}cancel/").status_code == 400


def test_errors_are_clear(annotator, project, other_project, tiny_version):
    client = api_client_for(annotator)
    bad = client.post(
        JOBS,
        {"prompt": "x", "model_version": "tiny", "params": {"width": 30}, "project": project.pk},
        format="json",
    )
    assert bad.status_code == 400 and bad.json() == {
        "detail": "Width must be a multiple of 8, got 30.",
        "field": "width",
    }
    assert (
        client.post(
            JOBS, {"prompt": "x", "model_version": "nope", "project": project.pk}, format="json"
        ).json()["field"]
        == "model_version"
    )
    assert (
        client.post(
            JOBS, {"prompt": "x", "model_version": "tiny", "project": other_project.pk}, format="json"
        ).status_code
        == 404
    )
    assert client.post(JOBS, {"prompt": "x", "model_version": "tiny"}, format="json").status_code == 403
    assert api_client_for(annotator).get(f"{JOBS}999999/").status_code == 404


def test_rate_limit_answers_429_with_retry_after(annotator, project, tiny_version):
    client = api_client_for(annotator)
    payload = {"prompt": "a circle", "model_version": "tiny", "project": project.pk}
    with override_settings(GENERATION_RATE_LIMIT_PER_MINUTE=1):
        assert client.post(JOBS, payload, format="json").status_code == 201
        limited = client.post(JOBS, payload, format="json")
    assert limited.status_code == 429
    assert int(limited["Retry-After"]) >= 1 and "a minute" in limited.json()["detail"]


def test_someone_elses_job_is_invisible(annotator, other_project, tiny_version):
    owner = other_project.memberships.get().user
    job = GenerationJob.objects.create(
        created_by=owner,
        model_version=tiny_version,
        prompt="p",
        params={},
        params_hash="h",
        num_images=1,
        seeds=[1],
        project=other_project,
    )
    assert api_client_for(annotator).get(f"{JOBS}{job.pk}/").status_code == 404
    assert api_client_for(annotator).post(f"{JOBS}{job.pk}/cancel/").status_code == 404


def test_generate_page_get_post_and_htmx(client, annotator, project, tiny_version):
    client.force_login(annotator)
    page = client.get(reverse("generation:generate"))
    assert page.status_code == 200 and b'<option value="%d"' % tiny_version.pk in page.content
    form = {
        "prompt": "a green square",
        "model_version": tiny_version.pk,
        "num_images": 2,
        "project": project.pk,
    }
    response = client.post(reverse("generation:generate"), form)
    job = GenerationJob.objects.get()
    assert response.status_code == 303 and response["Location"] == reverse(
        "generation:job_detail", args=[job.pk]
    )
    htmx = client.post(reverse("generation:generate"), form, HTTP_HX_REQUEST="true")
    assert htmx.status_code == 200 and htmx["HX-Redirect"].startswith("/generation/jobs/")
    invalid = client.post(reverse("generation:generate"), {**form, "num_images": 99})
    assert invalid.status_code == 400 and b'role="alert"' in invalid.content


def test_progress_fragment_polls_until_the_job_ends(client, annotator, project, tiny_version):
    client.force_login(annotator)
    job = services.generation_job_create(
        user=annotator, model_version=tiny_version, prompt="p", project=project, num_images=2
    )
    url = reverse("generation:job_detail", args=[job.pk])
    full = client.get(url)
    assert full.status_code == 200 and b"<html" in full.content and b'hx-trigger="every 200ms"' in full.content
    fragment = client.get(url, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and b"<html" not in fragment.content
    assert b"Waiting in the queue" in fragment.content and b'hx-trigger="every 200ms"' in fragment.content

    worker.run_job(job.pk)
    done = client.get(url, HTTP_HX_REQUEST="true")
    assert done.status_code == 286  # htmx stops polling
    assert b"hx-trigger" not in done.content and done.content.count(b"<img") == 2


@pytest.mark.django_db(transaction=True)
def test_whole_path_api_to_worker_to_stored_image(
    celery_worker_process, annotator, project, tiny_pipeline_dir
):
    services.model_version_register(
        name="tiny",
        source=str(tiny_pipeline_dir),
        dtype="float32",
        scheduler="ddim",
        steps=4,
        guidance=5.0,
        width=32,
        height=32,
    )
    client = api_client_for(annotator)
    created = client.post(
        JOBS,
        {"prompt": "a red circle", "model_version": "tiny", "num_images": 3, "project": project.pk},
        format="json",
    )
    assert created.status_code == 201
    url = f"{JOBS}{created.json()['id']}/"
    deadline = time.monotonic() + 120
    while (body := client.get(url).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
    assert body["status"] == JobStatus.SUCCEEDED, body
    assert [image["seed"] for image in body["images"]] == created.json()["seeds"]
    for image in body["images"]:
        response = client.get(image["url"])
        assert response.status_code == 200 and response["Content-Type"] == "image/png"
        data = b"".join(response.streaming_content)
        assert inference.sha256_hex(data) == image["sha256"]
        with default_storage.open(f"generated/{body['id']}/{image['index']}-{image['seed']}.png", "rb") as fh:
            assert fh.read() == data
    assert api_client_for(project.memberships.get(role="admin").user).get(image["url"]).status_code == 200
    outsider = APIClient()
    assert outsider.get(image["url"]).status_code == 302  # to the login page
    outsider.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert outsider.get(image["url"]).status_code == 401
