"""Generated images are served only to people who may see their project (or who asked for them)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from generation import services, worker
from generation.models import GeneratedImage
from projects.roles import GROUP_NAMES, Role
from tests.factories import MembershipFactory, UserFactory


@pytest.fixture
def project_image(annotator, project, tiny_version):
    job = services.generation_job_create(
        user=annotator, model_version=tiny_version, prompt="a star", project=project
    )
    worker.run_job(job.pk)
    return GeneratedImage.objects.get(job=job)


def test_owner_and_project_members_get_the_png(client, annotator, admin_user, ml_engineer, project_image):
    url = f"/generation/images/{project_image.pk}.png"
    for user in (annotator, admin_user, ml_engineer):
        client.force_login(user)
        response = client.get(url)
        assert response.status_code == 200, user
        assert response["Content-Type"] == "image/png"
        assert response["Cache-Control"].startswith("private")
        assert b"".join(response.streaming_content).startswith(b"\x89PNG")


def test_outsiders_get_404_and_anonymous_users_the_login_page(client, other_project, project_image):
    url = f"/generation/images/{project_image.pk}.png"
    assert client.get(url).status_code == 302  # login first
    outsider = other_project.memberships.get().user  # a member of another project only
    client.force_login(outsider)
    assert client.get(url).status_code == 404
    # A member whose global role was revoked may not see it either.
    member = UserFactory(username="ex-annotator")
    MembershipFactory(project=project_image.job.project, user=member, role=Role.ANNOTATOR)
    client.force_login(member)
    assert client.get(url).status_code == 404
    member.groups.add(Group.objects.get(name=GROUP_NAMES[Role.ANNOTATOR]))
    assert client.get(url).status_code == 200
    assert client.get("/generation/images/00000000-0000-0000-0000-000000000000.png").status_code == 404


def test_project_less_images_are_their_owners_only(client, ml_engineer, admin_user, tiny_version):
    job = services.generation_job_create(
        user=ml_engineer, model_version=tiny_version, prompt="solo", project=None
    )
    worker.run_job(job.pk)
    url = f"/generation/images/{job.images.get().pk}.png"
    client.force_login(ml_engineer)
    assert client.get(url).status_code == 200
    client.force_login(admin_user)
    assert client.get(url).status_code == 404


def test_api_urls_point_at_the_checked_view(annotator, project_image):
    from generation import selectors

    job = selectors.job_for_user(user=annotator, job_id=project_image.job_id)
    [payload] = selectors.job_status(job)["images"]
    assert payload["url"] == f"/generation/images/{project_image.pk}.png"
