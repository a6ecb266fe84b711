"""Project and ProjectMembership move from ``annotate`` to ``projects``: state only.

The tables stay where they are for now (``annotate_project``, ``annotate_projectmembership``); the
other apps point their foreign keys here (state only as well), ``annotate`` hands its annotation
settings to ``annotate.ProjectWorkflow``, and ``projects/0002`` renames the tables and moves the
permissions' content types.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("annotate", "0006_project_presort_reward_version"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Project",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        ("name", models.CharField(max_length=200)),
                        ("description", models.TextField(blank=True)),
                        ("archived_at", models.DateTimeField(blank=True, null=True)),
                        ("created_by", models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        "db_table": "annotate_project",
                        "ordering": ["-created_at"],
                        "permissions": [
                            ("manage_projects", "Can create projects, edit templates, invite members and review"),
                            ("annotate_tasks", "Can work annotation queues"),
                            ("export_preferences", "Can export preference datasets"),
                            ("train_models", "Can start reward-model and fine-tune runs"),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="ProjectMembership",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        ("role", models.CharField(choices=[("admin", "Project admin"), ("annotator", "Annotator"), ("ml_engineer", "ML engineer")], max_length=20)),
                        ("project", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="memberships", to="projects.project")),
                        ("user", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="memberships", to=settings.AUTH_USER_MODEL)),
                    ],
                    options={"db_table": "annotate_projectmembership"},
                ),
                migrations.AddField(
                    model_name="project",
                    name="members",
                    field=models.ManyToManyField(related_name="projects", through="projects.ProjectMembership", to=settings.AUTH_USER_MODEL),
                ),
                migrations.AddConstraint(
                    model_name="project",
                    constraint=models.CheckConstraint(condition=models.Q(("name", ""), _negated=True), name="project_name_not_empty"),
                ),
                migrations.AddConstraint(
                    model_name="projectmembership",
                    constraint=models.UniqueConstraint(fields=("project", "user"), name="one_membership_per_user_and_project"),
                ),
                migrations.AddConstraint(
                    model_name="projectmembership",
                    constraint=models.CheckConstraint(condition=models.Q(("role__in", ["admin", "annotator", "ml_engineer"])), name="membership_role_valid"),
                ),
            ],
            database_operations=[],
        ),
    ]
