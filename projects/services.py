from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core.audit import audit_record
from core.exceptions import ApplicationError
from projects.models import Project, ProjectMembership
from projects.roles import GROUP_NAMES, Role, role_permissions

# Who made a change, for the audit trail (None: trusted code, such as seeding).
Actor = AbstractBaseUser | AnonymousUser | None


@transaction.atomic
def project_create(*, name: str, description: str = "", created_by: User) -> Project:
    name = name.strip()
    if not name:
        raise ApplicationError("A project needs a name.", field="name")
    if len(name) > 200:
        raise ApplicationError("A project name is at most 200 characters.", field="name")
    project = Project.objects.create(name=name, description=description, created_by=created_by)
    _membership_create(project=project, user=created_by, role=Role.ADMIN, by=created_by)
    return project


@transaction.atomic
def membership_set(*, project: Project, user: User, role: str, by: Actor = None) -> ProjectMembership:
    """Trusted code (seeding, simulated annotators): make ``user`` a member in ``role``, no other rule;
    ``by`` did it (audited). People's changes go through :func:`membership_add`,
    :func:`membership_set_role` and :func:`membership_remove`."""
    _check_role_name(role)
    before = (ProjectMembership.objects.select_for_update().filter(project=project, user=user)
              .values_list("role", flat=True).first())
    membership, _ = ProjectMembership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    if before != role:
        audit_record(event="member.added" if before is None else "member.role_changed", instance=membership,
                     actor=by, project_id=project.pk, changes={"role": [before, role]},
                     details={"user": user.get_username()})
    return membership


# --- team management (project admins, through the Members page and the API) --------------------


def _check_role_name(role: str) -> None:
    if role not in Role.values:
        raise ApplicationError(f"Unknown role {role!r}; expected one of {', '.join(Role.values)}.", field="role")


def roles_allowed(user: User) -> list[str]:
    """The membership roles ``user``'s global group allows: a role needs every global permission its
    actions need (a Project admin may be any role, an Annotator only an annotator, an ML engineer only
    an ML engineer; a superuser any)."""
    return [role for role in Role.values if all(user.has_perm(p) for p in role_permissions(role))]


def _check_role_allowed(user: User, role: str) -> None:
    """A field error on ``role`` unless ``user``'s global group allows ``role`` (and the user is active)."""
    if not user.is_active:
        raise ApplicationError(f"{user.get_username()} is deactivated and cannot be a member.", field="user")
    allowed = roles_allowed(user)
    if role in allowed:
        return
    label = Role(role).label
    groups = sorted(user.groups.filter(name__in=GROUP_NAMES.values()).values_list("name", flat=True))
    if not allowed:
        raise ApplicationError(
            f"{user.get_username()} has no global role (group), so cannot be a member of a project; a superuser "
            "sets it in the admin.", field="role")
    raise ApplicationError(
        f"{user.get_username()} cannot have the {label} role: their global role ({', '.join(groups) or 'their permissions'}) "
        f"allows only {', '.join(Role(r).label for r in allowed)}.", field="role")


def user_find(*, identifier: str) -> User:
    """The user an admin means by ``identifier``: a username (exact, else the only case-insensitive
    match) or an email address (case-insensitive, which must name one account)."""
    identifier = identifier.strip()
    if not identifier:
        raise ApplicationError("Give the username or email address of the person to add.", field="user")
    user = User.objects.filter(username=identifier).first()
    if user is not None:
        return user
    matches = list(User.objects.filter(Q(username__iexact=identifier) | (
        Q(email__iexact=identifier) if "@" in identifier else Q(pk__in=[])))[:2])
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ApplicationError(f"More than one account matches {identifier!r}; add them by their exact username.",
                               field="user")
    raise ApplicationError(f"No user with the username or email {identifier!r}.", field="user")


def _locked_memberships(project: Project) -> dict[int, ProjectMembership]:
    """Lock the project row (every membership change in a project queues behind it, so two admins
    demoting each other at once cannot leave it with none) and return its memberships by user id."""
    Project.objects.select_for_update().filter(pk=project.pk).values_list("pk", flat=True).first()
    return {m.user_id: m for m in ProjectMembership.objects.filter(project=project).select_related("user")}


def _check_keeps_an_admin(memberships: dict[int, ProjectMembership], *, leaving: int, field: str,
                          verb: str) -> None:
    admins = [user_id for user_id, m in memberships.items() if m.role == Role.ADMIN]
    if admins == [leaving]:
        raise ApplicationError(f"You cannot {verb} the project's last admin; make another member an admin first.",
                               field=field)


@transaction.atomic
def membership_add(*, project: Project, identifier: str, role: str, by: Actor = None) -> ProjectMembership:
    """Add the user named by ``identifier`` (username or email) to ``project`` in ``role``.

    Refused, with a field error and nothing written, when no one (or more than one account) matches, the
    person is already a member, or their global group does not allow the role.
    """
    _check_role_name(role)
    user = user_find(identifier=identifier)
    memberships = _locked_memberships(project)
    existing = memberships.get(user.pk)
    if existing is not None:
        raise ApplicationError(f"{user.get_username()} is already a member (as {existing.get_role_display()}); "
                               "change their role in the list instead.", field="user")
    _check_role_allowed(user, role)
    return _membership_create(project=project, user=user, role=role, by=by)


def _membership_create(*, project: Project, user: User, role: str, by: Actor) -> ProjectMembership:
    membership = ProjectMembership.objects.create(project=project, user=user, role=role)
    audit_record(event="member.added", instance=membership, actor=by, project_id=project.pk,
                 changes={"role": [None, role]}, details={"user": user.get_username()})
    return membership


@transaction.atomic
def membership_set_role(*, project: Project, user: User, role: str, create: bool = False,
                        by: Actor = None) -> ProjectMembership:
    """Change ``user``'s role in ``project`` (with ``create``, add them when they are not a member yet).

    Refused when the user's global group does not allow ``role``, or when it would demote the last admin.
    """
    _check_role_name(role)
    memberships = _locked_memberships(project)
    membership = memberships.get(user.pk)
    if membership is None and not create:
        raise ApplicationError(f"{user.get_username()} is not a member of this project.", field="user")
    _check_role_allowed(user, role)
    if membership is None:
        return _membership_create(project=project, user=user, role=role, by=by)
    if membership.role == role:
        return membership
    if role != Role.ADMIN:
        _check_keeps_an_admin(memberships, leaving=user.pk, field="role", verb="demote")
    before, membership.role = membership.role, role
    membership.save(update_fields=["role", "updated_at"])
    audit_record(event="member.role_changed", instance=membership, actor=by, project_id=project.pk,
                 changes={"role": [before, role]}, details={"user": user.get_username()})
    return membership


@transaction.atomic
def membership_remove(*, project: Project, user: User, by: Actor = None) -> None:
    """Take ``user`` out of ``project`` (their annotations stay); never the last admin."""
    memberships = _locked_memberships(project)
    membership = memberships.get(user.pk)
    if membership is None:
        raise ApplicationError(f"{user.get_username()} is not a member of this project.", field="user")
    _check_keeps_an_admin(memberships, leaving=user.pk, field="user", verb="remove")
    audit_record(event="member.removed", instance=membership, actor=by, project_id=project.pk,
                 changes={"role": [membership.role, None]}, details={"user": user.get_username()})
    membership.delete()


@transaction.atomic
def project_set_archived(*, project: Project, archived: bool) -> Project:
    project.archived_at = timezone.now() if archived else None
    project.save(update_fields=["archived_at", "updated_at"])
    return project


@transaction.atomic
def project_update(*, project: Project, description: str | None = None) -> Project:
    """Change what a project says about itself; ``None`` leaves a field as it is."""
    if description is not None:
        project.description = description
        project.save(update_fields=["description", "updated_at"])
    return project
