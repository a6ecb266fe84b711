"""The annotation settings move off the project into ``ProjectWorkflow`` (one row per project, copied
from the project's columns, which ``0008`` then drops); ``TaskGenerationJob`` links a task to the
generation jobs made for its candidates."""

import django.db.models.deletion
from django.apps.registry import Apps
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

SETTINGS = ("instructions", "template_version_id", "images_per_task", "overlap", "task_order", "gold_rate",
            "lease_seconds", "generation_settings")


def copy_settings_to_workflows(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    db = schema_editor.connection.alias  # the database being migrated (``migrate --database``)
    project_model = apps.get_model("annotate", "Project")  # the old shape, still holding the settings
    workflow_model = apps.get_model("annotate", "ProjectWorkflow")
    workflow_model.objects.using(db).bulk_create(
        workflow_model(project_id=row["id"], **{name: row[name] for name in SETTINGS})
        for row in project_model.objects.using(db).values("id", *SETTINGS).iterator()
    )


def copy_workflows_to_settings(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    db = schema_editor.connection.alias  # the database being migrated (``migrate --database``)
    project_model = apps.get_model("annotate", "Project")
    workflow_model = apps.get_model("annotate", "ProjectWorkflow")
    for row in workflow_model.objects.using(db).values("project_id", *SETTINGS).iterator():
        project_model.objects.using(db).filter(pk=row.pop("project_id")).update(**row)


class Migration(migrations.Migration):

    dependencies = [
        ("annotate", "0006_project_presort_reward_version"),
        ("generation", "0001_initial"),
        ("projects", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="ProjectWorkflow",
            fields=[
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                ("project", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name="workflow", serialize=False, to="projects.project")),
                ("instructions", models.TextField(blank=True)),
                ("images_per_task", models.PositiveSmallIntegerField(default=4)),
                ("overlap", models.PositiveSmallIntegerField(default=1)),
                ("task_order", models.CharField(choices=[("sequential", "Sequential (import order)"), ("random", "Random")], default="sequential", max_length=20)),
                ("gold_rate", models.FloatField(default=0.0)),
                ("lease_seconds", models.PositiveIntegerField(default=900)),
                ("generation_settings", models.JSONField(blank=True, default=dict)),
                ("template_version", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name="workflows", to="annotate.annotationtemplateversion")),
            ],
            options={
                "constraints": [
                    models.CheckConstraint(condition=models.Q(("images_per_task__gte", 1), ("images_per_task__lte", 16)), name="workflow_images_per_task_range"),
                    models.CheckConstraint(condition=models.Q(("overlap__gte", 1), ("overlap__lte", 100)), name="workflow_overlap_range"),
                    models.CheckConstraint(condition=models.Q(("task_order__in", ["sequential", "random"])), name="workflow_task_order_valid"),
                    models.CheckConstraint(condition=models.Q(("gold_rate__gte", 0), ("gold_rate__lte", 1)), name="workflow_gold_rate_range"),
                    models.CheckConstraint(condition=models.Q(("lease_seconds__gte", 10)), name="workflow_lease_seconds_min"),
                ],
            },
        ),
        migrations.CreateModel(
            name="TaskGenerationJob",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                ("job", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name="annotation_task_link", to="generation.generationjob")),
                ("task", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="generation_jobs", to="annotate.annotationtask")),
            ],
            options={"ordering": ["task", "pk"]},
        ),
        migrations.RunPython(copy_settings_to_workflows, copy_workflows_to_settings),
    ]
