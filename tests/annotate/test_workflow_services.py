"""Queue and answer services: handing out, k, leases, skipping, idempotent submit, amend, reject, import."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotate.models import (
    Annotation,
    AnnotationStatus,
    AnnotationTask,
    AssignmentStatus,
    Prompt,
    TaskAssignment,
)
from annotate.workflow import queue
from annotate.workflow import services as workflow_services
from annotate.workflow.services import Submission
from core.exceptions import ApplicationError
from projects.roles import Role
from tests.annotate.factories_workflow import images_for, set_workflow, task_with_images, tasks_with_images
from tests.factories import MembershipFactory, UserFactory


def annotators(project, n):
    users = [UserFactory(role=Role.ANNOTATOR, password=None) for _ in range(n)]
    for user in users:
        MembershipFactory(project=project, user=user, role=Role.ANNOTATOR)
    return users


def image_ids(task):
    return [str(pk) for pk in task.task_images.order_by("position").values_list("image_id", flat=True)]


def submit(project, user, task, key=None, ranking=None, **kwargs):
    ranking = ranking or [[i] for i in image_ids(task)]
    return workflow_services.annotation_submit(
        project=project, user=user, task_id=task.pk,
        submission=Submission(idempotency_key=key or f"k-{user.pk}-{task.pk}", ranking=ranking, **kwargs),
    )


def test_next_task_follows_sequential_order_and_returns_the_same_lease(project, annotator):
    tasks = tasks_with_images(project, 3)
    first = queue.task_next(project=project, user=annotator)
    assert first.task.pk == tasks[0].pk
    again = queue.task_next(project=project, user=annotator)
    assert again.assignment.pk == first.assignment.pk
    assert TaskAssignment.objects.filter(annotator=annotator).count() == 1


def test_random_order_uses_random_keys(project, annotator):
    set_workflow(project, task_order="random")
    tasks = tasks_with_images(project, 5)
    expected = min(tasks, key=lambda t: (t.random_key, t.pk))
    assert queue.task_next(project=project, user=annotator).task.pk == expected.pk


def test_overlap_k_limits_annotators_per_task_and_nobody_gets_a_task_twice(project):
    set_workflow(project, overlap=2)
    task_a, task_b = tasks_with_images(project, 2)
    u1, u2, u3 = annotators(project, 3)
    assert queue.task_next(project=project, user=u1).task == task_a
    assert queue.task_next(project=project, user=u2).task == task_a
    assert queue.task_next(project=project, user=u3).task == task_b  # task_a is full
    submit(project, u1, task_a)
    assert queue.task_next(project=project, user=u1).task == task_b
    submit(project, u1, task_b)
    assert queue.task_next(project=project, user=u1).task is None  # done everything
    task_a.refresh_from_db()
    assert (task_a.taken_count, task_a.is_open) == (2, False)


def test_lease_expiry_returns_the_slot_through_the_reaper(project):
    set_workflow(project, lease_seconds=60)
    (task,) = tasks_with_images(project, 1)
    u1, u2 = annotators(project, 2)
    handout = queue.task_next(project=project, user=u1)
    assert queue.task_next(project=project, user=u2).task is None
    assert queue.leases_reap(now=timezone.now()) == 0
    assert queue.leases_reap(now=timezone.now() + timedelta(seconds=61)) == 1
    handout.assignment.refresh_from_db()
    assert handout.assignment.status == AssignmentStatus.EXPIRED
    task.refresh_from_db()
    assert (task.taken_count, task.is_open) == (0, True)
    assert queue.task_next(project=project, user=u2).task == task
    # the reaper is registered for beat
    from core.tasks import registered_reapers

    assert "annotate.expired_leases" in registered_reapers()


def test_late_submit_after_expiry_is_accepted_while_the_task_has_room(project):
    set_workflow(project, overlap=2)
    (task,) = tasks_with_images(project, 1)
    (u1,) = annotators(project, 1)
    queue.task_next(project=project, user=u1)
    TaskAssignment.objects.filter(annotator=u1).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert queue.leases_reap() == 1
    annotation, created = submit(project, u1, task)
    assert created and annotation.status == AnnotationStatus.SUBMITTED
    task.refresh_from_db()
    assert task.taken_count == 1


def _statements(captured):
    """The statements a block ran, less the savepoints of the test's own transaction."""
    return [q["sql"] for q in captured.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]


def test_a_submit_spares_its_authors_next_hand_out_the_lease_look_up_and_no_one_elses(project):
    set_workflow(project, overlap=2)
    tasks_with_images(project, 3)
    u1, u2 = annotators(project, 2)
    first, held = queue.task_next(project=project, user=u1), queue.task_next(project=project, user=u2)
    submit(project, u1, first.task)  # the same project instance serves both annotators, as the simulator's does
    with CaptureQueriesContext(connection) as other:
        assert queue.task_next(project=project, user=u2).assignment.pk == held.assignment.pk  # still u2's lease
    submit(project, u1, queue.task_next(project=project, user=u1).task)
    with CaptureQueriesContext(connection) as own:
        mine = queue.task_next(project=project, user=u1)
    assert mine.task is not None and mine.assignment.annotator_id == u1.pk
    # lock the next task (prompt and images joined), count the slot, insert the lease: no look-up before them
    assert len(_statements(own)) == 3 and "SKIP LOCKED" in _statements(own)[0]
    # the note was u1's: u2's current lease was looked up (and handed back)
    assert len(_statements(other)) == 1 and _statements(other)[0].startswith('SELECT "annotate_taskassignment"')


def test_a_late_submit_hands_back_the_lease_its_author_already_holds(project):
    set_workflow(project, overlap=2)
    expired_task, _, _ = tasks_with_images(project, 3)
    (u1,) = annotators(project, 1)
    queue.task_next(project=project, user=u1)
    TaskAssignment.objects.filter(annotator=u1).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert queue.leases_reap() == 1
    current = queue.task_next(project=project, user=u1)
    annotation, created = submit(project, u1, expired_task)  # the expired lease's task still has room
    assert created and annotation.task_id == expired_task.pk
    # the submitted lease was not u1's active one: the hand-out looks and gives back the lease u1 holds
    assert queue.task_next(project=project, user=u1).assignment.pk == current.assignment.pk
    assert TaskAssignment.objects.filter(annotator=u1, status=AssignmentStatus.ACTIVE).count() == 1


def test_skip_needs_a_reason_and_frees_the_slot(project, annotator):
    (task,) = tasks_with_images(project, 1)
    queue.task_next(project=project, user=annotator)
    with pytest.raises(ApplicationError) as exc:
        queue.assignment_skip(project=project, user=annotator, task_id=task.pk, reason=" ")
    assert exc.value.field == "reason"
    skipped = queue.assignment_skip(project=project, user=annotator, task_id=task.pk, reason="image broken")
    assert (skipped.status, skipped.skip_reason) == (AssignmentStatus.SKIPPED, "image broken")
    task.refresh_from_db()
    assert task.taken_count == 0 and task.is_open
    assert queue.task_next(project=project, user=annotator).task is None  # not offered again


def test_submit_is_idempotent(project, annotator):
    (task,) = tasks_with_images(project, 1)
    queue.task_next(project=project, user=annotator)
    first, created = submit(project, annotator, task, key="click-1")
    again, created_again = submit(project, annotator, task, key="click-1")
    assert created and not created_again and first.pk == again.pk
    assert Annotation.objects.count() == 1
    with pytest.raises(ApplicationError, match="already submitted"):
        submit(project, annotator, task, key="click-2")


@pytest.mark.parametrize(
    ("make_ranking", "message"),
    [
        (lambda ids: [[ids[0]], [ids[1]], [ids[2]]], "rank every image"),
        (lambda ids: [[ids[0]], [ids[0]], [ids[1]], [ids[2]]], "more than once"),
        (lambda ids: [[ids[0], ids[1]], [ids[2]], [ids[3]]], "ties are not allowed"),
        (lambda ids: [[ids[0]], [ids[1]], [ids[2]], ["00000000-0000-0000-0000-000000000000"]], "unknown image"),
        (lambda ids: "best", "list of groups"),
    ],
)
def test_submit_checks_the_ranking_against_the_task(project, annotator, make_ranking, message):
    (task,) = tasks_with_images(project, 1)
    queue.task_next(project=project, user=annotator)
    with pytest.raises(ApplicationError, match=message) as exc:
        submit(project, annotator, task, ranking=make_ranking(image_ids(task)))
    assert exc.value.field == "ranking"
    assert not Annotation.objects.exists()


def test_submit_needs_the_lease(project, annotator):
    (task,) = tasks_with_images(project, 1)
    with pytest.raises(ApplicationError, match="not assigned to you"):
        submit(project, annotator, task)


def test_amend_keeps_history_and_reject_reopens_the_task(project, annotator, admin_user):
    (task,) = tasks_with_images(project, 1)
    queue.task_next(project=project, user=annotator)
    ids = image_ids(task)
    first, _ = submit(project, annotator, task)
    amended = workflow_services.annotation_amend(
        project=project, user=annotator, annotation_id=first.pk,
        submission=Submission(idempotency_key="amend-1", ranking=[[i] for i in reversed(ids)]),
    )
    first.refresh_from_db()
    assert first.status == AnnotationStatus.SUPERSEDED and amended.supersedes_id == first.pk
    assert amended.ranking == [[i] for i in reversed(ids)]
    # an amend replay returns the same row
    replay = workflow_services.annotation_amend(
        project=project, user=annotator, annotation_id=first.pk,
        submission=Submission(idempotency_key="amend-1", ranking=[[i] for i in ids]),
    )
    assert replay.pk == amended.pk
    with pytest.raises(ApplicationError, match="current answer"):
        workflow_services.annotation_amend(project=project, user=annotator, annotation_id=first.pk,
                                           submission=Submission(idempotency_key="amend-2", ranking=[[i] for i in ids]))
    task.refresh_from_db()
    assert (task.taken_count, task.is_open) == (1, False)
    workflow_services.annotation_reject(project=project, annotation_id=amended.pk, reviewer=admin_user, note="lazy")
    task.refresh_from_db()
    assert (task.taken_count, task.is_open) == (0, True)
    amended.refresh_from_db()
    assert amended.status == AnnotationStatus.REJECTED and amended.reviewed_by == admin_user
    assert Annotation.objects.filter(task=task).count() == 2  # history kept


def test_gold_tasks_are_mixed_in_and_do_not_count_towards_k(project):
    set_workflow(project, gold_rate=1.0)
    normal = task_with_images(project)
    gold = task_with_images(project, gold_ranking="identity")
    u1, u2 = annotators(project, 2)
    rng = random.Random(0)
    assert queue.task_next(project=project, user=u1, rng=rng).task == gold
    assert queue.task_next(project=project, user=u2, rng=rng).task == gold  # gold goes to everyone
    gold.refresh_from_db()
    assert gold.taken_count == 0
    submit(project, u1, gold)
    assert queue.task_next(project=project, user=u1, rng=rng).task == normal


def test_a_gold_task_made_normal_again_is_not_offered_beyond_its_overlap(project):
    """Its gold answers (which never counted towards k) and leases count once it is a normal task again."""
    set_workflow(project, gold_rate=1.0, overlap=2)
    gold = task_with_images(project, gold_ranking="identity")
    u1, u2, u3, u4 = annotators(project, 4)
    for user in (u1, u2):
        assert queue.task_next(project=project, user=user).task == gold
        submit(project, user, gold)
    assert queue.task_next(project=project, user=u3).task == gold  # a third holds a lease on it
    workflow_services.task_set_gold(task=gold, ranking=None)
    gold.refresh_from_db()
    assert (gold.is_gold, gold.taken_count, gold.is_open) == (False, 3, False)
    assert queue.task_next(project=project, user=u4).task is None  # not a fourth annotator: k is 2
    # Made gold and normal again, it keeps counting; once the lease expires only the two answers count.
    TaskAssignment.objects.filter(annotator=u3).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    queue.leases_reap()
    workflow_services.task_set_gold(task=gold, ranking=[[i] for i in image_ids(gold)])
    workflow_services.task_set_gold(task=gold, ranking=None)
    gold.refresh_from_db()
    assert (gold.taken_count, gold.is_open) == (2, False)
    assert queue.task_next(project=project, user=u4).task is None


def test_task_images_name_the_id_that_is_not_a_uuid_and_store_nothing(project):
    images = images_for(project, 2)
    with pytest.raises(ApplicationError) as exc:
        workflow_services.task_create(project=project, prompt_text="a cat", created_by=None,
                                      image_ids=[images[0].pk, "not-a-uuid"])
    assert exc.value.field == "images" and exc.value.message == "Image id 'not-a-uuid' (number 2) is not a UUID."
    assert not AnnotationTask.objects.filter(project=project).exists()


def test_a_database_error_while_checking_task_images_is_not_reported_as_bad_input(project):
    """The images query failing (here: the server cancels it) raises the database's error; it used to be caught
    as "Image ids must be UUIDs." inside the transaction."""
    images = images_for(project, 2)

    def cancel_image_lookups(execute, sql, params, many, context):
        if "generation_generatedimage" in sql and "SELECT" in sql:
            raise OperationalError("canceling statement due to statement timeout")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(cancel_image_lookups), pytest.raises(OperationalError, match="statement timeout"):
        workflow_services.task_create(project=project, prompt_text="a cat", created_by=None,
                                      image_ids=[image.pk for image in images])
    assert not AnnotationTask.objects.filter(project=project).exists()


def test_prompt_import_creates_tasks_and_reports_duplicates(project, admin_user):
    Prompt.objects.create(project=project, text="old one", text_sha256=workflow_services.text_sha256("old one"))
    report = workflow_services.prompt_set_import(
        project=project, data=b"a cat\nold one\na dog\na cat\n", filename="p.txt", created_by=admin_user,
        deduplicate=True,
    )
    assert report.created == 2
    assert [(d.line, d.first_line) for d in report.duplicates] == [(2, None), (4, 1)]
    assert list(AnnotationTask.objects.filter(project=project).values_list("prompt__text", flat=True)) == [
        "a cat", "a dog"]
    assert report.prompt_set.prompt_count == 2 and report.prompt_set.duplicate_count == 2


def test_prompt_import_keeps_repeated_prompts_by_default(project, admin_user):
    Prompt.objects.create(project=project, text="old one", text_sha256=workflow_services.text_sha256("old one"))
    report = workflow_services.prompt_set_import(
        project=project, data=b"a cat\nold one\na dog\na cat\n", filename="p.txt", created_by=admin_user)
    assert report.created == 4 and report.duplicates == []
    assert list(AnnotationTask.objects.filter(project=project).values_list("prompt__text", flat=True)) == [
        "a cat", "old one", "a dog", "a cat"]
    assert Prompt.objects.filter(project=project, text="a cat").count() == 2


def test_prompt_import_with_any_error_imports_nothing(project, admin_user):
    with pytest.raises(workflow_services.PromptImportError) as exc:
        workflow_services.prompt_set_import(project=project, data=b"prompt,seed\nok,1\n,2\n", filename="p.csv",
                                            created_by=admin_user)
    assert exc.value.extra["errors"][0]["line"] == 3
    assert not Prompt.objects.exists() and not AnnotationTask.objects.exists()


def test_typed_prompt_becomes_a_task_leased_to_its_author(project, annotator):
    assignment = workflow_services.task_create_typed(project=project, user=annotator, prompt_text=" a blue cube ")
    assert assignment.task.prompt.text == "a blue cube" and assignment.task.prompt.source == "annotator"
    assert queue.task_next(project=project, user=annotator).assignment.pk == assignment.pk


def test_overlap_change_reopens_tasks(project):
    (task,) = tasks_with_images(project, 1)
    (u1,) = annotators(project, 1)
    queue.task_next(project=project, user=u1)
    task.refresh_from_db()
    assert not task.is_open
    workflow_services.project_update_settings(project=project, overlap=3)
    task.refresh_from_db()
    assert task.is_open
