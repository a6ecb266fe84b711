"""A project whose review list exercises every filter: answered, disagreeing, rejected, unanswered and gold tasks."""

from __future__ import annotations

from dataclasses import dataclass

from annotate.models import Annotation, AnnotationTask
from annotate.workflow import queue
from annotate.workflow import services as workflow_services
from annotate.workflow.services import Submission
from projects.roles import Role
from tests.annotate.factories_workflow import set_workflow, task_with_images
from tests.factories import MembershipFactory, UserFactory


@dataclass
class ReviewProject:
    agreed: AnnotationTask  # both annotators rank it alike (disagreement 0)
    opposed: AnnotationTask  # the second reverses the first (disagreement 1)
    rejected: AnnotationTask  # anna's only answer, rejected in review
    untouched: AnnotationTask  # nobody answered
    slight: AnnotationTask  # the second swaps the last two (disagreement 1/6)
    gold: AnnotationTask  # gold, unanswered
    second: object  # the second annotator (bob)


def build_review_project(project, admin_user, annotator, *, store: bool = False) -> ReviewProject:
    set_workflow(project, overlap=2)
    tasks = [task_with_images(project, prompt=f"a review shape {name}", store=store)
             for name in ("agreed", "opposed", "rejected", "untouched", "slight")]
    agreed, opposed, rejected, untouched, slight = tasks
    bob = UserFactory(username="bob-annotator", role=Role.ANNOTATOR)
    MembershipFactory(project=project, user=bob, role=Role.ANNOTATOR)

    def ids(task):
        return [str(pk) for pk in task.task_images.order_by("position").values_list("image_id", flat=True)]

    plans = {
        annotator: {agreed.pk: ids(agreed), opposed.pk: ids(opposed), rejected.pk: ids(rejected),
                    slight.pk: ids(slight)},
        bob: {agreed.pk: ids(agreed), opposed.pk: ids(opposed)[::-1],
              slight.pk: ids(slight)[:2] + ids(slight)[2:][::-1]},
    }
    for user, plan in plans.items():
        while (handout := queue.task_next(project=project, user=user)).task is not None:
            order = plan.get(handout.task.pk)
            if order is None:
                queue.assignment_skip(project=project, user=user, task_id=handout.task.pk, reason="not mine")
                continue
            workflow_services.annotation_submit(project=project, user=user, task_id=handout.task.pk,
                                                submission=Submission(idempotency_key=f"{user.pk}-{handout.task.pk}",
                                                                      ranking=[[i] for i in order]))
    workflow_services.annotation_reject(
        project=project, annotation_id=Annotation.objects.get(task=rejected, annotator=annotator).pk,
        reviewer=admin_user, note="sloppy")
    gold = task_with_images(project, prompt="a review shape gold", store=store, gold_ranking="identity")
    return ReviewProject(agreed=agreed, opposed=opposed, rejected=rejected, untouched=untouched, slight=slight,
                         gold=gold, second=bob)


def answer_every_task(project, users, *, reverse_for=None) -> None:
    """Each user submits every task still handed to them (images in stored order; ``reverse_for`` reverses)."""
    for user in users:
        while (handout := queue.task_next(project=project, user=user)).task is not None:
            order = [str(pk) for pk in handout.task.task_images.order_by("position").values_list("image_id", flat=True)]
            if user == reverse_for:
                order.reverse()
            workflow_services.annotation_submit(project=project, user=user, task_id=handout.task.pk,
                                                submission=Submission(idempotency_key=f"all-{user.pk}-{handout.task.pk}",
                                                                      ranking=[[i] for i in order]))
