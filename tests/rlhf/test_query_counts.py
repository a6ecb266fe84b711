"""Reads whose query count must not grow with their rows: the trainable projects and run lists, and the
images a scoring request names."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.exceptions import ApplicationError
from projects.roles import Role
from rlhf.models import RewardModelRun
from rlhf.runs import selectors as run_selectors
from rlhf.runs.scoring import images_for_scoring
from tests.annotate.factories_workflow import images_for
from tests.factories import MembershipFactory, ProjectFactory


def queries(call) -> int:
    with CaptureQueriesContext(connection) as captured:
        call()
    return len(captured)


def test_images_for_scoring_takes_the_same_queries_for_one_image_as_for_twenty(project, ml_engineer):
    one, twenty = images_for(project, 1, store=False), images_for(project, 20, store=False)
    images_for_scoring(user=ml_engineer, image_ids=[one[0].pk])  # permissions cached, as in a warm process
    few = queries(lambda: images_for_scoring(user=ml_engineer, image_ids=[one[0].pk]))
    many = queries(lambda: images_for_scoring(user=ml_engineer, image_ids=[image.pk for image in twenty]))
    assert many == few
    assert [image.pk for image in images_for_scoring(user=ml_engineer, image_ids=[i.pk for i in twenty])] == [
        image.pk for image in twenty]  # in the order asked


def test_images_for_scoring_refuses_an_image_the_user_may_not_see(project, other_project, ml_engineer):
    mine, theirs = images_for(project, 1, store=False), images_for(other_project, 1, store=False)
    with pytest.raises(ApplicationError) as exc:
        images_for_scoring(user=ml_engineer, image_ids=[mine[0].pk, theirs[0].pk])
    assert exc.value.field == "image_ids" and str(theirs[0].pk) in exc.value.message
    with pytest.raises(ApplicationError) as exc:
        images_for_scoring(user=ml_engineer, image_ids=["not-an-id"])
    assert exc.value.message == "No image not-an-id that you may see."


def test_the_run_list_pages_take_the_same_queries_for_one_project_as_for_six(project, ml_engineer, client):
    client.force_login(ml_engineer)
    RewardModelRun.objects.create(project=project, data_path="/data/pairs.parquet", backbone="tiny")
    client.get("/ml/reward-runs/")
    pages = ("/ml/reward-runs/", "/ml/finetune-runs/")
    few = [queries(lambda url=url: client.get(url)) for url in pages]
    assert len(run_selectors.trainable_projects(user=ml_engineer)) == 1
    for number in range(5):
        more = ProjectFactory(name=f"More {number}")
        MembershipFactory(project=more, user=ml_engineer, role=Role.ML_ENGINEER)
        RewardModelRun.objects.create(project=more, data_path="/data/pairs.parquet", backbone="tiny")
    assert len(run_selectors.trainable_projects(user=ml_engineer)) == 6
    many = [queries(lambda url=url: client.get(url)) for url in pages]
    assert many == few
