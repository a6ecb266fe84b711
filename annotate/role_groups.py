"""Keep the three role groups and their permissions as core/roles.py says.

Run by the data migration ``0002_roles`` and again after every ``migrate`` (and after the
test runner flushes the database), so new permissions reach the groups without a hand edit.
"""

from __future__ import annotations

from typing import Any

from core.roles import GROUP_NAMES, GROUP_PERMISSIONS


def sync_role_groups(*, group_model: Any, permission_model: Any) -> None:
    for role, group_name in GROUP_NAMES.items():
        group, _ = group_model.objects.get_or_create(name=group_name)
        wanted = [tuple(dotted.split(".")) for dotted in GROUP_PERMISSIONS[role]]
        perms = [
            permission_model.objects.get(content_type__app_label=app_label, codename=codename)
            for app_label, codename in wanted
        ]
        group.permissions.set(perms)


def sync_after_migrate(sender: Any, **kwargs: Any) -> None:
    from django.contrib.auth.models import Group, Permission

    sync_role_groups(group_model=Group, permission_model=Permission)
