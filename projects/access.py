"""Who may do what in which project: the one access API.

An action (``view``, ``manage``, ``review``, ``annotate``, ``export``, ``train``) is allowed when
the user is active, their global group grants the action's permission (``ACTION_PERMISSIONS``) and
their membership role in the project allows it (``ROLE_ACTIONS``); superusers may do everything.
Someone who may not even ``view`` a project gets a 404, so its existence is not revealed; a member
who may view it but not do the action gets a 403 (``PermissionDeniedError``). :func:`decide` is the
rule, written once; everything else here gathers its inputs:

- :func:`project_get_for_user` loads a project by id and decides, in one SQL statement;
- :func:`project_check` and :func:`user_can` decide for a project already loaded (services that
  take a ``user``, templates' "may I" flags);
- :func:`projects_for_user` lists the projects where a user may do an action, in one query;
- :func:`project_view` (HTML views) and :func:`project_api` (DRF function views) wrap a view
  taking ``project_id`` into one taking the project;
- :func:`access_sql` and :func:`access_from_row` let a hot path (the annotator loop) load the
  project together with its own columns in the same statement and still decide here.

A test (``tests/projects/test_access.py``) checks every role x action x membership state through
every one of these entry points.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any, Literal

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AnonymousUser, Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from core import rawsql
from core.exceptions import PermissionDeniedError
from projects.models import Project, ProjectMembership
from projects.roles import ACTION_PERMISSIONS, ROLE_ACTIONS, VIEW

AnyUser = User | AnonymousUser
Outcome = Literal["ok", "404", "403"]
ProjectLoader = Callable[..., Project]

# The page a member who lacks the right sees (kept at its historical template path).
FORBIDDEN_TEMPLATE = "annotate/project_forbidden.html"


def check_action(action: str) -> None:
    if action not in ACTION_PERMISSIONS:
        raise ValueError(f"unknown project action {action!r}; expected one of {', '.join(ACTION_PERMISSIONS)}")


def decide(*, is_superuser: bool, role: str | None, may_view: bool, may_act: bool, action: str) -> Outcome:
    """The rule. ``role`` is the membership role (None for non-members); ``may_view``/``may_act``
    say whether the user holds the global permissions of ``view`` and of ``action``."""
    if is_superuser:
        return "ok"
    if role is None or not may_view or "view" not in ROLE_ACTIONS[role]:
        return "404"
    if not may_act or action not in ROLE_ACTIONS[role]:
        return "403"
    return "ok"


def _raise(outcome: Outcome, *, project: Project, action: str) -> None:
    if outcome == "404":
        raise Http404("No such project")
    if outcome == "403":
        raise PermissionDeniedError(f"You may not {action} in project {project.name!r}.")


def _active_id(user: AnyUser) -> int | None:
    """The user's id when they are signed in and active, else None."""
    if user.is_authenticated and user.is_active and user.pk is not None:
        return int(user.pk)
    return None


# --- the rule over SQL (one statement) -------------------------------------------------------


# Two select-list expressions over projects aliased ``p``: the user's membership role in the project,
# and which of two permissions (view's, and the action's) the user holds directly or through a group, as
# bits (1: view, 2: the action). Both permissions in one subquery, over the user's group and own
# permissions once: planning it costs PostgreSQL about half of two separate ``EXISTS`` checks.
_ACCESS_SQL = (
    "(SELECT {m.role} FROM {m} WHERE {m.project} = {p.pk} AND {m.user} = %s), "
    "(SELECT COALESCE(MAX(CASE WHEN {ct.app_label} = %s AND {perm.codename} = %s THEN 1 ELSE 0 END) "
    "+ 2 * MAX(CASE WHEN {ct.app_label} = %s AND {perm.codename} = %s THEN 1 ELSE 0 END), 0) "
    "FROM {perm} JOIN {ct} ON {ct.pk} = {perm.content_type} "
    "WHERE ({ct.app_label}, {perm.codename}) IN ((%s, %s), (%s, %s)) AND {perm.pk} IN ("
    "SELECT {gp.permission} FROM {gp} JOIN {ug} ON {ug.group} = {gp.group} WHERE {ug.user} = %s "
    "UNION ALL SELECT {up.permission} FROM {up} WHERE {up.user} = %s))"
)


def access_sql(*, user_id: int, action: str) -> tuple[str, list[Any]]:
    """Two select-list expressions for a query over projects aliased ``p``: the user's membership role
    there and their permission bits, with their parameters. Feed both values to :func:`access_from_row`."""
    check_action(action)
    (view_app, view_code), (act_app, act_code) = (p.split(".", 1) for p in (VIEW, ACTION_PERMISSIONS[action]))
    sql = rawsql.query(_ACCESS_SQL, p=Project, m=ProjectMembership, perm=Permission, ct=ContentType,
                       gp=Group.permissions.through, ug=User.groups.through, up=User.user_permissions.through)
    return sql, [user_id, view_app, view_code, act_app, act_code, view_app, view_code, act_app, act_code,
                 user_id, user_id]


def access_from_row(*, user: AnyUser, project: Project, role: str | None, perm_bits: int | None,
                    action: str) -> Project:
    """Decide from what :func:`access_sql` selected; returns ``project`` (its user's role cached for
    :func:`user_can`) or raises ``Http404`` / ``PermissionDeniedError``."""
    bits = perm_bits or 0
    outcome = decide(is_superuser=bool(getattr(user, "is_superuser", False)), role=role, may_view=bool(bits & 1),
                     may_act=bool(bits & 2), action=action)
    _cache_role(project, user, role)
    _raise(outcome, project=project, action=action)
    return project


def project_get_for_user(*, user: AnyUser, project_id: Any, action: str) -> Project:
    """The project, in one statement, when ``user`` may do ``action`` in it.

    Anonymous and inactive users, unknown ids and non-members get ``Http404``; members without the
    right get ``PermissionDeniedError`` (a 403 in pages and in the API).
    """
    check_action(action)
    user_id = _active_id(user)
    if user_id is None:
        raise Http404("No such project")
    try:
        project_id = int(project_id)
    except (TypeError, ValueError):
        raise Http404("No such project") from None
    access, params = access_sql(user_id=user_id, action=action)
    row = rawsql.fetchone(
        rawsql.query("SELECT {p.*}, ", p=Project) + access + rawsql.query(" FROM {p} WHERE {p.pk} = %s", p=Project),
        [*params, project_id])
    if row is None:
        raise Http404("No such project")
    width = rawsql.width(Project)
    role, bits = row[width:]
    return access_from_row(user=user, project=rawsql.load(Project, row[:width]), role=role, perm_bits=bits,
                           action=action)


# --- the rule over the ORM (a project already loaded) ----------------------------------------


def _cache_role(project: Project, user: AnyUser, role: str | None) -> None:
    cached: dict[Any, str | None] = getattr(project, "_membership_roles", None) or {}
    cached[user.pk] = role
    project._membership_roles = cached  # type: ignore[attr-defined]


def membership_role(*, user: AnyUser, project: Project) -> str | None:
    """The user's role in ``project`` (None for non-members); cached on the project instance."""
    if not user.is_authenticated:
        return None
    cached = getattr(project, "_membership_roles", None)
    if cached is not None and user.pk in cached:
        return cached[user.pk]
    role = ProjectMembership.objects.filter(project=project, user_id=user.pk).values_list("role", flat=True).first()
    _cache_role(project, user, role)
    return role


def outcome_for(*, user: AnyUser, project: Project, action: str) -> Outcome:
    check_action(action)
    if _active_id(user) is None:
        return "404"
    if getattr(user, "is_superuser", False):
        return "ok"
    return decide(is_superuser=False, role=membership_role(user=user, project=project),
                  may_view=user.has_perm(VIEW), may_act=user.has_perm(ACTION_PERMISSIONS[action]), action=action)


def user_can(*, user: AnyUser, project: Project, action: str) -> bool:
    """Whether ``user`` may do ``action`` in ``project`` (for links and buttons; views use the checks)."""
    return outcome_for(user=user, project=project, action=action) == "ok"


def project_check(*, user: AnyUser, project: Project, action: str) -> None:
    """``Http404`` / ``PermissionDeniedError`` unless ``user`` may do ``action`` in the loaded ``project``."""
    _raise(outcome_for(user=user, project=project, action=action), project=project, action=action)


def projects_for_user(*, user: AnyUser, action: str = "view", include_archived: bool = False) -> QuerySet[Project]:
    """The projects where ``user`` may do ``action`` (every project for a superuser): one query."""
    check_action(action)
    user_id = _active_id(user)
    if user_id is None:
        return Project.objects.none()
    if getattr(user, "is_superuser", False):
        queryset = Project.objects.all()
    elif not (user.has_perm(VIEW) and user.has_perm(ACTION_PERMISSIONS[action])):
        return Project.objects.none()
    else:
        roles = [role for role, actions in ROLE_ACTIONS.items() if action in actions and "view" in actions]
        queryset = Project.objects.filter(memberships__user_id=user_id, memberships__role__in=roles)
    if not include_archived:
        queryset = queryset.filter(archived_at__isnull=True)
    return queryset.select_related("created_by").order_by("-created_at")


# --- views --------------------------------------------------------------------------------------


def project_view(action: str, *, loader: ProjectLoader = project_get_for_user) -> Callable[..., Any]:
    """For HTML views taking ``project_id``: login required, then the view gets the project instead.

    Non-members get a 404; members without the right the "not allowed" page with a 403. ``loader``
    (same keywords as :func:`project_get_for_user`) may load more in the same statement.
    """
    check_action(action)

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @wraps(view)
        def wrapped(request: HttpRequest, project_id: int, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                project = loader(user=request.user, project_id=project_id, action=action)
            except PermissionDeniedError as exc:
                return render(request, FORBIDDEN_TEMPLATE, {"message": exc.message}, status=403)
            return view(request, project, *args, **kwargs)

        return wrapped

    return decorator


def project_api(action: str | Mapping[str, str], *, loader: ProjectLoader = project_get_for_user
                ) -> Callable[..., Any]:
    """For DRF function views taking ``project_id`` (inside ``@api_view``): the view gets the project.

    ``action`` may map HTTP methods to actions (``{"GET": "review", "POST": "manage"}``). Non-members
    get a 404 and members without the right a 403 with the reason (``core.api.exception_handler``).
    """
    for name in [action] if isinstance(action, str) else action.values():
        check_action(name)

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapped(request: Any, project_id: int, *args: Any, **kwargs: Any) -> Any:
            wanted = action if isinstance(action, str) else action[request.method]
            return view(request, loader(user=request.user, project_id=project_id, action=wanted), *args, **kwargs)

        return wrapped

    return decorator
