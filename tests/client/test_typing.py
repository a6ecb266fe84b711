"""The client package stays ``mypy --strict`` clean (its own config in client/pyproject.toml) and ships
``py.typed``, so the types reach the code that uses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pickwise_client

CLIENT = Path(__file__).resolve().parents[2] / "client"


def test_the_client_is_mypy_strict_clean():
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "mypy", "--cache-dir=/dev/null"], cwd=CLIENT, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "strict = true" in (CLIENT / "pyproject.toml").read_text()


def test_the_installed_package_is_marked_typed():
    assert (Path(pickwise_client.__file__).parent / "py.typed").is_file()
