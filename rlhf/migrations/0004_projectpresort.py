"""A project's pre-sort reward model moves off the project into ``ProjectPresort`` (copied from the
project's column, which ``annotate/0008`` drops); every project foreign key points at
``projects.Project`` (state only: the table is the same)."""

import django.db.models.deletion
from django.apps.registry import Apps
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor


def copy_presorts(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    db = schema_editor.connection.alias  # the database being migrated (``migrate --database``)
    project_model = apps.get_model("annotate", "Project")  # the old shape, still holding the column
    presort_model = apps.get_model("rlhf", "ProjectPresort")
    presort_model.objects.using(db).bulk_create(
        presort_model(project_id=project_id, reward_version_id=version_id)
        for project_id, version_id in project_model.objects.using(db)
        .filter(presort_reward_version__isnull=False).values_list("id", "presort_reward_version_id").iterator()
    )


def copy_presorts_back(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    db = schema_editor.connection.alias  # the database being migrated (``migrate --database``)
    project_model = apps.get_model("annotate", "Project")
    for project_id, version_id in apps.get_model("rlhf", "ProjectPresort").objects.using(db).values_list(
            "project_id", "reward_version_id").iterator():
        project_model.objects.using(db).filter(pk=project_id).update(presort_reward_version_id=version_id)


def _project_fk(related_name: str, *, null: bool) -> models.ForeignKey:
    return models.ForeignKey(blank=null, null=null, on_delete=django.db.models.deletion.CASCADE,
                             related_name=related_name, to="projects.project")


class Migration(migrations.Migration):

    dependencies = [
        ("annotate", "0006_project_presort_reward_version"),
        ("projects", "0001_initial"),
        ("rlhf", "0003_loop"),
    ]

    operations = [
        migrations.CreateModel(
            name="ProjectPresort",
            fields=[
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                ("project", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name="presort", serialize=False, to="projects.project")),
                ("reward_version", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="presorted_projects", to="rlhf.rewardmodelversion")),
            ],
            options={"abstract": False},
        ),
        migrations.RunPython(copy_presorts, copy_presorts_back),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(model_name="preferenceexport", name="project",
                                      field=_project_fk("exports", null=False)),
                migrations.AlterField(model_name="rewardmodelrun", name="project",
                                      field=_project_fk("reward_runs", null=True)),
                migrations.AlterField(model_name="rewardmodelversion", name="project",
                                      field=_project_fk("reward_versions", null=True)),
                migrations.AlterField(model_name="finetunerun", name="project",
                                      field=_project_fk("finetune_runs", null=True)),
                migrations.AlterField(model_name="loopround", name="project",
                                      field=_project_fk("loop_rounds", null=False)),
                migrations.AlterField(model_name="versionevaluation", name="project",
                                      field=_project_fk("version_evaluations", null=True)),
                migrations.AlterField(
                    model_name="arena", name="project",
                    field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name="arena",
                                               to="projects.project"),
                ),
            ],
            database_operations=[],
        ),
    ]
