"""The project's annotation settings, offered model versions and pre-sort model now live with their
apps (copied by ``0007``, ``generation/0002`` and ``rlhf/0004``): drop them from the project, point
annotate's foreign keys at ``projects.Project`` and hand the models over (state only)."""

import django.db.models.deletion
from django.db import migrations, models


def _project_fk(related_name: str) -> models.ForeignKey:
    return models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name=related_name,
                             to="projects.project")


class Migration(migrations.Migration):

    dependencies = [
        ("annotate", "0007_projectworkflow_taskgenerationjob"),
        ("generation", "0002_projectmodelversion"),
        ("projects", "0001_initial"),
        ("rlhf", "0004_projectpresort"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(model_name="annotationtemplate", name="project",
                                      field=_project_fk("annotation_templates")),
                migrations.AlterField(model_name="promptset", name="project", field=_project_fk("prompt_sets")),
                migrations.AlterField(model_name="prompt", name="project", field=_project_fk("prompts")),
                migrations.AlterField(model_name="annotationtask", name="project", field=_project_fk("tasks")),
                migrations.AlterField(model_name="taskassignment", name="project", field=_project_fk("assignments")),
                migrations.AlterField(model_name="annotation", name="project", field=_project_fk("annotations")),
            ],
            database_operations=[],
        ),
        migrations.RemoveConstraint(model_name="project", name="project_images_per_task_range"),
        migrations.RemoveConstraint(model_name="project", name="project_overlap_range"),
        migrations.RemoveConstraint(model_name="project", name="project_task_order_valid"),
        migrations.RemoveConstraint(model_name="project", name="project_gold_rate_range"),
        migrations.RemoveConstraint(model_name="project", name="project_lease_seconds_min"),
        migrations.RemoveField(model_name="project", name="model_versions"),
        migrations.RemoveField(model_name="project", name="presort_reward_version"),
        migrations.RemoveField(model_name="project", name="template_version"),
        migrations.RemoveField(model_name="project", name="instructions"),
        migrations.RemoveField(model_name="project", name="images_per_task"),
        migrations.RemoveField(model_name="project", name="overlap"),
        migrations.RemoveField(model_name="project", name="task_order"),
        migrations.RemoveField(model_name="project", name="gold_rate"),
        migrations.RemoveField(model_name="project", name="lease_seconds"),
        migrations.RemoveField(model_name="project", name="generation_settings"),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name="project", name="members"),
                migrations.DeleteModel(name="ProjectMembership"),
                migrations.DeleteModel(name="Project"),
            ],
            database_operations=[],
        ),
    ]
