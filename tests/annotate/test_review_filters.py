"""The review page's filters (status, annotator, disagreement) and its sort by disagreement, with and without
htmx, with a query count that does not grow with the rows; and the same in Chromium."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotate.workflow import agreement
from tests.annotate.factories_workflow import tasks_with_images
from tests.annotate.review_fixtures import answer_every_task, build_review_project
from tests.factories import PASSWORD

HX = {"HTTP_HX_REQUEST": "true"}


def shown(html: str) -> list[int]:
    """The task ids the page lists, in order."""
    return [int(pk) for pk in re.findall(r'<section class="card review-task" data-task="(\d+)"', html)]


@pytest.fixture
def reviewed(project, admin_user, annotator):
    return build_review_project(project, admin_user, annotator)


def test_disagreement_is_one_minus_the_mean_pairwise_agreement():
    a, b, c = [["w"], ["x"], ["y"], ["z"]], [["z"], ["y"], ["x"], ["w"]], [["w"], ["x"], ["z"], ["y"]]
    assert agreement.disagreement([a, a]) == 0.0
    assert agreement.disagreement([a, b]) == 1.0
    assert agreement.disagreement([a, c]) == pytest.approx(1 / 6)  # one of six image pairs swapped
    assert agreement.disagreement([a, b, c]) == pytest.approx(1 - (0 + 5 / 6 + 1 / 6) / 3)
    assert agreement.disagreement([a]) is None and agreement.disagreement([]) is None


def test_each_filter_and_the_sort(client, project, admin_user, reviewed):
    r = reviewed
    assert client.login(username=admin_user.username, password=PASSWORD)
    url = reverse("annotate:review_tasks", args=[project.pk])

    def ids(**params):
        response = client.get(url, params)
        assert response.status_code == 200, response.content
        return shown(response.content.decode())

    everything = [r.agreed.pk, r.opposed.pk, r.rejected.pk, r.untouched.pk, r.slight.pk, r.gold.pk]
    assert ids() == everything
    assert ids(status="unanswered") == [r.rejected.pk, r.untouched.pk, r.gold.pk]
    assert ids(status="answered") == [r.agreed.pk, r.opposed.pk, r.slight.pk]
    assert ids(status="rejected") == [r.rejected.pk]
    assert ids(status="gold") == [r.gold.pk]
    assert ids(annotator="anna-annotator") == [r.agreed.pk, r.opposed.pk, r.rejected.pk, r.slight.pk]
    assert ids(annotator="anna-annotator", status="rejected") == [r.rejected.pk]
    assert ids(annotator="bob-annotator", status="unanswered") == [r.rejected.pk, r.untouched.pk, r.gold.pk]
    assert ids(annotator="nobody") == []
    assert ids(disagreement="any") == [r.opposed.pk, r.slight.pk]
    assert ids(disagreement="25") == [r.opposed.pk]
    assert ids(disagreement="50", annotator="bob-annotator") == [r.opposed.pk]
    assert ids(sort="disagreement") == [r.opposed.pk, r.slight.pk, r.agreed.pk, r.rejected.pk, r.untouched.pk,
                                        r.gold.pk]  # tasks with under two answers last, in queue order
    assert ids(sort="disagreement", status="answered") == [r.opposed.pk, r.slight.pk, r.agreed.pk]

    html = client.get(url, {"annotator": "anna-annotator", "status": "rejected"}).content.decode()
    assert '<p class="review-count" role="status" data-count="1">1 task matches the filters.</p>' in html
    assert 'class="chosen-annotator"' in html and '<option value="bob-annotator">' in html
    opposed = client.get(url, {"disagreement": "25"}).content.decode()
    assert f'data-task="{r.opposed.pk}" data-disagreement="1.000"' in opposed
    assert "annotators disagree on 100% of image pairs" in opposed
    assert opposed.count('class="pixelated"') == 4  # the task's candidates as thumbnails


def test_bad_filters_are_named_and_filters_survive_paging(client, project, admin_user, reviewed):
    assert client.login(username=admin_user.username, password=PASSWORD)
    url = reverse("annotate:review_tasks", args=[project.pk])
    bad = client.get(url, {"status": "done"})
    assert bad.status_code == 400
    assert ('<p class="error" role="alert" data-field="status">Status must be one of: unanswered, answered, '
            "rejected, gold.</p>") in bad.content.decode()
    assert client.get(url, {"sort": "random"}).status_code == 400

    tasks_with_images(project, 30)  # 36 tasks: two pages
    first = client.get(url, {"status": "unanswered", "sort": "disagreement"}).content.decode()
    assert "Page 1 of 2" in first
    assert 'href="?page=2&amp;status=unanswered&amp;sort=disagreement"' in first
    second = client.get(url, {"status": "unanswered", "sort": "disagreement", "page": 2}).content.decode()
    assert len(shown(first)) == 25 and len(shown(second)) == 8 and not set(shown(first)) & set(shown(second))


def test_fragment_with_htmx_and_page_without(client, project, admin_user, reviewed):
    assert client.login(username=admin_user.username, password=PASSWORD)
    url = reverse("annotate:review_tasks", args=[project.pk])
    page = client.get(url, {"status": "answered"}).content.decode()
    assert "<html" in page and 'hx-get="' in page and 'name="status"' in page and 'id="review-rows"' in page
    fragment = client.get(url, {"status": "answered"}, **HX).content.decode()
    assert "<html" not in fragment and 'name="status"' not in fragment and 'id="review-rows"' not in fragment
    assert shown(fragment) == shown(page) == [reviewed.agreed.pk, reviewed.opposed.pk, reviewed.slight.pk]


@pytest.mark.parametrize("params", [{}, {"sort": "disagreement", "annotator": "anna-annotator"},
                                    {"status": "answered", "disagreement": "any"}])
def test_query_count_does_not_grow_with_the_rows(client, project, admin_user, annotator, reviewed, params,
                                                 django_assert_max_num_queries):
    assert client.login(username=admin_user.username, password=PASSWORD)
    url = reverse("annotate:review_tasks", args=[project.pk])
    with CaptureQueriesContext(connection) as few:
        client.get(url, params)
    tasks_with_images(project, 8)
    answer_every_task(project, [annotator, reviewed.second], reverse_for=reviewed.second)  # 8 more disagreeing rows
    with django_assert_max_num_queries(len(few.captured_queries)):
        html = client.get(url, params).content.decode()
    assert len(shown(html)) >= 10
