"""The OpenAPI schema generates without warnings, and the models match their migrations."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command


def test_openapi_schema_is_valid_and_warning_free(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    assert "/api/exports/" in (tmp_path / "schema.yml").read_text()


@pytest.mark.django_db
def test_no_model_change_lacks_a_migration():
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()
