"""`make run` seeds a project that is ready for annotators, and the demo users can log in."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotate.workflow import queue
from annotate.workflow.access import workflow_of
from projects.models import Project


@pytest.mark.django_db
def test_seed_demo_makes_a_ready_project_and_is_idempotent(client):
    call_command("seed_demo")
    call_command("seed_demo")
    project = Project.objects.get(name="Shapes world demo")
    version = workflow_of(project).template_version
    assert version is not None and version.is_published
    types = [c["type"] for c in version.schema["components"]]
    assert types[:3] == ["instructions", "prompt_input", "generate_button"] and "ranking" in types
    assert project.tasks.count() == 40
    annotator = get_user_model().objects.get(username="demo-annotator")
    handout = queue.task_next(project=project, user=annotator)
    assert handout.task is not None and handout.task.prompt.text.startswith("a ")
    for username, password in (("demo-admin", "pickwise-admin"), ("demo-annotator", "pickwise-annotator"),
                               ("demo-ml", "pickwise-ml")):
        assert client.login(username=username, password=password)
        assert client.get("/").status_code == 200
        client.logout()
