"""The model versions a project offers move off the project into ``ProjectModelVersion`` (rows copied
from the project's many-to-many table, which ``annotate/0008`` drops); generation jobs point at
``projects.Project`` (state only: the table is the same)."""

import django.db.models.deletion
from django.apps.registry import Apps
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor


def copy_offers(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    db = schema_editor.connection.alias  # the database being migrated (``migrate --database``)
    through = apps.get_model("annotate", "Project").model_versions.through  # the old many-to-many table
    offer_model = apps.get_model("generation", "ProjectModelVersion")
    offer_model.objects.using(db).bulk_create(
        offer_model(project_id=project_id, model_version_id=version_id)
        for project_id, version_id in through.objects.using(db).values_list("project_id", "modelversion_id")
        .iterator()
    )


def copy_offers_back(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    db = schema_editor.connection.alias  # the database being migrated (``migrate --database``)
    through = apps.get_model("annotate", "Project").model_versions.through
    through.objects.using(db).bulk_create(
        through(project_id=project_id, modelversion_id=version_id)
        for project_id, version_id in apps.get_model("generation", "ProjectModelVersion").objects.using(db)
        .values_list("project_id", "model_version_id").iterator()
    )


class Migration(migrations.Migration):

    dependencies = [
        ("annotate", "0006_project_presort_reward_version"),
        ("generation", "0001_initial"),
        ("projects", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="ProjectModelVersion",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                ("model_version", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="project_offers", to="generation.modelversion")),
                ("project", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="model_version_offers", to="projects.project")),
            ],
            options={
                "ordering": ["project", "model_version"],
                "constraints": [
                    models.UniqueConstraint(fields=("project", "model_version"), name="projectmodelversion_once"),
                ],
            },
        ),
        migrations.AddField(
            model_name="modelversion",
            name="projects",
            field=models.ManyToManyField(blank=True, related_name="model_versions", through="generation.ProjectModelVersion", to="projects.project"),
        ),
        migrations.RunPython(copy_offers, copy_offers_back),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="generationjob",
                    name="project",
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="generation_jobs", to="projects.project"),
                ),
            ],
            database_operations=[],
        ),
    ]
