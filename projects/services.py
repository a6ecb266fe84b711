from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from core.audit import audit_record
from core.exceptions import ApplicationError
from projects.models import Project, ProjectMembership
from projects.roles import Role


@transaction.atomic
def project_create(*, name: str, description: str = "", created_by: User) -> Project:
    name = name.strip()
    if not name:
        raise ApplicationError("A project needs a name.", field="name")
    if len(name) > 200:
        raise ApplicationError("A project name is at most 200 characters.", field="name")
    project = Project.objects.create(name=name, description=description, created_by=created_by)
    membership = ProjectMembership.objects.create(project=project, user=created_by, role=Role.ADMIN)
    audit_record(event="member.added", instance=membership, actor=created_by, project_id=project.pk,
                 changes={"role": [None, Role.ADMIN.value]}, details={"user": created_by.get_username()})
    return project


@transaction.atomic
def membership_set(*, project: Project, user: User, role: str, by: User | None = None) -> ProjectMembership:
    """Make ``user`` a member of ``project`` in ``role`` (or change their role); ``by`` did it (audited)."""
    if role not in Role.values:
        raise ApplicationError(f"Unknown role {role!r}; expected one of {', '.join(Role.values)}.", field="role")
    before = (ProjectMembership.objects.select_for_update().filter(project=project, user=user)
              .values_list("role", flat=True).first())
    membership, _ = ProjectMembership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    if before != role:
        audit_record(event="member.added" if before is None else "member.role_changed", instance=membership,
                     actor=by, project_id=project.pk, changes={"role": [before, role]},
                     details={"user": user.get_username()})
    return membership


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
