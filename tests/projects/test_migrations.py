"""The migrations that move projects into their own app carry a database of the old shape across:
projects, memberships, the annotation settings, offered model versions, the pre-sort reward model, the
template version, and every permission granted on a project (to groups and to users)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, connections
from django.db.migrations.executor import MigrationExecutor

from annotate.models import ProjectWorkflow
from generation.models import GenerationJob, ProjectModelVersion
from projects.models import Project, ProjectMembership
from projects.roles import GROUP_NAMES, GROUP_PERMISSIONS
from rlhf.models import PreferenceExport, ProjectPresort

OLD = [("annotate", "0006_project_presort_reward_version"), ("generation", "0001_initial"), ("rlhf", "0003_loop")]
SCRATCH = "old_shape"  # the database alias of the test's own database


@pytest.fixture
def old_database(transactional_db) -> Iterator[str]:
    """A database of the test's own beside the test database, migrated from empty to the old shape (forward
    only: migrating the test database back is most of the test's time, Django re-rendering every model
    state of the plan), dropped afterwards. Its alias is ``SCRATCH``."""
    name = f"{connection.settings_dict['NAME']}_{SCRATCH}"
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')  # a run killed midway left it
        cursor.execute(f'CREATE DATABASE "{name}"')
    # A connection made here and not left in the settings is one Django's test case lets the test use.
    connections.settings[SCRATCH] = {**connection.settings_dict, "NAME": name}
    scratch = connections.create_connection(SCRATCH)
    del connections.settings[SCRATCH]
    connections[SCRATCH] = scratch
    try:
        MigrationExecutor(scratch).migrate(OLD)
        yield SCRATCH
    finally:
        scratch.close()
        del connections[SCRATCH]
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')


def perms_of(granted) -> set[str]:
    """A group's ``permissions`` or a user's ``user_permissions``, as ``app_label.codename``."""
    return {f"{p.content_type.app_label}.{p.codename}" for p in granted.select_related("content_type")}


def test_old_shape_data_arrives_in_the_new_apps(old_database):
    db = old_database  # projects live in annotate here
    old = MigrationExecutor(connections[db]).loader.project_state(OLD).apps

    def objects(app_label: str, model: str):
        return old.get_model(app_label, model).objects.using(db)

    annotate_perm = {codename: objects("auth", "Permission").get(content_type__app_label="annotate", codename=codename)
                     for codename in ("manage_projects", "view_project", "export_preferences")}
    alice = objects("auth", "User").create(username="alice")
    bob = objects("auth", "User").create(username="bob")
    bob.user_permissions.add(annotate_perm["export_preferences"])
    reviewers = objects("auth", "Group").create(name="Reviewers")
    reviewers.permissions.add(annotate_perm["manage_projects"], annotate_perm["view_project"])

    projects = objects("annotate", "Project")
    project = projects.create(
        name="Old shapes", description="from before", created_by=alice, instructions="Rank by size",
        images_per_task=6, overlap=3, task_order="random", gold_rate=0.25, lease_seconds=120,
        generation_settings={"steps": 7},
    )
    bare = projects.create(name="Defaults")
    objects("annotate", "ProjectMembership").create(project=project, user=alice, role="admin")
    objects("annotate", "ProjectMembership").create(project=project, user=bob, role="ml_engineer")
    template = objects("annotate", "AnnotationTemplate").create(project=project, name="Rank")
    version = objects("annotate", "AnnotationTemplateVersion").create(
        template=template, number=1, schema={"schema_version": 1, "components": []}, status="published",
        published_at="2026-01-01T00:00:00Z")
    projects.filter(pk=project.pk).update(template_version=version)
    offered = objects("generation", "ModelVersion").create(name="old-base", source="x", dtype="float32")
    objects("generation", "ModelVersion").create(name="not-offered", source="y", dtype="float32")
    project.model_versions.add(offered)
    job = objects("generation", "GenerationJob").create(
        project=project, model_version=offered, prompt="a red circle", params={}, params_hash="0" * 64,
        num_images=1, seeds=[1])
    reward = objects("rlhf", "RewardModelVersion").create(name="rm-old", project=project, path="/rm")
    projects.filter(pk=project.pk).update(presort_reward_version=reward)
    export = objects("rlhf", "PreferenceExport").create(project=project, format="pickapic")

    executor = MigrationExecutor(connections[db])
    executor.migrate(executor.loader.graph.leaf_nodes())  # forward to the new shape

    moved = Project.objects.using(db).get(pk=project.pk)
    assert (moved.name, moved.description, moved.created_by_id) == ("Old shapes", "from before", alice.pk)
    assert set(ProjectMembership.objects.using(db).filter(project=moved).values_list("user_id", "role")) == {
        (alice.pk, "admin"), (bob.pk, "ml_engineer")}
    workflow = ProjectWorkflow.objects.using(db).get(project=moved)
    assert (workflow.instructions, workflow.images_per_task, workflow.overlap, workflow.task_order,
            workflow.gold_rate, workflow.lease_seconds, workflow.generation_settings, workflow.template_version_id) == (
        "Rank by size", 6, 3, "random", 0.25, 120, {"steps": 7}, version.pk)
    defaults = ProjectWorkflow.objects.using(db).get(project_id=bare.pk)
    assert (defaults.overlap, defaults.images_per_task, defaults.template_version_id) == (1, 4, None)
    assert list(ProjectModelVersion.objects.using(db).filter(project=moved).values_list(
        "model_version_id", flat=True)) == [offered.pk]
    assert list(moved.model_versions.values_list("name", flat=True)) == ["old-base"]
    assert ProjectPresort.objects.using(db).get(project=moved).reward_version_id == reward.pk
    assert not ProjectPresort.objects.using(db).filter(project_id=bare.pk).exists()
    assert GenerationJob.objects.using(db).get(pk=job.pk).project == moved
    assert PreferenceExport.objects.using(db).get(pk=export.pk).project == moved

    groups = Group.objects.using(db)
    assert perms_of(groups.get(name="Reviewers").permissions) == {"projects.manage_projects", "projects.view_project"}
    bob_perms = perms_of(get_user_model().objects.using(db).get(pk=bob.pk).user_permissions)
    assert "projects.export_preferences" in bob_perms and "annotate.export_preferences" not in bob_perms
    for role, name in GROUP_NAMES.items():
        assert perms_of(groups.get(name=name).permissions) == set(GROUP_PERMISSIONS[role]), name
    tables = set(connections[db].introspection.table_names())
    assert {"projects_project", "projects_projectmembership"} <= tables and "annotate_project" not in tables
