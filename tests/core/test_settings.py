"""Settings load in both modes, and each misconfiguration names its key."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from config.env import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
# A fresh random key per run: a key written here would be published, and production refuses those.
PROD_SECRET = secrets.token_urlsafe(64)
# Set by the browser fixture for Playwright's event loop; never part of a deployment.
NOT_INHERITED = {*REGISTRY, "DJANGO_ALLOW_ASYNC_UNSAFE"}


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    clean.update(env)
    clean["DJANGO_SETTINGS_MODULE"] = "config.settings"
    return subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


def settings_probe(**env: str) -> subprocess.CompletedProcess[str]:
    return run_python(
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, s.DEBUG, "
        "s.STORAGES['default']['BACKEND'])",
        **env,
    )


def test_development_defaults_need_nothing(tmp_path):
    result = settings_probe(PICKWISE_VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    engine, broker, debug, storage = result.stdout.split()
    assert engine == "django.db.backends.sqlite3"
    assert broker == "filesystem://"
    assert debug == "True"
    assert storage == "django.core.files.storage.FileSystemStorage"
    # Settings create nothing; the embedded broker's folders appear when Celery is first used
    # (tests/core/test_celery.py::test_importing_the_celery_app_creates_no_folders).
    assert not (tmp_path / "broker").exists()


def test_production_mode_with_postgres_redis_and_s3(tmp_path):
    result = settings_probe(
        PICKWISE_ENV="production", SECRET_KEY=PROD_SECRET, ALLOWED_HOSTS="pickwise.example.org",
        DATABASE_URL="postgres://u:p@db.internal:5432/pickwise", CELERY_BROKER_URL="redis://redis:6379/0",
        AWS_STORAGE_BUCKET_NAME="media", AWS_ACCESS_KEY_ID="key", AWS_SECRET_ACCESS_KEY="secret",
        PICKWISE_VAR_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    engine, broker, debug, storage = result.stdout.split()
    assert engine == "django.db.backends.postgresql"
    assert broker == "redis://redis:6379/0"
    assert debug == "False"
    assert storage == "storages.backends.s3.S3Storage"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"PICKWISE_ENV": "production"}, "SECRET_KEY"),
        ({"PICKWISE_ENV": "production", "SECRET_KEY": "short"}, "SECRET_KEY"),
        # The example key docker/pickwise.env used to ship, and the development key.
        ({"PICKWISE_ENV": "production",
          "SECRET_KEY": "change-me-to-a-long-random-string-of-at-least-fifty-characters-0000"}, "SECRET_KEY"),
        ({"PICKWISE_ENV": "production",
          "SECRET_KEY": "dev-insecure-pickwise-key-change-me-0123456789abcdefghijklmnop"}, "SECRET_KEY"),
        ({"LOGIN_FAILURE_LIMIT": "0"}, "LOGIN_FAILURE_LIMIT"),
        ({"LOGIN_LOCKOUT_MINUTES": "soon"}, "LOGIN_LOCKOUT_MINUTES"),
        ({"API_DOCS_PUBLIC": "perhaps"}, "API_DOCS_PUBLIC"),
        ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres:///nohost"}, "DATABASE_URL"),
        ({"CELERY_BROKER_URL": "kafka://broker:9092"}, "CELERY_BROKER_URL"),
        ({"DEBUG": "true", "ALLOWED_HOSTS": "pickwise.example.org"}, "DEBUG"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"PICKWISE_DEVICE": "tpu"}, "PICKWISE_DEVICE"),
        ({"CELERY_TASK_TIME_LIMIT": "9000"}, "CELERY_TASK_TIME_LIMIT"),
        ({"AWS_STORAGE_BUCKET_NAME": "media"}, "AWS_ACCESS_KEY_ID"),
        ({"EXPORT_STORAGE_URL": "ftp://exports/team"}, "EXPORT_STORAGE_URL"),
        ({"EXPORT_STORAGE_URL": "s3://Bad_Bucket/team"}, "EXPORT_STORAGE_URL"),
        ({"EXPORT_STORAGE_URL": "s3://exports/team?x=1"}, "EXPORT_STORAGE_URL"),
        ({"EXPORT_STORAGE_URL": "s3://exports/team"}, "EXPORT_S3_ACCESS_KEY_ID"),
    ],
)
def test_misconfiguration_stops_startup_naming_the_key(tmp_path, env, key):
    result = settings_probe(PICKWISE_VAR_DIR=str(tmp_path), **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.split("ImproperlyConfigured: ", 1)[1].startswith(f"{key}:"), message


def test_check_deploy_is_clean_in_production_mode(tmp_path):
    clean = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    clean.update(
        PICKWISE_ENV="production", SECRET_KEY=PROD_SECRET, ALLOWED_HOSTS="pickwise.example.org",
        PICKWISE_VAR_DIR=str(tmp_path),
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_readme_documents_every_setting():
    import config.settings  # noqa: F401 - fills the registry

    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| `([^`]*)` \|", readme, flags=re.MULTILINE))
    missing = sorted(set(REGISTRY) - set(rows))
    assert not missing, f"README's settings table lacks {missing}"
    unknown = sorted(set(rows) - set(REGISTRY))
    assert not unknown, f"README documents settings the code never reads: {unknown}"


SECURITY_PROBE = (
    "import django, json; django.setup(); from django.conf import settings as s; "
    "from core.login_protection import cool_off, failure_limit; "
    "print(json.dumps({'docs': s.API_DOCS_PUBLIC, 'limit': failure_limit(None), "
    "'per_ip': s.LOGIN_FAILURE_LIMIT_PER_IP, 'cool_off': cool_off().total_seconds(), "
    "'proxies': s.TRUSTED_PROXY_COUNT, 'img_src': s.CONTENT_SECURITY_POLICY['DIRECTIVES']['img-src']}))"
)


def security_probe(**env: str) -> dict[str, object]:
    result = run_python(SECURITY_PROBE, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_security_settings_have_their_documented_defaults(tmp_path):
    assert security_probe(PICKWISE_VAR_DIR=str(tmp_path)) == {
        "docs": True, "limit": 5, "per_ip": 20, "cool_off": 900.0, "proxies": 0, "img_src": ["'self'", "data:"],
    }
    production = security_probe(PICKWISE_VAR_DIR=str(tmp_path), PICKWISE_ENV="production", SECRET_KEY=PROD_SECRET,
                                ALLOWED_HOSTS="pickwise.example.org")
    assert production["docs"] is False


def test_security_settings_follow_the_environment(tmp_path):
    probe = security_probe(
        PICKWISE_VAR_DIR=str(tmp_path), API_DOCS_PUBLIC="false", LOGIN_FAILURE_LIMIT="8",
        LOGIN_FAILURE_LIMIT_PER_IP="50", LOGIN_LOCKOUT_MINUTES="30", TRUSTED_PROXY_COUNT="2",
        AWS_STORAGE_BUCKET_NAME="media", AWS_ACCESS_KEY_ID="key", AWS_SECRET_ACCESS_KEY="secret",
        AWS_S3_ENDPOINT_URL="https://minio.example.org:9000", CSP_EXTRA_IMG_SRC="https://cdn.example.org",
    )
    assert probe == {
        "docs": False, "limit": 8, "per_ip": 50, "cool_off": 1800.0, "proxies": 2,
        "img_src": ["'self'", "data:", "https://minio.example.org:9000", "https://*.minio.example.org:9000",
                    "https://cdn.example.org"],
    }
