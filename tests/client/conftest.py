"""Fixtures of the client tests: the live test server (pytest-django's ``live_server``, real HTTP on
loopback against the test database) and a ``pickwise_client.Client`` per role."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pickwise_client import Client

from tests.factories import PASSWORD
from tests.rlhf.conftest import TINY_GENERATION, rank_project


@pytest.fixture(autouse=True)
def _no_saved_login(tmp_path, monkeypatch):
    """Nothing from the developer's own environment or ``pickwise login``: every client is explicit."""
    for name in ("PICKWISE_URL", "PICKWISE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PICKWISE_CONFIG", str(tmp_path / "config" / "pickwise.json"))
    monkeypatch.setenv("PICKWISE_CACHE_DIR", str(tmp_path / "cache"))


def token_for(user) -> str:
    from rest_framework.authtoken.models import Token

    return Token.objects.get_or_create(user=user)[0].key


@pytest.fixture
def connect(live_server) -> Iterator[Callable[..., Client]]:
    """``connect(user)``: a client of the live server with ``user``'s API token."""
    made: list[Client] = []

    def make(user, **options) -> Client:
        client = Client(live_server.url, token_for(user), **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def admin_api(connect, project, admin_user) -> Client:
    return connect(admin_user)


@pytest.fixture
def annotator_api(connect, project, annotator) -> Client:
    return connect(annotator)


@pytest.fixture
def ml_api(connect, project, ml_engineer) -> Client:
    return connect(ml_engineer)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_in_workers():
    """A worker process this session starts renders the tiny models on one thread (threads only slow them
    down on a busy two-core machine); the generation tests set the same."""
    os.environ.setdefault("GENERATION_TORCH_THREADS", "1")


@pytest.fixture
def ranked(project, admin_user):
    """The project with ten tasks of four stored images, each ranked by two annotators."""
    return rank_project(project, admin_user)


@pytest.fixture(scope="session")
def tiny_base_dir(tiny_pipeline_dir) -> Path:
    """The session's tiny pipeline (tests/conftest.py)."""
    return tiny_pipeline_dir


@pytest.fixture
def tiny_base(db, tiny_base_dir):
    """A tiny diffusers pipeline registered as the model version ``tiny-base``."""
    from generation.services import model_version_register

    return model_version_register(name="tiny-base", source=str(tiny_base_dir), dtype="float32", **TINY_GENERATION)


__all__ = ["PASSWORD", "token_for"]
