"""The migrations that move projects into their own app carry a database of the old shape across:
projects, memberships, the annotation settings, offered model versions, the pre-sort reward model, the
template version, and every permission granted on a project (to groups and to users)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from annotate.models import ProjectWorkflow
from generation.models import GenerationJob, ProjectModelVersion
from projects.models import Project, ProjectMembership
from projects.roles import GROUP_NAMES, GROUP_PERMISSIONS
from rlhf.models import PreferenceExport, ProjectPresort

OLD = [("annotate", "0006_project_presort_reward_version"), ("generation", "0001_initial"), ("rlhf", "0003_loop")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor


def perms_of(holder) -> set[str]:
    return {f"{p.content_type.app_label}.{p.codename}" for p in holder.permissions.select_related("content_type")}


@pytest.mark.django_db(transaction=True)
def test_old_shape_data_arrives_in_the_new_apps():
    executor = migrate([("projects", None)])  # back to the old shape: projects lived in annotate
    old = executor.loader.project_state(OLD).apps
    user_model, group_model = old.get_model("auth", "User"), old.get_model("auth", "Group")
    permission = old.get_model("auth", "Permission")
    annotate_perm = {codename: permission.objects.get(content_type__app_label="annotate", codename=codename)
                     for codename in ("manage_projects", "view_project", "export_preferences")}
    alice = user_model.objects.create(username="alice")
    bob = user_model.objects.create(username="bob")
    bob.user_permissions.add(annotate_perm["export_preferences"])
    reviewers = group_model.objects.create(name="Reviewers")
    reviewers.permissions.add(annotate_perm["manage_projects"], annotate_perm["view_project"])

    project_model = old.get_model("annotate", "Project")
    project = project_model.objects.create(
        name="Old shapes", description="from before", created_by=alice, instructions="Rank by size",
        images_per_task=6, overlap=3, task_order="random", gold_rate=0.25, lease_seconds=120,
        generation_settings={"steps": 7},
    )
    bare = project_model.objects.create(name="Defaults")
    old.get_model("annotate", "ProjectMembership").objects.create(project=project, user=alice, role="admin")
    old.get_model("annotate", "ProjectMembership").objects.create(project=project, user=bob, role="ml_engineer")
    template = old.get_model("annotate", "AnnotationTemplate").objects.create(project=project, name="Rank")
    version = old.get_model("annotate", "AnnotationTemplateVersion").objects.create(
        template=template, number=1, schema={"schema_version": 1, "components": []}, status="published",
        published_at="2026-01-01T00:00:00Z")
    project_model.objects.filter(pk=project.pk).update(template_version=version)
    model_version = old.get_model("generation", "ModelVersion")
    offered = model_version.objects.create(name="old-base", source="x", dtype="float32")
    model_version.objects.create(name="not-offered", source="y", dtype="float32")
    project.model_versions.add(offered)
    job = old.get_model("generation", "GenerationJob").objects.create(
        project=project, model_version=offered, prompt="a red circle", params={}, params_hash="0" * 64,
        num_images=1, seeds=[1])
    reward = old.get_model("rlhf", "RewardModelVersion").objects.create(name="rm-old", project=project, path="/rm")
    project_model.objects.filter(pk=project.pk).update(presort_reward_version=reward)
    export = old.get_model("rlhf", "PreferenceExport").objects.create(project=project, format="pickapic")

    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())  # forward to the new shape

    moved = Project.objects.get(pk=project.pk)
    assert (moved.name, moved.description, moved.created_by_id) == ("Old shapes", "from before", alice.pk)
    assert set(ProjectMembership.objects.filter(project=moved).values_list("user_id", "role")) == {
        (alice.pk, "admin"), (bob.pk, "ml_engineer")}
    workflow = ProjectWorkflow.objects.get(project=moved)
    assert (workflow.instructions, workflow.images_per_task, workflow.overlap, workflow.task_order,
            workflow.gold_rate, workflow.lease_seconds, workflow.generation_settings, workflow.template_version_id) == (
        "Rank by size", 6, 3, "random", 0.25, 120, {"steps": 7}, version.pk)
    defaults = ProjectWorkflow.objects.get(project_id=bare.pk)
    assert (defaults.overlap, defaults.images_per_task, defaults.template_version_id) == (1, 4, None)
    assert list(ProjectModelVersion.objects.filter(project=moved).values_list("model_version_id", flat=True)) == [
        offered.pk]
    assert list(moved.model_versions.values_list("name", flat=True)) == ["old-base"]
    assert ProjectPresort.objects.get(project=moved).reward_version_id == reward.pk
    assert not ProjectPresort.objects.filter(project_id=bare.pk).exists()
    assert GenerationJob.objects.get(pk=job.pk).project == moved
    assert PreferenceExport.objects.get(pk=export.pk).project == moved

    assert perms_of(Group.objects.get(name="Reviewers")) == {"projects.manage_projects", "projects.view_project"}
    bob = get_user_model().objects.get(pk=bob.pk)
    assert bob.has_perm("projects.export_preferences") and not bob.has_perm("annotate.export_preferences")
    for role, name in GROUP_NAMES.items():
        assert perms_of(Group.objects.get(name=name)) == set(GROUP_PERMISSIONS[role]), name
    tables = set(connection.introspection.table_names())
    assert {"projects_project", "projects_projectmembership"} <= tables and "annotate_project" not in tables
