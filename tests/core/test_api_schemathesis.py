"""schemathesis against the whole API, as the demo admin on a seeded database (issue 21 item 8).

The OpenAPI schema the app serves is the contract: every operation is called with requests generated from
it (valid ones, and invalid ones the schema forbids), and every response must be no server error, carry a
documented status code and content type, and match the documented body. Bounded: a few examples an operation.

Generated ids rarely name a stored object, so every read is also called with the ids of the seeded inpainting
project (its tasks, its import, a webhook endpoint): a page documented as an array, or a body that differs
from its schema only when the object exists, fails on every run, not on the runs whose ids happen to match.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import schemathesis
from django.core import signals
from django.core.management import call_command
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 12


@pytest.fixture
def wsgi_app(db) -> Iterator[object]:
    """The real WSGI application, serving the test database's open transaction (as Django's test client
    does, the per-request connection cleanup is off while it runs)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def demo_token(db) -> str:
    call_command("seed_demo", verbosity=0)
    from django.contrib.auth import get_user_model

    token, _ = Token.objects.get_or_create(user=get_user_model().objects.get(username="demo-admin"))
    return token.key


@pytest.fixture
def api_schema(wsgi_app, demo_token):
    headers = {"Authorization": f"Token {demo_token}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", wsgi_app, headers=headers)
    return schema


@pytest.fixture
def stored_ids(demo_token) -> dict[str, int]:
    """Path parameters naming objects that exist: the seeded inpainting project, a task and the import of it,
    and a webhook endpoint added to it."""
    from annotate.management.commands.seed_demo import INPAINT_PROJECT
    from projects.models import Project
    from projects.webhooks.services import webhook_endpoint_create

    project = Project.objects.get(name=INPAINT_PROJECT)
    endpoint = webhook_endpoint_create(project=project, url="https://receiver.invalid/schemathesis")
    return {"project_id": project.pk, "task_id": project.tasks.order_by("pk").first().pk,
            "import_id": project.task_imports.get().pk, "endpoint_id": endpoint.pk}


def _with_stored_ids(operation, stored_ids: dict[str, int]) -> dict[str, int] | None:
    """The stored ids this read's path names (``{id}`` is the project's own on ``/api/projects/{id}/``), or
    None when it names none of them."""
    names = {**stored_ids, **({"id": stored_ids["project_id"]} if operation.path == "/api/projects/{id}/" else {})}
    wanted = {name: value for name, value in names.items() if "{" + name + "}" in operation.path}
    return wanted or None


def _failures_of(operation, mode, token: str, path_parameters: dict[str, int] | None = None) -> list[str]:
    """Run ``EXAMPLES_PER_OPERATION`` generated requests of one operation (with ``path_parameters`` in place of
    the generated ones where given); every distinct failure found."""
    found: dict[str, str] = {}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        case.path_parameters.update(path_parameters or {})
        try:
            case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)
        except (Failure, FailureGroup) as exc:
            failures = exc.exceptions if isinstance(exc, FailureGroup) else [exc]
            for failure in failures:
                found.setdefault(f"{type(failure).__name__}: {failure.title}", str(failure)[:1500])

    with contextlib.suppress(Unsatisfiable):  # nothing of this operation can be made invalid (no input)
        run()
    label = f"{operation.label} [{mode.value}{', stored ids' if path_parameters else ''}]"
    return [f"{label} {key}\n{detail}" for key, detail in found.items()]


def test_api_conforms_to_its_schema(api_schema, demo_token, stored_ids):
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 40
    reads_of_stored = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += _failures_of(operation, mode, demo_token)
        stored = _with_stored_ids(operation, stored_ids)
        if operation.method.upper() == "GET" and stored is not None:
            reads_of_stored += 1
            failures += _failures_of(operation, GenerationMode.POSITIVE, demo_token, stored)
    assert reads_of_stored >= 15  # every read under /api/projects/{project_id}/ and /api/projects/{id}/
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures)
