"""A pytest plugin for running the suite in parallel with pytest-xdist (``make test`` does, ``-n``).

Loaded with ``-p tests.parallel`` (``pyproject.toml``'s addopts), so it runs before pytest-django reads the
settings. In an xdist worker process (``PYTEST_XDIST_WORKER=gw<n>``) it gives the worker a world of its own:

- its own Redis databases for the Celery broker and results (2 + 2n and 3 + 2n of the server
  ``tests/services.sh`` starts), so the real ``celery worker`` process each worker starts consumes only
  that worker's tasks;
- its own ``PICKWISE_VAR_DIR`` (media, exports, model caches), so two workers' job 1 never share files.

pytest-django already gives each worker its own test database (``test_pickwise_gw<n>``), and live servers
listen on a free port each. Outside xdist, and for settings not pointing at Redis, it changes nothing.
"""

from __future__ import annotations

import os
import re

import pytest

_REDIS_DB = re.compile(r"^(rediss?://[^/]*)(?:/(\d*))?$")


def _redis_db(url: str, db: int) -> str:
    match = _REDIS_DB.match(url)
    return f"{match.group(1)}/{db}" if match else url


def _isolate_worker(worker: str) -> None:
    number = int(worker.removeprefix("gw") or 0)
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if broker.startswith(("redis://", "rediss://")):
        os.environ["CELERY_BROKER_URL"] = _redis_db(broker, 2 + 2 * number)
        os.environ["CELERY_RESULT_BACKEND"] = _redis_db(os.environ.get("CELERY_RESULT_BACKEND") or broker,
                                                        3 + 2 * number)
    # Three workers share two cores: a second intra-op thread only makes torch's kernels wait on each other
    # (a seeded demo's renders took minutes under load). Set before torch loads; children inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    var_dir = os.environ.get("PICKWISE_VAR_DIR")
    if var_dir:
        os.environ["PICKWISE_VAR_DIR"] = os.path.join(var_dir, worker)
        os.makedirs(os.environ["PICKWISE_VAR_DIR"], exist_ok=True)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Make ``xdist_group`` work in an xdist worker.

    ``--dist loadgroup`` sends the tests of one ``xdist_group`` to one worker by the ``@group`` suffix that
    pytest-xdist 3.8 appends to each test's ``_nodeid``; pytest 9.2 reads a node's id from ``_id`` instead,
    so the suffix never showed and grouped tests spread over every worker (each making its module's
    fixtures again: the distributed module's four launches, twice a run). Here the suffix goes where pytest
    reads it; a pytest or xdist that already carries it is left alone."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not config.getvalue("loadgroup"):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        groups = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                         for mark in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid and isinstance(getattr(item, "_id", None), NodeId):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")


if os.environ.get("PYTEST_XDIST_WORKER"):
    _isolate_worker(os.environ["PYTEST_XDIST_WORKER"])
