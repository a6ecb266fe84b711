"""Keep the three role groups and their permissions as ``projects.roles`` says.

:func:`sync_role_groups` takes the group and permission models as arguments so that a data
migration can run it on historical models (migrations freeze their own copy of the lists).
:func:`role_groups_sync` is registered with :mod:`core.after_migrate` by ``ProjectsConfig.ready()``:
it runs after every ``migrate`` and ``flush`` (the test runner flushes between transactional
tests), so the groups always exist and new permissions reach them without a hand edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.apps import apps
from django.contrib.auth.management import create_permissions

from projects.roles import GROUP_NAMES, GROUP_PERMISSIONS


def sync_role_groups(*, group_model: Any, permission_model: Any,
                     group_names: Mapping[str, str] = GROUP_NAMES,
                     group_permissions: Mapping[str, tuple[str, ...]] = GROUP_PERMISSIONS) -> None:
    """Create each role's group and give it exactly its permissions (``app_label.codename``)."""
    for role, group_name in group_names.items():
        group, _ = group_model.objects.get_or_create(name=group_name)
        perms = []
        for dotted in group_permissions[role]:
            app_label, codename = dotted.split(".", 1)
            perms.append(permission_model.objects.get(content_type__app_label=app_label, codename=codename))
        group.permissions.set(perms)


def role_groups_sync() -> None:
    """The after-migrate step: the projects app's permissions first (post_migrate may not have made them yet)."""
    create_permissions(apps.get_app_config("projects"), verbosity=0)
    sync_role_groups(group_model=apps.get_model("auth", "Group"),
                     permission_model=apps.get_model("auth", "Permission"))
