"""Dependencies point one way (core <- projects <- generation <- annotate <- rlhf, the loop on top) and the
ML code stays Django-free: import-linter's contracts in pyproject.toml, run with the suite."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_import_contract_is_kept():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert {c["id"] for c in contracts} >= {"apps", "rlhf", "annotate", "generation", "ml-is-django-free",
                                            "ml-is-below-the-apps"}
    result = subprocess.run(  # noqa: S603
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache", "--no-logo"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"Contracts: {len(contracts)} kept, 0 broken\.", result.stdout), result.stdout
