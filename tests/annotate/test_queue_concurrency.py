"""The queue under concurrency on real PostgreSQL: 20 annotators at once, double submits."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections

from annotate.models import Annotation, AnnotationStatus, AnnotationTask, AssignmentStatus, TaskAssignment
from annotate.workflow import queue
from annotate.workflow import services as workflow_services
from annotate.workflow.services import Submission
from projects.roles import Role
from tests.annotate.factories_workflow import set_workflow, tasks_with_images
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

N_ANNOTATORS = 20
N_TASKS = 30
K = 3


@pytest.fixture
def busy_project():
    if connection.vendor != "postgresql":
        pytest.skip("SKIP LOCKED concurrency needs PostgreSQL (run through `make test`)")
    project = ProjectFactory(name="Busy")
    set_workflow(project, overlap=K)
    users = [UserFactory(username=f"busy-{i}", role=Role.ANNOTATOR, password=None) for i in range(N_ANNOTATORS)]
    for user in users:
        MembershipFactory(project=project, user=user, role=Role.ANNOTATOR)
    tasks = tasks_with_images(project, N_TASKS)
    image_ids = {
        task.pk: [str(pk) for pk in task.task_images.order_by("position").values_list("image_id", flat=True)]
        for task in tasks
    }
    return project, users, image_ids


def _work(project, user, image_ids, barrier, log):
    try:
        barrier.wait()
        while True:
            handout = queue.task_next(project=project, user=user)
            if handout.task is None:
                return
            ranking = [[i] for i in image_ids[handout.task.pk]]
            key = f"{user.pk}-{handout.task.pk}"
            annotation, created = workflow_services.annotation_submit(
                project=project, user=user, task_id=handout.task.pk,
                submission=Submission(idempotency_key=key, ranking=ranking))
            # a retried request (same key) never stores a second ranking
            again, created_again = workflow_services.annotation_submit(
                project=project, user=user, task_id=handout.task.pk,
                submission=Submission(idempotency_key=key, ranking=ranking))
            assert created and not created_again and again.pk == annotation.pk
            log.append((user.pk, handout.task.pk, annotation.pk))
    finally:
        connections.close_all()


def test_twenty_annotators_at_once_never_exceed_k_nor_repeat_nor_lose(busy_project):
    project, users, image_ids = busy_project
    barrier = threading.Barrier(N_ANNOTATORS)
    log: list[tuple[int, int, int]] = []
    with ThreadPoolExecutor(max_workers=N_ANNOTATORS) as pool:
        futures = [pool.submit(_work, project, user, image_ids, barrier, log) for user in users]
        for future in futures:
            future.result()

    stored = list(Annotation.objects.filter(project=project).values_list("annotator_id", "task_id", "pk"))
    # nothing lost, nothing duplicated: exactly the acknowledged rankings are stored
    assert sorted(stored) == sorted(log)
    assert len(stored) == N_TASKS * K  # every slot filled (20 annotators > k)
    per_task = Counter(task_id for _, task_id, _ in stored)
    assert max(per_task.values()) == K and len(per_task) == N_TASKS
    assert len({(user_id, task_id) for user_id, task_id, _ in stored}) == len(stored)  # nobody twice
    assert not TaskAssignment.objects.filter(status=AssignmentStatus.ACTIVE).exists()
    assert all(not t.is_open and t.taken_count == K for t in AnnotationTask.objects.filter(project=project))
    assert Annotation.objects.filter(status=AnnotationStatus.SUBMITTED).count() == N_TASKS * K


def test_concurrent_double_submit_stores_one_ranking(busy_project):
    project, users, image_ids = busy_project
    user = users[0]
    task = queue.task_next(project=project, user=user).task
    ranking = [[i] for i in image_ids[task.pk]]
    barrier = threading.Barrier(8)

    def click():
        try:
            barrier.wait()
            annotation, _ = workflow_services.annotation_submit(
                project=project, user=user, task_id=task.pk,
                submission=Submission(idempotency_key="double-click", ranking=ranking))
            return annotation.pk
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = [f.result() for f in [pool.submit(click) for _ in range(8)]]
    assert len(set(ids)) == 1
    assert Annotation.objects.filter(task=task).count() == 1


def test_same_annotator_asking_twice_at_once_gets_one_lease(busy_project):
    project, users, _ = busy_project
    user = users[0]
    barrier = threading.Barrier(6)

    def ask():
        try:
            barrier.wait()
            return queue.task_next(project=project, user=user).assignment.pk
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=6) as pool:
        ids = [f.result() for f in [pool.submit(ask) for _ in range(6)]]
    assert len(set(ids)) == 1
    assert TaskAssignment.objects.filter(annotator=user).count() == 1
