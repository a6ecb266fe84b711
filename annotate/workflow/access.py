"""The annotation workflow's project loader: the project, its workflow settings and template version,
and the access decision, in one SQL statement.

The annotator loop (``tasks/next/``, ``tasks/<id>/submit/``) loads the project on every request, and
compiling this as ORM queries cost more CPU than PostgreSQL spends running it. The access part is
not written here: its columns come from :func:`projects.access.access_sql` and the decision from
:func:`projects.access.access_from_row`, the one access API (tests check it row for row).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import Http404

from annotate.models import AnnotationTemplateVersion, AssignmentStatus, ProjectWorkflow, TaskAssignment
from core import rawsql
from projects.access import access_from_row, access_sql, check_action, project_api, project_view
from projects.models import Project

AnyUser = AbstractBaseUser | AnonymousUser


def workflow_of(project: Project) -> ProjectWorkflow:
    """The project's workflow settings, template version joined (one query, then cached on the
    instance); an unsaved row of defaults when the project has none yet (reads need no row)."""
    if Project.workflow.is_cached(project):  # type: ignore[attr-defined]
        try:
            return project.workflow  # type: ignore[attr-defined,no-any-return]
        except ProjectWorkflow.DoesNotExist:  # select_related found none
            found = None
    else:
        found = (ProjectWorkflow.objects.select_related("template_version__template")
                 .filter(project_id=project.pk).first())
    workflow = found or ProjectWorkflow(project=project)
    project.workflow = workflow  # type: ignore[attr-defined]
    return workflow


def project_for_annotation(*, user: AnyUser, project_id: Any, action: str,
                           with_active_lease: bool = False) -> Project:
    """The project when ``user`` may do ``action`` in it (the rules of ``projects.access``), with
    ``project.workflow`` and its template version loaded, in one statement.

    With ``with_active_lease``, the project notes whether the user holds a lease in it (:func:`lease_known`,
    for :func:`annotate.workflow.queue.task_next`).
    """
    check_action(action)
    if not user.is_authenticated or not user.is_active:
        raise Http404("No such project")
    try:
        project_id = int(project_id)
    except (TypeError, ValueError):
        raise Http404("No such project") from None
    access, access_params = access_sql(user_id=user.pk, action=action)
    models = {"p": Project, "w": ProjectWorkflow, "tv": AnnotationTemplateVersion, "a": TaskAssignment}
    lease, lease_params = "NULL", []
    if with_active_lease:  # saves the queue a query: the caller's current lease in this project, if any
        lease = rawsql.query("(SELECT {a.pk} FROM {a} WHERE {a.project} = {p.pk} AND {a.annotator} = %s "
                             "AND {a.status} = %s LIMIT 1)", **models)
        lease_params = [user.pk, AssignmentStatus.ACTIVE.value]
    sql = (rawsql.query("SELECT {p.*}, {w.*}, {tv.*}, ", **models) + access + ", " + lease + rawsql.query(  # noqa: S608
        " FROM {p} LEFT JOIN {w} ON {w.project} = {p.pk} LEFT JOIN {tv} ON {tv.pk} = {w.template_version} "
        "WHERE {p.pk} = %s", **models))
    row = rawsql.fetchone(sql, [*access_params, *lease_params, project_id])
    if row is None:
        raise Http404("No such project")
    project_end = rawsql.width(Project)
    workflow_end = project_end + rawsql.width(ProjectWorkflow)
    version_end = workflow_end + rawsql.width(AnnotationTemplateVersion)
    project = rawsql.load(Project, row[:project_end])
    if row[project_end] is not None:
        workflow = rawsql.load(ProjectWorkflow, row[project_end:workflow_end])
        workflow.template_version = (
            rawsql.load(AnnotationTemplateVersion, row[workflow_end:version_end])
            if row[workflow_end] is not None else None
        )
    else:
        workflow = ProjectWorkflow(project=project)
    project.workflow = workflow  # type: ignore[attr-defined]
    role, perm_bits, lease_id = row[version_end:]
    if with_active_lease:
        lease_known(project, user_id=user.pk, assignment_id=lease_id)
    return access_from_row(user=user, project=project, role=role, perm_bits=perm_bits, action=action)


def lease_known(project: Project, *, user_id: Any, assignment_id: int | None) -> None:
    """Note on ``project`` (an instance loaded for one request) the id of ``user_id``'s active lease in it, or
    None when they hold none: what :func:`project_for_annotation` read, or what a service just changed (a
    submit ends the caller's lease), so the queue's next hand-out need not look it up again."""
    project.known_lease = (user_id, assignment_id)  # type: ignore[attr-defined]


def no_lease_noted(project: Project, *, user_id: Any) -> bool:
    """Whether ``project``'s note (:func:`lease_known`) says that ``user_id`` holds no active lease in it. The
    note is used up: it holds for the next hand-out only (a later one may follow other changes)."""
    return project.__dict__.pop("known_lease", None) == (user_id, None)


def workflow_view(action: str) -> Any:
    """``projects.access.project_view`` loading the project with :func:`project_for_annotation`."""
    return project_view(action, loader=project_for_annotation)


def workflow_api(action: Any, *, with_active_lease: bool = False) -> Any:
    """``projects.access.project_api`` loading the project with :func:`project_for_annotation`."""
    return project_api(action, loader=partial(project_for_annotation, with_active_lease=with_active_lease))
