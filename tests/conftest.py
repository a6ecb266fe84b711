"""Shared fixtures: users in each role, a project they belong to, API clients, a real worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from projects.roles import Role
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one intra-op thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): on two
    shared cores a second thread makes small kernels many times slower under load."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hashing() -> Iterator[None]:
    """Users are made in nearly every test (the role fixtures, factories, logins): PBKDF2's million rounds cost
    about a second of CPU each on a busy 2-core machine, seconds of setup per test over the whole suite.
    Session-wide, so module-scoped fixtures' users are covered too; the login and lockout code paths are the
    same whichever hasher Django uses (Django's own advice for test settings). PBKDF2 stays second, so a
    password a subprocess hashed with the real settings still checks."""
    from django.test import override_settings

    hashers = ["django.contrib.auth.hashers.MD5PasswordHasher", "django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    with override_settings(PASSWORD_HASHERS=hashers):
        yield


TEMPLATE_DATABASE = "test_pickwise_template"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None,
                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """Under pytest-xdist on PostgreSQL, the workers' test databases are copies of one migrated template
    (``CREATE DATABASE ... TEMPLATE``): the first worker to need a database migrates the template (in a
    process of its own, so no connection of this one stays on it), the others wait for it, and each then
    creates its own from it, where Django's migrate finds nothing left to apply. Migrating is most of
    making a test database (about 13 s of CPU, nearly all Django rendering model states), once instead of
    once per worker. Alone, or on SQLite, the database is made as usual."""
    import fcntl

    from django.conf import settings

    db = settings.DATABASES["default"]
    if not os.environ.get("PYTEST_XDIST_WORKER") or not db["ENGINE"].endswith("postgresql"):
        return
    shared = tmp_path_factory.getbasetemp().parent  # one folder for every worker of this run
    with open(shared / "template-database.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        ready = shared / "template-database.ready"
        if not ready.exists():
            import psycopg

            with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], password=db.get("PASSWORD"),
                                 dbname="postgres", autocommit=True) as server:
                server.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DATABASE}"')  # a run killed midway left it
                server.execute(f'CREATE DATABASE "{TEMPLATE_DATABASE}"')
            subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT,  # noqa: S603
                           env=_worker_env(TEMPLATE_DATABASE), check=True)
            ready.touch()
    db["TEST"]["TEMPLATE"] = TEMPLATE_DATABASE


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny diffusers pipeline (seed 0) every test that needs one shares, built once per session (per xdist
    worker). Read-only: a test that changes a pipeline builds its own."""
    from generation.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipeline", seed=0)


@pytest.fixture
def admin_user(db):
    return UserFactory(username="alice-admin", role=Role.ADMIN)


@pytest.fixture
def annotator(db):
    return UserFactory(username="anna-annotator", role=Role.ANNOTATOR)


@pytest.fixture
def ml_engineer(db):
    return UserFactory(username="mel-ml", role=Role.ML_ENGINEER)


@pytest.fixture
def project(admin_user, annotator, ml_engineer):
    """A project where each of the three users is a member in their own role."""
    project = ProjectFactory(name="Shapes", created_by=admin_user)
    MembershipFactory(project=project, user=admin_user, role=Role.ADMIN)
    MembershipFactory(project=project, user=annotator, role=Role.ANNOTATOR)
    MembershipFactory(project=project, user=ml_engineer, role=Role.ML_ENGINEER)
    return project


@pytest.fixture
def other_project(db):
    """A project none of the fixture users belongs to."""
    project = ProjectFactory(name="Someone else's")
    MembershipFactory(project=project, role=Role.ANNOTATOR)
    return project


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


def _worker_env(database_name: str) -> dict[str, str]:
    from django.conf import settings

    env = dict(os.environ)
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("postgresql"):
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}:{db.get('PASSWORD') or ''}@{db['HOST']}:{db['PORT']}/{database_name}"
        )
    return env


SHARED_WORKER_QUEUES = ("default", "gpu", "gpu-train")
# The shared worker of this process (one per pytest-xdist worker): control commands name it alone, never
# the workers of the kill and webhook tests, which consume queues of their own.
SHARED_WORKER = f"pytest-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}@{socket.gethostname()}"
_shared_worker = {"consuming": False}


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery worker`` process on all three queues, talking to the test database."""
    from django.conf import settings
    from django.db import connection

    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.fail("worker tests need CELERY_BROKER_URL to point at Redis; run them through `make test`")
    with django_db_blocker.unblock():
        database_name = connection.settings_dict["NAME"]
    log = open(Path(settings.VAR_DIR) / "celery-worker.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-Q", ",".join(SHARED_WORKER_QUEUES),
         "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO",
         "-n", SHARED_WORKER],
        cwd=ROOT, env=_worker_env(database_name), stdout=log, stderr=subprocess.STDOUT,
    )
    from config.celery import app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"celery worker exited with {proc.returncode}; see {log.name}")
        if app.control.ping(destination=[SHARED_WORKER], timeout=1.0):
            break
    else:
        proc.kill()
        pytest.fail("celery worker did not answer a ping within 60 s")
    _shared_worker["consuming"] = True
    yield proc
    _shared_worker["consuming"] = False
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(autouse=True)
def _worker_starts_idle(request: pytest.FixtureRequest) -> None:
    """The shared worker takes only the tasks of the tests that ask for it.

    A test without it that commits (a transactional test running worker code in its own process) would
    otherwise hand its job to the shared worker, if this process started one: the worker stops consuming
    while such tests run. A test that uses it finds it idle: messages queued meanwhile (their rows are
    gone) are purged first, and a task still running for an earlier test is stopped.
    """
    from config.celery import app

    if "celery_worker_process" not in request.fixturenames:
        if _shared_worker["consuming"]:
            for queue in SHARED_WORKER_QUEUES:
                app.control.cancel_consumer(queue, destination=[SHARED_WORKER], reply=True, timeout=5.0)
            _shared_worker["consuming"] = False
        return
    request.getfixturevalue("celery_worker_process")
    app.control.purge()
    if not _shared_worker["consuming"]:
        for queue in SHARED_WORKER_QUEUES:
            app.control.add_consumer(queue, destination=[SHARED_WORKER], reply=True, timeout=5.0)
        _shared_worker["consuming"] = True
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        replies = app.control.inspect(destination=[SHARED_WORKER], timeout=1.0).active() or {}
        running = [task["id"] for tasks in replies.values() for task in tasks]
        if not running:
            return
        app.control.revoke(running, destination=[SHARED_WORKER], terminate=True)
        time.sleep(0.5)
    pytest.fail(f"the shared worker is still running {running} from an earlier test")


CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


@dataclass(frozen=True)
class S3Server:
    """moto's S3 server on loopback (a real HTTP S3 API), with test credentials."""

    endpoint: str
    region: str = "us-east-1"
    key: str = "test-key"
    secret: str = "test-secret"  # noqa: S105

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret)

    def storage_options(self) -> dict[str, Any]:
        """What fsspec's s3fs (``datasets``, pandas) takes to read from it."""
        return {"key": self.key, "secret": self.secret,
                "client_kwargs": {"endpoint_url": self.endpoint, "region_name": self.region}}


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    yield S3Server(endpoint=endpoint)
    # moto keeps its buckets in this process, not in the server: empty them for the next test's server.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30)  # noqa: S310
    server.stop()


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread for the whole session;
    # the ORM calls that tests (and database teardown) make meanwhile are plain synchronous calls.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    """A fresh browser tab whose relative URLs resolve against the live test server."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    yield tab
    context.close()


def browser_login(page, user, password: str) -> None:
    page.goto("/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/")
