"""/healthz reports the database and the broker (ok or failed); 503 when either is unreachable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = (
    "import django, json; django.setup(); from django.test import Client; "
    "r = Client().get('/healthz'); print(json.dumps({'http': r.status_code, **r.json()}))"
)


def healthz_in_subprocess(**env: str) -> tuple[dict[str, object], str]:
    """The anonymous /healthz answer (status and body) and what the process logged."""
    merged = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings", **env)
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", PROBE], cwd=ROOT, env=merged, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.django_db
def test_healthy_with_postgres_and_redis(client, settings):
    assert settings.DATABASES["default"]["ENGINE"].endswith("postgresql"), "run through `make test`"
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "broker": "ok", "status": "ok"}


def test_database_down_gives_503_without_the_reason():
    """Anonymous callers learn which dependency failed, not why (the error can name host and user)."""
    body, log = healthz_in_subprocess(DATABASE_URL="postgres://nobody@127.0.0.1:1/none")
    assert body == {"http": 503, "database": "failed", "broker": "ok", "status": "unavailable"}
    assert "healthz: database unreachable: OperationalError" in log


def test_broker_down_gives_503_without_the_reason():
    body, log = healthz_in_subprocess(CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    assert body == {"http": 503, "database": "ok", "broker": "failed", "status": "unavailable"}
    assert "healthz: broker unreachable:" in log
