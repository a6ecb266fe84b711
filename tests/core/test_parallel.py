"""The suite's own xdist plugin (tests/parallel.py): an ``xdist_group`` runs on one worker. Checked in a small
pytest run of its own, since a broken group shows only as a slower suite (pytest 9.2 and pytest-xdist 3.8
disagreed on where a test's id lives, and the groups quietly spread)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TESTS = '''
import os
from pathlib import Path

import pytest

OUT = Path(os.environ["GROUP_CHECK_OUT"])
pytestmark = pytest.mark.xdist_group("together")


@pytest.fixture(scope="module")
def made_once():
    with (OUT / "fixture").open("a") as handle:
        handle.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")


@pytest.mark.parametrize("n", range(6))
def test_grouped(made_once, n):
    (OUT / f"grouped-{n}").write_text(os.environ["PYTEST_XDIST_WORKER"])
'''

def run(tmp_path: Path, workers: int, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "out").mkdir()
    env = {**os.environ, "GROUP_CHECK_OUT": str(tmp_path / "out"), "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_XDIST_WORKER", None)  # the inner run's controller is no worker of ours
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "pytest", "-p", "tests.parallel", "-p", "no:cacheprovider", "-p", "no:django", "-c", os.devnull,
         "--rootdir", str(tmp_path), "-n", str(workers), "--dist", "loadgroup", "-q",
         str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_group_runs_on_one_worker_and_makes_its_module_fixture_once(tmp_path):
    done = run(tmp_path, 3, {"test_grouped.py": TESTS})
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    assert len({(out / f"grouped-{n}").read_text() for n in range(6)}) == 1
    assert len((out / "fixture").read_text().split()) == 1
