"""The annotator page (htmx fragment and full page, no-JS submit with PRG), uploads, settings, review."""

from __future__ import annotations

from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from annotate.models import Annotation, AnnotationStatus, AnnotationTask, ProjectWorkflow
from annotate.workflow import queue
from annotate.workflow import services as workflow_services
from annotate.workflow.services import Submission
from tests.annotate.factories_workflow import task_with_images, tasks_with_images
from tests.factories import PASSWORD

HX = {"HTTP_HX_REQUEST": "true"}


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)


def image_ids(task):
    return [str(pk) for pk in task.task_images.order_by("position").values_list("image_id", flat=True)]


def form_for(task, order, key=None, **extra):
    ids = image_ids(task)
    data = {f"ranking.rank.{ids[i]}": str(rank) for rank, i in enumerate(order, start=1)}
    data["idempotency_key"] = key or f"form-{task.pk}"
    data.update(extra)
    return data


def test_annotator_page_full_and_fragment(client, project, annotator):
    task = task_with_images(project, prompt="<script>alert('x')</script> a red square")
    login(client, annotator)
    url = reverse("annotate:task_annotate", args=[project.pk])
    page = client.get(url)
    html = page.content.decode()
    assert page.status_code == 200 and "<html" in html and "js/rank.js" in html
    assert "<script>alert(" not in html and "&lt;script&gt;alert(" in html  # the prompt is escaped
    assert f'action="{reverse("annotate:task_submit", args=[project.pk, task.pk])}"' in html
    assert "hx-post=" in html and 'name="idempotency_key"' in html
    assert "Done <strong data-done>0</strong>" in html and "Enter" in html  # progress and shortcuts
    for image in image_ids(task):
        assert f'name="ranking.rank.{image}"' in html
    fragment = client.get(url, **HX).content.decode()
    assert "<html" not in fragment and 'id="task-region"' not in fragment and "data-rank-form" in fragment


def test_plain_post_submit_redirects_and_stores_once(client, project, annotator):
    task, second = tasks_with_images(project, 2)
    login(client, annotator)
    client.get(reverse("annotate:task_annotate", args=[project.pk]))
    submit = reverse("annotate:task_submit", args=[project.pk, task.pk])
    data = form_for(task, [2, 0, 1, 3], rationale="C is best")
    response = client.post(submit, data)
    assert response.status_code == 303 and response["Location"] == reverse("annotate:task_annotate",
                                                                           args=[project.pk])
    again = client.post(submit, data)  # a double click
    assert again.status_code == 303
    (annotation,) = Annotation.objects.all()
    ids = image_ids(task)
    assert annotation.ranking == [[ids[2]], [ids[0]], [ids[1]], [ids[3]]]
    assert annotation.rationale == "C is best" and annotation.answers["rationale"] == "C is best"
    assert second.prompt.text in client.get(response["Location"]).content.decode()


def test_htmx_submit_answers_with_the_next_task(client, project, annotator):
    task, second = tasks_with_images(project, 2)
    login(client, annotator)
    client.get(reverse("annotate:task_annotate", args=[project.pk]))
    response = client.post(reverse("annotate:task_submit", args=[project.pk, task.pk]),
                           form_for(task, [0, 1, 2, 3]), **HX)
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert second.prompt.text in html and "Done <strong data-done>1</strong>" in html
    assert reverse("annotate:task_submit", args=[project.pk, second.pk]) in html


def test_bad_form_submit_shows_the_error_and_keeps_the_task(client, project, annotator):
    task = task_with_images(project)
    login(client, annotator)
    client.get(reverse("annotate:task_annotate", args=[project.pk]))
    response = client.post(reverse("annotate:task_submit", args=[project.pk, task.pk]),
                           form_for(task, [0, 1]), **HX)
    assert response.status_code == 400
    assert "rank every image" in response.content.decode()
    assert not Annotation.objects.exists()


def test_skip_with_reason(client, project, annotator):
    task, second = tasks_with_images(project, 2)
    login(client, annotator)
    client.get(reverse("annotate:task_annotate", args=[project.pk]))
    response = client.post(reverse("annotate:task_skip", args=[project.pk, task.pk]), {"reason": "broken"})
    assert response.status_code == 303
    assert second.prompt.text in client.get(response["Location"]).content.decode()


def test_outsiders_get_404_and_ml_engineers_403(client, project, other_project, annotator, ml_engineer):
    task = task_with_images(other_project)
    login(client, annotator)
    for url in (reverse("annotate:task_annotate", args=[other_project.pk]),
                reverse("annotate:review_tasks", args=[other_project.pk]),
                reverse("annotate:review_mine", args=[other_project.pk]),
                reverse("annotate:promptset_list", args=[other_project.pk])):
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("annotate:task_submit", args=[other_project.pk, task.pk]),
                       form_for(task, [0, 1, 2, 3])).status_code == 404
    assert client.get(reverse("annotate:review_tasks", args=[project.pk])).status_code == 403
    login(client, ml_engineer)
    assert client.get(reverse("annotate:task_annotate", args=[project.pk])).status_code == 403


def test_prompt_upload_page_reports_line_errors_and_duplicates(client, project, admin_user):
    login(client, admin_user)
    url = reverse("annotate:promptset_list", args=[project.pk])
    bad = SimpleUploadedFile("p.csv", b"prompt,seed\nok,1\nfine,x\n")
    response = client.post(url, {"file": bad})
    assert response.status_code == 400 and "Line 3: seed" in response.content.decode()
    good = SimpleUploadedFile("p.txt", b"<b>bold</b> cat\ndog\ndog\n")
    response = client.post(url, {"file": good, "deduplicate": "on"})
    assert response.status_code == 303
    html = client.get(url).content.decode()
    assert "Imported 2 prompts" in html and "Line 3" in html and "repeats line 2" in html
    assert AnnotationTask.objects.filter(project=project).count() == 2


def test_settings_page_saves_and_archives(client, project, admin_user, annotator):
    login(client, admin_user)
    url = reverse("annotate:project_settings", args=[project.pk])
    response = client.post(url, {"overlap": "3", "images_per_task": "4", "task_order": "random", "gold_rate": "0.1",
                                 "lease_seconds": "300", "instructions": "Be quick"})
    assert response.status_code == 303
    workflow = ProjectWorkflow.objects.get(project=project)
    assert (workflow.overlap, workflow.task_order, workflow.gold_rate, workflow.instructions) == (3, "random", 0.1,
                                                                                                  "Be quick")
    assert client.post(url, {"overlap": "0"}).status_code == 400
    client.post(url, {"action": "archive"})
    project.refresh_from_db()
    assert project.is_archived
    login(client, annotator)
    assert client.get(url).status_code == 403


def test_review_page_and_stats_with_fixed_query_count(client, project, admin_user, annotator,
                                                      django_assert_max_num_queries):
    tasks = tasks_with_images(project, 3)
    for task in tasks:
        queue.task_next(project=project, user=annotator)
        workflow_services.annotation_submit(project=project, user=annotator, task_id=task.pk, submission=Submission(
            idempotency_key=f"k{task.pk}", ranking=[[i] for i in image_ids(task)], rationale="<i>why</i>"))
    login(client, admin_user)
    url = reverse("annotate:review_tasks", args=[project.pk])
    with django_assert_max_num_queries(12):
        html = client.get(url).content.decode()
    assert html.count('data-annotator="anna-annotator"') == 3 and "&lt;i&gt;why&lt;/i&gt;" in html
    tasks_with_images(project, 10)
    with django_assert_max_num_queries(12):
        client.get(url)
    annotation = Annotation.objects.first()
    response = client.post(reverse("annotate:review_reject", args=[project.pk, annotation.pk]), {"note": "bad"})
    assert response.status_code == 303
    annotation.refresh_from_db()
    assert annotation.status == AnnotationStatus.REJECTED
    stats = client.get(reverse("annotate:review_stats", args=[project.pk])).content.decode()
    assert 'data-annotator="anna-annotator"' in stats and "Kendall" in stats


def test_own_answers_can_be_amended_keeping_history(client, project, annotator):
    task = task_with_images(project)
    queue.task_next(project=project, user=annotator)
    first, _ = workflow_services.annotation_submit(project=project, user=annotator, task_id=task.pk,
                                                   submission=Submission(idempotency_key="a",
                                                                         ranking=[[i] for i in image_ids(task)]))
    login(client, annotator)
    mine = client.get(reverse("annotate:review_mine", args=[project.pk])).content.decode()
    assert reverse("annotate:review_amend", args=[project.pk, first.pk]) in mine
    url = reverse("annotate:review_amend", args=[project.pk, first.pk])
    assert client.get(url).status_code == 200
    response = client.post(url, form_for(task, [3, 2, 1, 0], key="amend-x"))
    assert response.status_code == 303
    assert Annotation.objects.filter(task=task).count() == 2
    assert Annotation.objects.get(status=AnnotationStatus.SUBMITTED).supersedes_id == first.pk


def test_generate_button_polls_the_job_whose_images_join_the_task_when_the_worker_finishes_it(
        client, project, annotator):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from generation import services as generation_services
    from generation.models import GenerationJob
    from tests.annotate.factories_workflow import model_version, png

    project.model_versions.add(model_version())
    task = workflow_services.task_create(project=project, prompt_text="a blue cube", created_by=None)
    login(client, annotator)
    page = client.get(reverse("annotate:task_annotate", args=[project.pk])).content.decode()
    generate = reverse("annotate:task_generate", args=[project.pk, task.pk])
    assert f'action="{generate}"' in page
    response = client.post(generate, **HX)
    assert response.status_code == 200, response.content
    job = GenerationJob.objects.get(project=project, created_by=annotator)
    poll = reverse("annotate:task_generation", args=[project.pk, task.pk, job.pk])
    assert 'hx-trigger="every 200ms"' in response.content.decode() and poll in response.content.decode()
    assert client.post(generate, **HX).status_code == 200  # a double click: the same job
    assert GenerationJob.objects.filter(created_by=annotator).count() == 1
    assert client.get(poll, **HX).status_code == 200 and image_ids(task) == []  # still running
    # The worker claims the job and stores its images, the last store marking it succeeded: that
    # service attaches them to the task, in its transaction (the same one simulated annotators use).
    claim = generation_services.generation_jobs_claim(job_id=job.pk, worker="test-worker", batch_limit=8)
    (claimed,) = claim.jobs
    made = generation_services.generated_images_store(token=claim.token, runtime={}, finish=True, images=[
        generation_services.ImageToStore(job=claimed, index=i, seed=seed, png=png(i), width=16, height=16,
                                         generation_seconds=0.01, batch_size=4)
        for i, seed in enumerate(claimed.seeds)])
    assert image_ids(task) == [str(image.pk) for image in made]
    with CaptureQueriesContext(connection) as queries:
        done = client.get(poll, **HX)
    assert done.status_code == 286 and done["HX-Retarget"] == "#task-region" and done["HX-Reswap"] == "innerHTML"
    fragment = done.content.decode()  # the task with its images to rank, in place of the whole task region
    assert "<html" not in fragment and all(f'name="ranking.rank.{i}"' in fragment for i in image_ids(task))
    writes = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]
    assert writes == []  # the poll only reads
    assert image_ids(task) == [str(image.pk) for image in made]
    assert "ranking.rank." in client.get(reverse("annotate:task_annotate", args=[project.pk])).content.decode()
