"""Production refuses every SECRET_KEY that is short, a placeholder, or anywhere in the repository."""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.secret_key import check_secret_key, find_in_source

ROOT = Path(__file__).resolve().parents[2]
# Strings a commit assigned on a line that names a secret: NAME=value, NAME: value, NAME = "value".
ASSIGNED = re.compile(r"""(?i)secret\w*["']?\s*[:=]\s*["']?([^\s"'$`(){}]{50,})""")


def refusal(key: str, root: Path) -> str:
    with pytest.raises(ImproperlyConfigured) as caught:
        check_secret_key(key, source_root=root)
    message = str(caught.value)
    assert message.startswith("SECRET_KEY: "), message
    return message


def committed_secret_values() -> set[str]:
    """Every value of 50+ characters that a commit of this branch's history assigned to a secret."""
    log = subprocess.run(
        ["git", "log", "-p", "--no-color", "--format=", "--regexp-ignore-case", "-G", "secret", "HEAD"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    values = set()
    for line in log.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            values.update(ASSIGNED.findall(line))
    return values


def test_every_key_ever_committed_is_refused():
    """Keys removed from the tree stay public in the history; PUBLISHED_KEY_SHA256 must list them."""
    values = committed_secret_values()
    assert "change-me-to-a-long-random-string-of-at-least-fifty-characters-0000" in values  # the old example
    assert "dev-insecure-pickwise-key-change-me-0123456789abcdefghijklmnop" in values  # the development key
    for value in sorted(values):
        refusal(value, ROOT)
    # Built by an expression in an older tests/core/test_settings.py, so no line holds it whole.
    refusal("x" * 20 + "-prod-secret-for-tests-" + "y" * 20, ROOT)


def test_published_keys_are_refused_even_once_gone_from_the_tree(tmp_path):
    message = refusal("build-only-collectstatic-key-not-used-at-run-time-0123456789", tmp_path)
    assert "published in Pickwise's repository" in message


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "must be set"),
        ("a1" * 24, "at least 50 characters"),
        ("abcd" * 20, "at least 5 different"),
        ("django-insecure-" + secrets.token_urlsafe(48), "placeholder"),
        ("please-change-me-" + secrets.token_urlsafe(48), "placeholder"),
    ],
    # Fixed ids: the keys are drawn per process, and parallel workers must collect the same test names.
    ids=["empty", "short", "few-characters", "django-insecure-prefix", "please-change-me-prefix"],
)
def test_weak_keys_are_refused_naming_why(tmp_path, key, reason):
    assert reason in refusal(key, tmp_path)


def test_a_key_written_into_the_code_is_refused_naming_the_file(tmp_path):
    key = secrets.token_urlsafe(64)
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "pickwise.env").write_text(f"PICKWISE_ENV=production\nSECRET_KEY={key}\n")
    message = refusal(key, tmp_path)
    assert "appears in docker/pickwise.env" in message


def test_operator_secret_files_and_data_directories_are_not_code(tmp_path):
    key = secrets.token_urlsafe(64)
    for path in (".env", "docker/.env", "docker/pickwise.local.env", "var/keys.txt", ".git/config"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(f"SECRET_KEY={key}\n")
    assert find_in_source(key, tmp_path) is None
    check_secret_key(key, source_root=tmp_path)


def test_a_fresh_random_key_passes_against_this_repository():
    check_secret_key(secrets.token_urlsafe(64), source_root=ROOT)
