"""The three roles, the groups that carry them and the permissions each group holds.

Global role = membership of a group with real Django permissions (created by the data
migration ``annotate/migrations/0002_roles``). What a user may do inside one project also
depends on their membership role there (see ``annotate.access``).
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

# Custom permissions declared on annotate.Project (Meta.permissions).
MANAGE = "annotate.manage_projects"  # create projects, edit templates, invite, review
ANNOTATE = "annotate.annotate_tasks"  # work annotation queues
EXPORT = "annotate.export_preferences"  # export preference datasets
TRAIN = "annotate.train_models"  # start reward-model and fine-tune runs

GROUP_PERMISSIONS: dict[str, tuple[str, ...]] = {
    Role.ADMIN: (
        MANAGE, ANNOTATE, EXPORT, TRAIN,
        "annotate.add_project", "annotate.change_project", "annotate.view_project",
        "annotate.add_projectmembership", "annotate.change_projectmembership",
        "annotate.delete_projectmembership", "annotate.view_projectmembership",
    ),
    Role.ANNOTATOR: (ANNOTATE, "annotate.view_project"),
    Role.ML_ENGINEER: (EXPORT, TRAIN, "annotate.view_project"),
}

# Which project-level actions each membership role allows.
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    Role.ADMIN: frozenset({"view", "manage", "annotate", "review", "export", "train"}),
    Role.ANNOTATOR: frozenset({"view", "annotate"}),
    Role.ML_ENGINEER: frozenset({"view", "export", "train"}),
}
ACTION_PERMISSIONS: dict[str, str] = {
    "view": "annotate.view_project",
    "manage": MANAGE,
    "review": MANAGE,
    "annotate": ANNOTATE,
    "export": EXPORT,
    "train": TRAIN,
}
