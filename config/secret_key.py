"""The production start-up check of ``SECRET_KEY``: long, random-looking and published nowhere.

Django signs sessions, password-reset links and CSRF tokens with ``SECRET_KEY``, and Pickwise also
derives the arena's blind assignments from it, so anyone who knows the key can forge a login. A key
that was ever written into the code base is public: it is in every clone and in the history for good.
The check refuses, each with an ``ImproperlyConfigured`` that names ``SECRET_KEY`` and says why:

1. an empty key, fewer than 50 characters, or fewer than 5 distinct ones (Django's own deploy check);
2. a key whose SHA-256 is in :data:`PUBLISHED_KEY_SHA256`, every key committed to the repository so
   far (examples, the development key, test and build keys), kept as digests so that a scan of the
   code finds no usable key in this file; ``tests/core/test_secret_key.py`` walks the git history and
   fails when a committed key is missing here (or still in the tree, where rule 4 refuses it);
3. a key that reads as a placeholder (``change-me``, ``insecure``, ``example``, ...);
4. a key that appears in any text file of the deployed code (:func:`find_in_source`), which catches
   a key committed after this list was last updated. Files that git and Docker ignore and that are
   meant to hold the operator's secrets (``.env``, ``*.local.env``) and data directories are skipped.

Development mode uses a fixed key and skips the check.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

GENERATE_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(64))'"
MIN_LENGTH = 50
MIN_DISTINCT = 5

PUBLISHED_KEY_SHA256 = frozenset({
    "82c0e0b98e10175ec088658d9f42b8d7666c683fdfe69b411234e51290a83ffa",  # the development key (settings)
    "704c171716051d59ed5e3f75862001e4eb14d7a0f88d9cd0aacffe4e37509ded",  # docker/pickwise.env's example
    "ebceef95fd419001d8a375f595ca81faf35e769f307f2cbfe95a3cb98bb9806f",  # docker/Dockerfile's build key
    "05d6787001c396af317b16eb2db576f4385f5c122612cf37481aa3dd7e249501",  # tests/core/test_settings.py
})
PLACEHOLDER_WORDS = ("change-me", "changeme", "change_me", "insecure", "example", "placeholder", "your-secret",
                     "not-used", "dummy")

# Where the deployed code never keeps source: data, caches, environments, collected static files.
SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", "var", "media", "staticfiles",
                       ".mypy_cache", ".ruff_cache", ".pytest_cache", ".gl"})
# Binary formats in the tree (weights, images, archives, compiled files); everything else is read.
BINARY_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".png", ".jpg", ".jpeg",
                             ".gif", ".webp", ".ico", ".zip", ".gz", ".tar", ".whl", ".parquet", ".arrow",
                             ".pyc", ".so", ".sqlite3", ".woff", ".woff2", ".ttf", ".pdf"})
MAX_SCANNED_BYTES = 4 * 1024 * 1024


def is_operator_secrets_file(name: str) -> bool:
    """Files that git and the Docker build ignore, where an operator keeps their own settings."""
    return name == ".env" or name.endswith(".local.env")


def find_in_source(key: str, root: Path) -> Path | None:
    """The first text file under ``root`` (relative path) that contains ``key``, or None."""
    needle = key.encode()
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(directory) / name
            if is_operator_secrets_file(name) or path.suffix.lower() in BINARY_SUFFIXES or path.is_symlink():
                continue
            try:
                if path.stat().st_size > MAX_SCANNED_BYTES:
                    continue
                if needle in path.read_bytes():
                    return path.relative_to(root)
            except OSError:
                continue
    return None


def check_secret_key(key: str, *, source_root: Path) -> None:
    """Raise ``ImproperlyConfigured`` (naming ``SECRET_KEY``) unless ``key`` may sign production data."""
    if not key:
        raise ImproperlyConfigured(
            f"SECRET_KEY: must be set to a private value when PICKWISE_ENV=production; {GENERATE_HINT}"
        )
    if len(key) < MIN_LENGTH or len(set(key)) < MIN_DISTINCT:
        raise ImproperlyConfigured(
            f"SECRET_KEY: must be at least {MIN_LENGTH} characters with at least {MIN_DISTINCT} different ones "
            f"in production; {GENERATE_HINT}"
        )
    if hashlib.sha256(key.encode()).hexdigest() in PUBLISHED_KEY_SHA256:
        raise ImproperlyConfigured(
            "SECRET_KEY: this key was published in Pickwise's repository (an example, test or development key), "
            f"so anyone can forge logins with it; {GENERATE_HINT}"
        )
    lowered = key.lower()
    for word in PLACEHOLDER_WORDS:
        if word in lowered:
            raise ImproperlyConfigured(
                f"SECRET_KEY: looks like a placeholder (it contains {word!r}), not a random key; {GENERATE_HINT}"
            )
    found = find_in_source(key, source_root)
    if found is not None:
        raise ImproperlyConfigured(
            f"SECRET_KEY: this key appears in {found.as_posix()} in the application's code, so it is public; "
            f"keep the key out of the code (the environment, docker/.env or a *.local.env file) and {GENERATE_HINT}"
        )
