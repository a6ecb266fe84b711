"""Create the three role groups with their permissions, as they were when this migration was written.

Self-contained (migrations outlive the code they were written against): the role names and the
permissions are frozen here. ``projects/migrations/0002`` later moves the permissions to the
``projects`` app and keeps the groups in step with ``projects.roles``.
"""

from __future__ import annotations

from django.apps.registry import Apps
from django.contrib.auth.management import create_permissions
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

GROUP_NAMES = {"admin": "Project admins", "annotator": "Annotators", "ml_engineer": "ML engineers"}
GROUP_PERMISSIONS = {
    "admin": (
        "annotate.manage_projects", "annotate.annotate_tasks", "annotate.export_preferences",
        "annotate.train_models", "annotate.add_project", "annotate.change_project", "annotate.view_project",
        "annotate.add_projectmembership", "annotate.change_projectmembership",
        "annotate.delete_projectmembership", "annotate.view_projectmembership",
    ),
    "annotator": ("annotate.annotate_tasks", "annotate.view_project"),
    "ml_engineer": ("annotate.export_preferences", "annotate.train_models", "annotate.view_project"),
}


def create_role_groups(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    db = schema_editor.connection.alias  # the database being migrated (``migrate --database``)
    # Permissions are normally created after all migrations; make them exist now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0, using=db)
        app_config.models_module = None
    group_model, permission_model = apps.get_model("auth", "Group"), apps.get_model("auth", "Permission")
    for role, name in GROUP_NAMES.items():
        group, _ = group_model.objects.using(db).get_or_create(name=name)
        perms = []
        for dotted in GROUP_PERMISSIONS[role]:
            app_label, codename = dotted.split(".", 1)
            perms.append(permission_model.objects.using(db).get(content_type__app_label=app_label,
                                                                 codename=codename))
        group.permissions.set(perms)


def remove_role_groups(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    db = schema_editor.connection.alias  # the database being migrated (``migrate --database``)
    apps.get_model("auth", "Group").objects.using(db).filter(name__in=GROUP_NAMES.values()).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("annotate", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_role_groups, remove_role_groups)]
