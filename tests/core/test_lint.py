"""The code base stays ruff-clean (and mypy-clean where the style guide asks for types)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_clean():
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean_where_the_style_guide_asks_for_types():
    """core/, generation/inference.py and rlhf/training/ (the list lives in pyproject.toml)."""
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
