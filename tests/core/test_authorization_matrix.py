"""Every URL the app serves, as every kind of caller, against two projects (issue 21, the matrix test).

The URL list comes from the resolver, so a new URL is covered without touching this file: each URL
pattern (pages, API, admin, media) is filled with the ids of project B's objects and called with GET and
POST by anonymous callers, project A's admin, annotator and ML engineer, a user holding every role but no
membership, and a superuser. Nobody but the superuser belongs to B; so no response to them may show B's
secret marker (its names and texts carry it), no response may be a server error, and no POST of theirs may
change any row. Pages of project A are called too, and must not show B's marker either.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from annotate.builder import services as template_services
from annotate.models import AnnotationTask, TaskImport
from annotate.workflow import queue
from annotate.workflow.services import Submission, annotation_submit
from projects.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from projects.roles import Role
from rlhf.datasets import services as export_services
from rlhf.models import FineTuneRun, RewardModelRun, RewardModelVersion
from tests.annotate.factories_workflow import (
    RANK_SCHEMA,
    images_for,
    model_version,
    set_workflow,
    task_with_images,
)
from tests.factories import PASSWORD, MembershipFactory, ProjectFactory, UserFactory

MARK = "ZEBRA7731"  # in every name and text of project B
SKIPPED = {"logout", "admin:logout"}  # would end the session the next calls need


def url_patterns() -> list[tuple[str, URLPattern]]:
    """(``namespace:name``, pattern) of every named URL pattern, walked from the root resolver."""
    found: list[tuple[str, URLPattern]] = []

    def walk(patterns: list, namespace: str | None) -> None:
        for item in patterns:
            if isinstance(item, URLResolver):
                inner = ":".join(part for part in (namespace, item.namespace) if part) or None
                walk(item.url_patterns, inner)
            elif isinstance(item, URLPattern) and item.name:
                name = f"{namespace}:{item.name}" if namespace else item.name
                if "format" not in item.pattern.regex.groupindex:  # DRF's .json suffix twins
                    found.append((name, item))

    walk(get_resolver().url_patterns, None)
    return found


@pytest.fixture
def world(project, admin_user, annotator, ml_engineer):
    """Project A (the fixture ``project``) and B (``MARK`` everywhere, one admin of its own), with an
    object of every kind the URLs name."""
    b_admin = UserFactory(username="bob-b-admin", role=Role.ADMIN)
    b_annotator = UserFactory(username="bea-b-annotator", role=Role.ANNOTATOR)
    secret = ProjectFactory(name=f"{MARK} secret project", description=f"{MARK} description", created_by=b_admin)
    MembershipFactory(project=secret, user=b_admin, role=Role.ADMIN)
    MembershipFactory(project=secret, user=b_annotator, role=Role.ANNOTATOR)
    template = template_services.template_create(project=secret, name=f"{MARK} template", created_by=b_admin,
                                                 schema=RANK_SCHEMA, strict=True)
    version = template_services.template_version_publish(template=template, created_by=b_admin)
    set_workflow(secret, template_version=version, overlap=1)
    task = task_with_images(secret, prompt=f"a {MARK} circle")
    queue.task_next(project=secret, user=b_annotator)
    ids = [str(ti.image_id) for ti in task.task_images.order_by("position")]
    annotation, _ = annotation_submit(project=secret, user=b_annotator, task_id=task.pk, submission=Submission(
        idempotency_key="b1", ranking=[[i] for i in ids], rationale=f"{MARK} rationale"))
    export = export_services.preference_export_create(
        project=secret, user=b_admin, request=export_services.export_request_parse(
            {"format": "pickapic", "name": f"{MARK} export"}))
    reward_run = RewardModelRun.objects.create(project=secret, export=export, name=f"{MARK} reward run",
                                               backbone="tiny", created_by=b_admin)
    reward_version = RewardModelVersion.objects.create(project=secret, run=reward_run, export=export,
                                                       name=f"{MARK}-rm", path="/nonexistent", created_by=b_admin)
    finetune_run = FineTuneRun.objects.create(project=secret, name=f"{MARK} finetune", base_version=model_version(),
                                              method="dpo", export=export, created_by=b_admin)
    image = images_for(secret, 1, prompt=f"a {MARK} square")[0]
    AnnotationTask.objects.filter(pk=task.pk).update(external_key="b-task-1")  # echoed back: no MARK
    task_import = TaskImport.objects.create(project=secret, created_by=b_admin, name=f"{MARK} import",
                                            source_format=TaskImport.Format.CSV)
    endpoint = WebhookEndpoint.objects.create(project=secret, url="https://receiver.invalid/b", secret="whsec_b",
                                              event_types=["run.finished"], description=f"{MARK} hook")
    delivery = WebhookDelivery.objects.create(endpoint=endpoint, event_type="run.finished", webhook_id="msg_b",
                                              payload={"data": MARK}, status=DeliveryStatus.FAILED,
                                              retry_until=timezone.now())
    outsider = UserFactory(username="oscar-outsider", role=Role.ADMIN)
    for role in (Role.ANNOTATOR, Role.ML_ENGINEER):
        UserFactory(username="oscar-outsider", role=role)
    superuser = get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    values = {
        "project_id": secret.pk, "template_id": template.pk, "name": "ranking", "task_id": task.pk,
        "job_id": image.job_id, "annotation_id": annotation.pk, "export_id": export.pk, "label": "final",
        "index": 0, "side": "version", "evaluation_id": 1, "image_id": image.pk, "object_id": secret.pk, "app_label": "projects",
        "content_type_id": ContentType.objects.get_for_model(secret).pk, "id": b_admin.pk,
        "comparison_id": 1, "import_id": task_import.pk, "endpoint_id": endpoint.pk, "delivery_id": delivery.pk,
        "user_id": b_annotator.pk, "username": b_annotator.username, "task_key": "b-task-1",
    }
    by_route = {"finetune": finetune_run.pk, "reward-model": reward_version.pk, "reward-run": reward_run.pk,
                "reward_run": reward_run.pk, "annotation-template-version": version.pk,
                "annotation-template": template.pk, "export": export.pk, "project": secret.pk}
    callers = {"anonymous": None, "project A admin": admin_user, "project A annotator": annotator,
               "project A ML engineer": ml_engineer, "non-member with every role": outsider}
    return {"project": project, "secret": secret, "values": values, "by_route": by_route, "callers": callers,
            "superuser": superuser}


def _kwargs(name: str, pattern: URLPattern, world, *, own: bool) -> dict[str, object] | None:
    kwargs: dict[str, object] = {}
    for key in pattern.pattern.regex.groupindex:
        if key == "project_id" and own:
            kwargs[key] = world["project"].pk
        elif key in ("pk", "run_id"):
            match = next((pk for prefix, pk in world["by_route"].items() if prefix in name), None)
            if match is None:
                return None
            kwargs[key] = match
        elif key in world["values"]:
            kwargs[key] = world["values"][key]
        else:
            return None
    return kwargs


def urls(world) -> list[tuple[str, str, bool]]:
    """(name, path, names project B) for every pattern: once with B's ids, and, for project-scoped
    patterns, once more with project A's id."""
    out = []
    for name, pattern in url_patterns():
        if name in SKIPPED:
            continue
        for own in (False, True):
            if own and "project_id" not in pattern.pattern.regex.groupindex:
                continue
            kwargs = _kwargs(name, pattern, world, own=own)
            assert kwargs is not None, f"{name}: no value for one of {list(pattern.pattern.regex.groupindex)}"
            out.append((name, reverse(name, kwargs=kwargs), bool(kwargs) and not own))
    return out


def snapshot() -> str:
    """A digest of every row of Pickwise's own tables."""
    digest = hashlib.sha256()
    for label in ("projects", "generation", "annotate", "rlhf"):
        for model in apps.get_app_config(label).get_models():
            digest.update(repr(list(model.objects.order_by("pk").values())).encode())
    return digest.hexdigest()


def _client(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def test_no_caller_sees_or_changes_another_projects_data(world, settings):
    every = urls(world)
    assert len(every) > 100  # pages, API, admin and media, from the resolver
    problems: list[str] = []
    for caller, user in world["callers"].items():
        client = _client(user)
        # Project B's URLs first: nothing these callers send there may change a row. Then project A's own.
        for phase in (True, False):
            before = snapshot()
            for name, path, names_b in every:
                if names_b != phase:
                    continue
                for method in ("get", "post"):
                    response = getattr(client, method)(path)
                    body = b"" if getattr(response, "streaming", False) else response.content
                    if response.status_code >= 500:
                        problems.append(f"{caller} {method.upper()} {path} ({name}): {response.status_code}")
                    if MARK.encode() in body:
                        problems.append(f"{caller} {method.upper()} {path} ({name}) shows project B's data")
                    if names_b and method == "post" and 200 <= response.status_code < 300:
                        problems.append(f"{caller} POST {path} ({name}) was accepted ({response.status_code})")
            if phase and snapshot() != before:
                problems.append(f"{caller}: their requests to project B's URLs changed stored data")
    superuser = _client(world["superuser"])
    for name, path, _ in every:
        response = superuser.get(path)
        if response.status_code >= 500:
            problems.append(f"superuser GET {path} ({name}): {response.status_code}")
    assert not problems, "\n".join(problems)


def test_the_matrix_covers_new_urls_automatically(world):
    names = {name for name, _, _ in urls(world)}
    assert {"annotate:project_detail", "api-task-next", "export-download", "generation:image", "project_audit",
            "admin:projects_project_change", "rlhf:finetune_run_retry"} <= names
    assert all(re.fullmatch(r"[\w:.-]+", name) for name in names)
