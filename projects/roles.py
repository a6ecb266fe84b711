"""The three roles, the groups that carry them, the permissions each group holds, and what each role may do.

Global role = membership of a group with real Django permissions (kept as ``GROUP_PERMISSIONS``
says by :mod:`projects.role_groups`). What a user may do inside one project also depends on their
membership role there; :mod:`projects.access` combines the two.
"""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    ADMIN = "admin", "Project admin"
    ANNOTATOR = "annotator", "Annotator"
    ML_ENGINEER = "ml_engineer", "ML engineer"


GROUP_NAMES: dict[str, str] = {
    Role.ADMIN: "Project admins",
    Role.ANNOTATOR: "Annotators",
    Role.ML_ENGINEER: "ML engineers",
}

# Custom permissions declared on projects.Project (Meta.permissions).
MANAGE = "projects.manage_projects"  # create projects, edit templates, invite, review
ANNOTATE = "projects.annotate_tasks"  # work annotation queues
EXPORT = "projects.export_preferences"  # export preference datasets
TRAIN = "projects.train_models"  # start reward-model and fine-tune runs
VIEW = "projects.view_project"

GROUP_PERMISSIONS: dict[str, tuple[str, ...]] = {
    Role.ADMIN: (
        MANAGE, ANNOTATE, EXPORT, TRAIN,
        "projects.add_project", "projects.change_project", VIEW,
        "projects.add_projectmembership", "projects.change_projectmembership",
        "projects.delete_projectmembership", "projects.view_projectmembership",
    ),
    Role.ANNOTATOR: (ANNOTATE, VIEW),
    Role.ML_ENGINEER: (EXPORT, TRAIN, VIEW),
}

# Which project-level actions each membership role allows.
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    Role.ADMIN: frozenset({"view", "manage", "annotate", "review", "export", "train"}),
    Role.ANNOTATOR: frozenset({"view", "annotate"}),
    Role.ML_ENGINEER: frozenset({"view", "export", "train"}),
}
# The global permission each action also needs.
ACTION_PERMISSIONS: dict[str, str] = {
    "view": VIEW,
    "manage": MANAGE,
    "review": MANAGE,
    "annotate": ANNOTATE,
    "export": EXPORT,
    "train": TRAIN,
}
ACTIONS: tuple[str, ...] = tuple(ACTION_PERMISSIONS)


def role_permissions(role: str) -> frozenset[str]:
    """The global permissions a member in ``role`` needs for every action the role allows."""
    return frozenset(ACTION_PERMISSIONS[action] for action in ROLE_ACTIONS[role])
