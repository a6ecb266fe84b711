"""Plain SQL for the few hot paths where building and compiling an ORM query costs more than running it.

The annotator loop (``POST tasks/next/`` then ``tasks/<id>/submit/``) and API token
authentication run a handful of small statements per request; the ORM spends several
milliseconds of CPU per request turning querysets into SQL, more than PostgreSQL spends
executing them. Their callers (``projects.access``, ``annotate.workflow.access``,
``annotate.workflow.queue``, ``annotate.workflow.selectors``, ``annotate.workflow.services``,
``core.authentication``, ``projects.webhooks.events``) write those few statements as parameterised
SQL with these helpers instead (every value a bound parameter; table and column names from model
metadata), and the rows are turned back into model instances with
the converters the ORM uses, so callers get the same Python values (aware datetimes, UUIDs,
decoded JSON, booleans) on PostgreSQL and on SQLite.

On PostgreSQL the statements run through these helpers are prepared once per connection (see
``_cursor``; ``DATABASE_PREPARED_STATEMENTS``), so PostgreSQL parses and plans each only once.

Everything else keeps the ORM: use these helpers only where a profile shows the ORM's cost.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.models import Field, Model

_server_binding: Any  # psycopg 3: Django's cursor class that binds parameters on the server
try:
    from django.db.backends.postgresql.base import ServerBindingCursor as _server_binding
except (ImportError, ImproperlyConfigured):  # psycopg2, or no PostgreSQL driver at all
    _server_binding = None

M = TypeVar("M", bound=Model)


# SQL text and converters depend only on the model and the database vendor: built once each.


def table(model: type[Model]) -> str:
    """The model's table name, quoted for the current database."""
    return _table(model, connection.vendor)


@lru_cache(maxsize=256)
def _table(model: type[Model], vendor: str) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _quoted(field: Field) -> str:
    if field.column is None:
        raise TypeError(f"{field} has no column")
    return connection.ops.quote_name(field.column)


def column(model: type[Model], field_name: str) -> str:
    """One field's column name, quoted (``"pk"`` names the primary key)."""
    return _column(model, field_name, connection.vendor)


@lru_cache(maxsize=256)
def _column(model: type[Model], field_name: str, vendor: str) -> str:
    return _quoted(model._meta.pk if field_name == "pk" else _field(model, field_name))


def columns(model: type[Model], alias: str) -> str:
    """``alias."col", ...`` for every concrete field of ``model``, in the order :func:`load` expects."""
    return _columns(model, alias, connection.vendor)


@lru_cache(maxsize=256)
def _columns(model: type[Model], alias: str, vendor: str) -> str:
    return ", ".join(f"{alias}.{_quoted(f)}" for f in model._meta.concrete_fields)


def query(template: str, **aliases: type[Model]) -> str:
    """SQL text from a template that names tables and columns through model metadata, by alias.

    With ``t=AnnotationTask``: ``{t}`` is the table followed by its alias (``"annotate_annotationtask" t``),
    ``{t.*}`` every concrete column in :func:`load` order, ``{t.project}`` one column (``t."project_id"``; a
    field name or attname, ``pk`` for the primary key). Values stay ``%s`` parameters. The text is built
    once per template, models and database vendor.
    """
    return _query(template, tuple(sorted(aliases.items(), key=lambda item: item[0])), connection.vendor)


_PLACE = re.compile(r"\{(\w+)(?:\.(\w+|\*))?\}")


@lru_cache(maxsize=256)
def _query(template: str, aliases: tuple[tuple[str, type[Model]], ...], vendor: str) -> str:
    models = dict(aliases)

    def expand(match: re.Match[str]) -> str:
        alias, attr = match.group(1), match.group(2)
        model = models[alias]
        if attr is None:
            return f"{table(model)} {alias}"
        if attr == "*":
            return columns(model, alias)
        return f"{alias}.{column(model, attr)}"

    return _PLACE.sub(expand, template)


def width(model: type[Model]) -> int:
    """How many values :func:`columns` selects (to slice a row that joins several models)."""
    return len(model._meta.concrete_fields)


Converter = Callable[[Any, Any, Any], Any]


@lru_cache(maxsize=1024)
def _converters(field: Field, vendor: str) -> tuple[Any, tuple[Converter, ...]]:
    """The expression and the converters the ORM applies to this field's column on ``vendor``."""
    col = field.get_col(field.model._meta.db_table)
    return col, tuple(connection.ops.get_db_converters(col) + field.get_db_converters(connection))


def _from_db(field: Field, value: Any, vendor: str) -> Any:
    """``value`` as the ORM would return it (the backend's converters, then the field's)."""
    col, converters = _converters(field, vendor)
    for converter in converters:
        value = converter(value, col, connection)
    return value


def load(model: type[M], values: Sequence[Any]) -> M:
    """A ``model`` instance from the values :func:`columns` selected, as if the ORM had loaded it."""
    fields, vendor = model._meta.concrete_fields, connection.vendor
    return model.from_db(connection.alias, [f.attname for f in fields],
                         [_from_db(f, v, vendor) for f, v in zip(fields, values, strict=True)])


def _field(model: type[Model], name: str) -> Field:
    """A concrete field by name or attname (``task`` or ``task_id``)."""
    field = model._meta.get_field(name)
    if not isinstance(field, Field):
        raise TypeError(f"{model.__name__}.{name} is not a concrete field")
    return field


def value(model: type[Model], field_name: str, raw: Any) -> Any:
    """One column's raw value (from a join or a subquery) converted like the ORM converts that field."""
    return _from_db(_field(model, field_name), raw, connection.vendor)


def param(model: type[Model], field_name: str, python_value: Any) -> Any:
    """``python_value`` prepared as a bound parameter for that field (datetimes, JSON, UUIDs)."""
    return _field(model, field_name).get_db_prep_save(python_value, connection)


def _cursor() -> Any:
    """A cursor for these statements: on PostgreSQL (psycopg 3) one that binds parameters on the server, so
    each statement is prepared once per connection and later runs skip PostgreSQL's parse and plan (before,
    they cost the server about as much CPU per annotator-loop submit as the Django code spent;
    ``bench/annotation_submit_cpu.py`` measures both). Django's own cursors bind on the client and never prepare (a
    transaction-mode connection pooler before PgBouncer 1.21 cannot keep prepared statements):
    ``DATABASE_PREPARED_STATEMENTS=false`` gives these statements the same cursor as the ORM's.

    It is Django's cursor wrapper around it all the same: execute wrappers and ``django.db`` exceptions
    (``IntegrityError``) behave as with ``connection.cursor()``. While queries are logged (``DEBUG``, a
    test's ``CaptureQueriesContext``) these statements take Django's own cursor, whose log shows them with
    their values (a prepared one's would show nothing).
    """
    if (connection.vendor != "postgresql" or not settings.RAWSQL_PREPARED_STATEMENTS or _server_binding is None
            or connection.queries_logged):
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:  # Django turns preparing off; only server-binding cursors prepare
        raw.prepare_threshold = 1
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        return connection.make_cursor(_server_binding(raw))


def fetchone(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    with _cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def fetchall(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    with _cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def execute(sql: str, params: Sequence[Any]) -> int:
    """Run a write; returns the number of rows it changed."""
    with _cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


@lru_cache(maxsize=64)
def _insert_sql(model: type[Model], vendor: str) -> tuple[str, tuple[Field, ...]]:
    fields = tuple(f for f in model._meta.concrete_fields if f is not model._meta.auto_field)
    names = ", ".join(_quoted(f) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    sql = (f"INSERT INTO {table(model)} ({names}) VALUES ({placeholders}) "  # noqa: S608 - names only
           f"RETURNING {column(model, 'pk')}")
    return sql, fields


def insert(model: type[M], **values: Any) -> M:
    """``model(**values)`` inserted in one statement; returns the instance with its new primary key.

    Like ``Model.objects.create`` (field defaults, ``auto_now``/``auto_now_add``) but without
    compiling a query, and, like ``bulk_create``, without ``save()`` or signals. ``RETURNING``
    works on PostgreSQL and SQLite 3.35+.
    """
    instance = model(**values)
    sql, fields = _insert_sql(model, connection.vendor)
    row = fetchone(sql, [f.get_db_prep_save(f.pre_save(instance, True), connection) for f in fields])
    if row is None:
        raise RuntimeError(f"INSERT INTO {model._meta.db_table} returned no row")
    instance.pk = row[0]
    instance._state.adding = False
    instance._state.db = connection.alias
    return instance


def for_update(alias: str, *, skip_locked: bool = False) -> str:
    """``FOR UPDATE [OF alias] [SKIP LOCKED]`` where the database has row locks, else ``""``.

    SQLite has none (its transactions take the whole database), which is also what the ORM's
    ``select_for_update`` does there: nothing.
    """
    features = connection.features
    if not features.has_select_for_update:
        return ""
    clause = " FOR UPDATE"
    if features.has_select_for_update_of:
        clause += f" OF {alias}"
    if skip_locked and features.has_select_for_update_skip_locked:
        clause += " SKIP LOCKED"
    return clause
