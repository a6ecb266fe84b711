"""schemathesis against the whole API, as the demo admin on a seeded database (issue 21 item 8).

The OpenAPI schema the app serves is the contract: every operation is called with requests generated from
it (valid ones, and invalid ones the schema forbids), and every response must be no server error, carry a
documented status code and content type, and match the documented body. Bounded: a few examples an operation.
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


def _failures_of(operation, mode, token: str) -> list[str]:
    """Run ``EXAMPLES_PER_OPERATION`` generated requests of one operation; every distinct failure found."""
    found: dict[str, str] = {}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        try:
            case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)
        except (Failure, FailureGroup) as exc:
            failures = exc.exceptions if isinstance(exc, FailureGroup) else [exc]
            for failure in failures:
                found.setdefault(f"{type(failure).__name__}: {failure.title}", str(failure)[:1500])

    with contextlib.suppress(Unsatisfiable):  # nothing of this operation can be made invalid (no input)
        run()
    return [f"{operation.label} [{mode.value}] {key}\n{detail}" for key, detail in found.items()]


def test_api_conforms_to_its_schema(api_schema, demo_token):
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 40
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += _failures_of(operation, mode, demo_token)
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures)
