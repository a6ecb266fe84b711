"""Reward-model scores in the product: next to the human rankings in review (with disagreements
highlighted, and a button that queues scoring), and pre-sorted candidates on the annotator's page."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from annotate.builder import services as template_services
from annotate.models import Annotation
from annotate.workflow import queue
from annotate.workflow import services as workflow_services
from annotate.workflow.services import Submission
from rlhf.models import ImageScore, ProjectPresort, RewardModelVersion
from tests.annotate.factories_workflow import RANK_SCHEMA, task_with_images, tasks_with_images
from tests.factories import PASSWORD, api_client_for


def presort_of(project) -> int | None:
    """The id of the reward model that pre-sorts ``project``'s candidates (None: none)."""
    return ProjectPresort.objects.filter(project=project).values_list("reward_version_id", flat=True).first()

HX = {"HTTP_HX_REQUEST": "true"}


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)


def image_ids(task):
    return [str(pk) for pk in task.task_images.order_by("position").values_list("image_id", flat=True)]


def reward_version(project, name="rm-review"):
    return RewardModelVersion.objects.create(name=name, project=project, path="/nowhere")


def store_scores(version, scores):
    ImageScore.objects.bulk_create(ImageScore(reward_version=version, image_id=image_id, score=value)
                                   for image_id, value in scores.items())


@pytest.fixture
def ranked_task(project, annotator):
    """A task of images a, b, c, d ranked a > b > c > d by the annotator."""
    task = task_with_images(project, prompt="a red square")
    queue.task_next(project=project, user=annotator)
    workflow_services.annotation_submit(project=project, user=annotator, task_id=task.pk, submission=Submission(
        idempotency_key="ranked", ranking=[[i] for i in image_ids(task)]))
    return task


def test_review_shows_scores_the_models_order_and_where_it_disagrees(
        client, project, admin_user, ranked_task, django_assert_max_num_queries):
    a, b, c, d = image_ids(ranked_task)
    version = reward_version(project)
    # The model: b (0.4) > c (0.3) > a (0.1), d not scored. Against a > b > c: (a, b) and (a, c) disagree.
    store_scores(version, {a: 0.1, b: 0.4, c: 0.3})
    login(client, admin_user)
    url = reverse("annotate:review_tasks", args=[project.pk])
    plain = client.get(url).content.decode()
    assert f'<option value="{version.pk}">rm-review (Shapes)</option>' in plain  # the picker lists it
    assert "model disagrees" not in plain and "not scored" not in plain  # nothing picked: rankings only
    with django_assert_max_num_queries(14):
        response = client.get(url, {"reward": version.pk})
    html = response.content.decode()
    assert response.status_code == 200 and "<html" in html
    assert f'data-score-for="{b}">0.400<' in html and f'data-score-for="{d}">not scored<' in html
    assert 'class="model-summary model-disagrees" data-disagreements="2"' in html
    assert "model disagrees on 2 pairs" in html
    assert f'data-preferred="{a}" data-other="{b}"' in html and f'data-preferred="{a}" data-other="{c}"' in html
    assert f'data-preferred="{b}" data-other="{c}"' not in html  # the model agrees on b > c
    assert 'class="model-cell model-disagrees" data-disagreements="2"' in html  # the annotator's own row
    model_order = html.split("data-model-order>", 1)[1].split("</span></span>", 1)[0]
    assert model_order.index(b) < model_order.index(c) < model_order.index(a) and d not in model_order
    assert "1 image on this page is not scored by rm-review yet." in html and 'data-testid="score-page"' in html
    fragment = client.get(url, {"reward": version.pk}, **HX).content.decode()
    assert "<html" not in fragment and 'data-disagreements="2"' in fragment and "Show scores" not in fragment
    for task in tasks_with_images(project, 6):  # more tasks and scores: the same number of queries
        store_scores(version, dict.fromkeys(image_ids(task), 0.5))
    with django_assert_max_num_queries(14):
        assert client.get(url, {"reward": version.pk}).status_code == 200


def test_a_tied_ranking_does_not_disagree_and_an_agreeing_model_says_so(client, project, admin_user, annotator):
    template = template_services.template_create(project=project, name="Rank with ties", created_by=admin_user,
                                                 schema=RANK_SCHEMA, strict=True)
    workflow_services.project_update_settings(project=project, template_version=(
        template_services.template_version_publish(template=template, created_by=admin_user)))
    project.refresh_from_db()
    task = task_with_images(project)
    a, b, c, d = image_ids(task)
    queue.task_next(project=project, user=annotator)
    workflow_services.annotation_submit(project=project, user=annotator, task_id=task.pk, submission=Submission(
        idempotency_key="tied", ranking=[[a, b], [c], [d]]))
    version = reward_version(project)
    store_scores(version, {a: 0.1, b: 0.9, c: 0.05, d: 0.0})  # b > a only inside the human tie
    login(client, admin_user)
    html = client.get(reverse("annotate:review_tasks", args=[project.pk]), {"reward": version.pk}).content.decode()
    assert 'data-disagreements="0"' in html and "model agrees (0 disagreeing pairs)" in html
    assert "model disagrees" not in html and "Every image on this page is scored by rm-review." in html


def test_score_button_queues_only_the_unscored_images_of_the_page(
        client, project, admin_user, ranked_task, other_project, django_capture_on_commit_callbacks):
    a, b, c, d = image_ids(ranked_task)
    version = reward_version(project)
    store_scores(version, {a: 0.1, b: 0.4, c: 0.3})
    login(client, admin_user)
    score_url = reverse("annotate:review_score", args=[project.pk])
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(score_url, {"reward": version.pk, "page": "1"})
    assert response.status_code == 303
    assert response["Location"] == reverse("annotate:review_tasks", args=[project.pk]) + f"?reward={version.pk}&page=1"
    assert len(callbacks) == 1  # rlhf.tasks.score_images, sent when the transaction commits
    page = client.get(response["Location"]).content.decode()
    assert "Queued 1 image(s) for scoring" in page
    # A reward model of a project the admin does not belong to is refused, and nothing is queued.
    hidden = reward_version(other_project, name="rm-hidden")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(score_url, {"reward": hidden.pk, "page": "1"})
    assert response.status_code == 303 and not callbacks
    assert "Choose a reward model you may use." in client.get(response["Location"]).content.decode()
    picked = client.get(reverse("annotate:review_tasks", args=[project.pk]), {"reward": hidden.pk})
    assert picked.status_code == 400 and 'data-field="reward"' in picked.content.decode()


def test_annotators_and_outsiders_cannot_reach_the_review_or_the_score_button(
        client, project, annotator, ranked_task, other_project, django_capture_on_commit_callbacks):
    version = reward_version(project)
    login(client, annotator)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert client.get(reverse("annotate:review_tasks", args=[project.pk]),
                          {"reward": version.pk}).status_code == 403
        assert client.post(reverse("annotate:review_score", args=[project.pk]),
                           {"reward": version.pk, "page": "1"}).status_code == 403
        assert client.post(reverse("annotate:review_score", args=[other_project.pk]),
                           {"reward": version.pk, "page": "1"}).status_code == 404
    assert not callbacks
    client.logout()
    response = client.post(reverse("annotate:review_score", args=[project.pk]), {"reward": version.pk})
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert client.get(reverse("annotate:review_score", args=[project.pk])).status_code in (302, 405)


def test_presorted_task_page_shows_images_by_score_and_stores_the_submitted_ranking(
        client, project, admin_user, annotator, django_capture_on_commit_callbacks):
    version = reward_version(project)
    workflow_services.project_update_settings(project=project, user=admin_user,
                                              presort_reward_version_id=version.pk)
    project.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        task = task_with_images(project)
    assert len(callbacks) == 1  # the new task's images are queued for scoring
    w, x, y, z = image_ids(task)
    store_scores(version, {x: 0.2, z: 0.9})  # w and y not scored yet
    login(client, annotator)
    url = reverse("annotate:task_annotate", args=[project.pk])
    html = client.get(url).content.decode()
    shown = re.findall(r'class="ann-image" data-image="([^"]+)"', html)
    assert shown == [z, x, w, y]
    # The annotator ranks what they see top to bottom; the stored ranking names image ids.
    data = {f"ranking.rank.{image}": str(rank) for rank, image in enumerate(shown, start=1)}
    data["idempotency_key"] = "presorted"
    assert client.post(reverse("annotate:task_submit", args=[project.pk, task.pk]), data).status_code == 303
    assert Annotation.objects.get(task=task).ranking == [[z], [x], [w], [y]]
    # Without a pre-sort version the page keeps the task's own order.
    workflow_services.project_update_settings(project=project, presort_reward_version_id=None)
    second = task_with_images(project)
    html = client.get(url).content.decode()
    assert re.findall(r'class="ann-image" data-image="([^"]+)"', html) == image_ids(second)


def test_presort_setting_accepts_visible_versions_and_rejects_others_with_a_field_error(
        client, project, admin_user, other_project):
    mine, hidden = reward_version(project), reward_version(other_project, name="rm-hidden")
    login(client, admin_user)
    url = reverse("annotate:project_settings", args=[project.pk])
    page = client.get(url).content.decode()
    assert f'<option value="{mine.pk}">rm-review (Shapes)</option>' in page and "rm-hidden" not in page
    refused = client.post(url, {"presort_reward_version": str(hidden.pk)})
    assert refused.status_code == 400 and 'data-field="presort_reward_version"' in refused.content.decode()
    assert presort_of(project) is None
    assert client.post(url, {"presort_reward_version": str(mine.pk)}).status_code == 303
    assert presort_of(project) == mine.pk
    assert client.post(url, {"overlap": "2"}).status_code == 303  # a form without the field keeps it
    assert presort_of(project) == mine.pk

    api = api_client_for(admin_user)
    settings_url = f"/api/projects/{project.pk}/settings/"
    assert api.get(settings_url).json()["presort_reward_version"] == mine.pk
    response = api.patch(settings_url, {"presort_reward_version": hidden.pk}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "presort_reward_version"
    response = api.patch(settings_url, {"presort_reward_version": None}, format="json")
    assert response.status_code == 200 and response.json()["presort_reward_version"] is None
    response = api.patch(settings_url, {"presort_reward_version": 999999}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "presort_reward_version"
