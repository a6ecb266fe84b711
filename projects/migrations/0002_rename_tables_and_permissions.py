"""The project tables take the ``projects`` names, and the permissions move with their content types
(``annotate.manage_projects`` becomes ``projects.manage_projects``, and so on): every group and user
keeps exactly the permissions it had. The role groups are then set as ``projects.roles`` says
(frozen here, as a migration must be)."""

from django.apps.registry import Apps
from django.contrib.auth.management import create_permissions
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

MODELS = ("project", "projectmembership")
GROUP_NAMES = {"admin": "Project admins", "annotator": "Annotators", "ml_engineer": "ML engineers"}
GROUP_PERMISSIONS = {
    "admin": (
        "manage_projects", "annotate_tasks", "export_preferences", "train_models", "add_project",
        "change_project", "view_project", "add_projectmembership", "change_projectmembership",
        "delete_projectmembership", "view_projectmembership",
    ),
    "annotator": ("annotate_tasks", "view_project"),
    "ml_engineer": ("export_preferences", "train_models", "view_project"),
}


def _move_content_types(apps: Apps, db: str, source: str, target: str) -> None:
    """Give ``source``'s content types of the project models to ``target``; where ``target`` has one
    already (a post-migrate run made it), move the permission grants and log entries onto it."""
    content_type = apps.get_model("contenttypes", "ContentType")
    permission = apps.get_model("auth", "Permission")
    group_permissions = apps.get_model("auth", "Group").permissions.through
    user_permissions = apps.get_model("auth", "User").user_permissions.through
    log_entry = apps.get_model("admin", "LogEntry")
    for model in MODELS:
        old = content_type.objects.using(db).filter(app_label=source, model=model).first()
        if old is None:
            continue
        new = content_type.objects.using(db).filter(app_label=target, model=model).first()
        if new is None:
            old.app_label = target
            old.save(update_fields=["app_label"])
            continue
        for perm in permission.objects.using(db).filter(content_type=old):
            twin = permission.objects.using(db).filter(content_type=new, codename=perm.codename).first()
            if twin is None:
                perm.content_type = new
                perm.save(update_fields=["content_type"])
                continue
            for through in (group_permissions, user_permissions):
                owner = "group_id" if through is group_permissions else "user_id"
                have = set(through.objects.using(db).filter(permission=twin).values_list(owner, flat=True))
                through.objects.using(db).bulk_create(
                    through(**{owner: holder, "permission_id": twin.pk})
                    for holder in through.objects.using(db).filter(permission=perm).values_list(owner, flat=True)
                    if holder not in have
                )
            perm.delete()
        log_entry.objects.using(db).filter(content_type=old).update(content_type=new)
        old.delete()


def to_projects(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    db = schema_editor.connection.alias  # the database being migrated (``migrate --database``)
    _move_content_types(apps, db, "annotate", "projects")
    config = apps.get_app_config("projects")
    config.models_module = True  # create_permissions skips apps without models in historical states
    create_permissions(config, apps=apps, verbosity=0, using=db)
    config.models_module = None
    group_model, permission_model = apps.get_model("auth", "Group"), apps.get_model("auth", "Permission")
    for role, name in GROUP_NAMES.items():
        group, _ = group_model.objects.using(db).get_or_create(name=name)
        group.permissions.set(permission_model.objects.using(db).filter(
            content_type__app_label="projects", codename__in=GROUP_PERMISSIONS[role]))


def to_annotate(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    db = schema_editor.connection.alias  # the database being migrated (``migrate --database``)
    _move_content_types(apps, db, "projects", "annotate")


class Migration(migrations.Migration):

    dependencies = [
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("annotate", "0008_project_moves_to_projects"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("projects", "0001_initial"),
    ]

    operations = [
        migrations.AlterModelTable(name="project", table=None),
        migrations.AlterModelTable(name="projectmembership", table=None),
        migrations.RunPython(to_projects, to_annotate),
    ]
