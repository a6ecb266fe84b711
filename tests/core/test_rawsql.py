"""core.rawsql gives back what the ORM would: converted values, defaults filled in, row locks where they exist."""

from __future__ import annotations

import uuid

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotate.models import AnnotationTask, Prompt, TaskAssignment
from core import rawsql
from tests.annotate.factories_workflow import task_with_images
from tests.factories import ProjectFactory, UserFactory


@pytest.mark.django_db
def test_load_converts_like_the_orm():
    task = task_with_images(ProjectFactory(), gold_ranking="identity")
    row = rawsql.fetchone(f"SELECT {rawsql.columns(AnnotationTask, 't')} FROM {rawsql.table(AnnotationTask)} t "  # noqa: S608
                          "WHERE t.id = %s", [task.pk])
    loaded = rawsql.load(AnnotationTask, row)
    orm = AnnotationTask.objects.get(pk=task.pk)
    assert {f.attname: getattr(loaded, f.attname) for f in AnnotationTask._meta.concrete_fields} == {
        f.attname: getattr(orm, f.attname) for f in AnnotationTask._meta.concrete_fields}
    assert loaded.gold_ranking == [[str(i)] for i in task.task_images.order_by("position").values_list(
        "image_id", flat=True)]
    assert loaded.created_at.tzinfo is not None and loaded.is_gold is True
    assert not loaded._state.adding
    images = task.task_images.model
    image_id = rawsql.fetchone(f"SELECT image_id FROM {rawsql.table(images)} WHERE task_id = %s", [task.pk])[0]  # noqa: S608
    assert isinstance(rawsql.value(images, "image", image_id), uuid.UUID)


@pytest.mark.django_db
def test_insert_fills_defaults_and_timestamps_and_returns_the_key():
    task = task_with_images(ProjectFactory())
    user = UserFactory()
    before = timezone.now()
    assignment = rawsql.insert(TaskAssignment, task=task, project=task.project, annotator=user,
                               template_version=None, lease_expires_at=before)
    stored = TaskAssignment.objects.get(pk=assignment.pk)
    assert stored.status == "active" and stored.skip_reason == "" and stored.finished_at is None
    assert stored.created_at >= before and stored.created_at == assignment.created_at
    assert assignment.task is task and not assignment._state.adding


def test_for_update_matches_the_database():
    clause = rawsql.for_update("t", skip_locked=True)
    if connection.vendor == "postgresql":
        assert clause == " FOR UPDATE OF t SKIP LOCKED"
    elif connection.vendor == "sqlite":
        assert clause == ""


@pytest.mark.django_db
def test_every_value_is_a_bound_parameter():
    text = "it's a \"quoted\" prompt; DROP TABLE x; --"
    task = task_with_images(ProjectFactory(), prompt=text)
    row = rawsql.fetchone(f"SELECT p.id FROM {rawsql.table(Prompt)} p WHERE p.text = %s", [text])  # noqa: S608
    assert row == (task.prompt_id,)


def test_query_names_tables_and_columns_from_model_metadata(db):
    sql = rawsql.query("SELECT {t.*}, {p.text} FROM {t} JOIN {p} ON {p.pk} = {t.prompt} WHERE {t.project} = %s",
                       t=AnnotationTask, p=Prompt)
    quote = connection.ops.quote_name
    assert sql == (f"SELECT {rawsql.columns(AnnotationTask, 't')}, p.{quote('text')} "  # noqa: S608 - expected text
                   f"FROM {quote('annotate_annotationtask')} t JOIN {quote('annotate_prompt')} p "
                   f"ON p.{quote('id')} = t.{quote('prompt_id')} WHERE t.{quote('project_id')} = %s")
    with pytest.raises(KeyError):
        rawsql.query("SELECT {x.pk} FROM {t}", t=AnnotationTask)  # an alias nobody bound


def _prepared_statements() -> list[str]:
    with connection.cursor() as cursor:  # Django's own cursor: binds on the client, never prepares
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [statement for (statement,) in cursor.fetchall()]


@pytest.mark.django_db
def test_statements_are_prepared_once_per_connection_on_postgresql(settings):
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    project = ProjectFactory()
    sql = rawsql.query("SELECT {t.pk} FROM {t} WHERE {t.project} = %s", t=AnnotationTask)
    seen = []

    def wrapper(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):  # counted like any statement (the loop bench counts so)
        assert rawsql.fetchone(sql, [project.pk]) is None
        assert rawsql.fetchall(sql, [project.pk]) == []
    assert seen == [sql, sql]
    assert [s for s in _prepared_statements() if "annotate_annotationtask" in s] == [sql.replace("%s", "$1")]
    # while queries are logged, they take Django's cursor, and the log shows them with their values
    with CaptureQueriesContext(connection) as logged:
        assert rawsql.fetchone(sql, [project.pk]) is None
    assert [q["sql"] for q in logged.captured_queries] == [sql % project.pk]
    # the ORM's statements stay unprepared (they change with every queryset)
    assert list(AnnotationTask.objects.filter(project=project)) == []
    assert not [s for s in _prepared_statements() if s.startswith('SELECT "annotate_annotationtask"')]

    settings.RAWSQL_PREPARED_STATEMENTS = False
    other = rawsql.query("SELECT {p.pk} FROM {p} WHERE {p.text} = %s", p=Prompt)
    assert rawsql.fetchone(other, ["nothing"]) is None
    assert not [s for s in _prepared_statements() if "annotate_prompt" in s]


@pytest.mark.django_db
def test_a_prepared_statement_raises_djangos_errors():
    project = ProjectFactory()
    task, other = task_with_images(project), task_with_images(project)
    values = {"task": task, "project": project, "annotator": UserFactory(), "template_version": None,
              "lease_expires_at": timezone.now()}
    rawsql.insert(TaskAssignment, **values)
    rawsql.insert(TaskAssignment, **{**values, "task": other, "status": "expired"})  # the prepared insert again
    with pytest.raises(IntegrityError), transaction.atomic():  # once per task and annotator
        rawsql.insert(TaskAssignment, **{**values, "status": "skipped"})
    assert TaskAssignment.objects.filter(project=project).count() == 2
