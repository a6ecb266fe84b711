"""Shared fixtures of the rlhf tests: a project with real rankings, exports of it, a tiny base pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotate.builder import services as template_services
from annotate.workflow import queue
from annotate.workflow.services import Submission, annotation_submit
from projects.roles import Role
from tests.annotate.factories_workflow import RANK_SCHEMA, set_workflow, task_with_images
from tests.factories import MembershipFactory, UserFactory

TINY_GENERATION = {"scheduler": "ddim", "steps": 4, "guidance": 5.0, "width": 32, "height": 32}


def rank_project(project, admin_user, *, tasks: int = 10, raters: int = 2):
    """``tasks`` prompts of four stored images, each fully ranked by ``raters`` annotators.

    Everyone prefers the images in their stored order (red > green > blue > yellow), except that the
    second rater reverses every third task, so the annotators do not always agree.
    """
    template = template_services.template_create(project=project, name="Rank", created_by=admin_user,
                                                 schema=RANK_SCHEMA, strict=True)
    version = template_services.template_version_publish(template=template, created_by=admin_user)
    set_workflow(project, template_version=version, overlap=raters)
    made = [task_with_images(project, prompt=f"a shape number {i}", store=True) for i in range(tasks)]
    order = [t.pk for t in made]
    for rater in range(raters):
        user = UserFactory(username=f"rlhf-rater{rater}", role=Role.ANNOTATOR)
        MembershipFactory(project=project, user=user, role=Role.ANNOTATOR)
        for _ in made:
            task = queue.task_next(project=project, user=user).task
            ids = [str(ti.image_id) for ti in task.task_images.order_by("position")]
            if rater == 1 and order.index(task.pk) % 3 == 0:
                ids.reverse()
            annotation_submit(project=project, user=user, task_id=task.pk, submission=Submission(
                idempotency_key=f"{user.pk}-{task.pk}", ranking=[[i] for i in ids]))
    return project


def seed_filling_every_split(project, fields) -> int:
    """A split seed that gives each split with a share at least one of the project's prompts.

    Splits hash prompt ids, which depend on what ran before in the database; with ten prompts a fixed
    seed leaves a 20% split empty about one time in ten.
    """
    from annotate.models import Prompt
    from rlhf.exports.splits import SPLITS, SplitSpec

    keys = [str(pk) for pk in Prompt.objects.filter(project=project).values_list("pk", flat=True)]
    shares = {name: float(fields[f"split_{name}"]) for name in SPLITS}
    for seed in range(1000):
        spec = SplitSpec(**shares, seed=seed)
        if {spec.assign(k) for k in keys} >= {name for name, share in shares.items() if share > 0}:
            return seed
    raise AssertionError(f"no split seed puts a prompt in every split of {shares}")


def build_export(project, user, *, worker: bool = False, **fields):
    """Build an export in this process, or (``worker=True``, with a real worker running) wait for the worker; either
    way it is finished when this returns."""
    import time

    from rlhf.datasets.services import export_request_parse, preference_export_build, preference_export_create

    fields.setdefault("split_train", 0.6)
    fields.setdefault("split_validation", 0.2)
    fields.setdefault("split_test", 0.2)
    fields.setdefault("split_seed", seed_filling_every_split(project, fields))
    export = preference_export_create(project=project, user=user, request=export_request_parse(fields))
    if not worker:
        export = preference_export_build(export_id=export.pk)
        # With a real worker running (a test that starts its own), the worker may have claimed the export's
        # queued task first: then this build leaves it to the lease holder, and we wait for that.
    deadline = time.monotonic() + 120
    while not export.is_finished:
        assert time.monotonic() < deadline, "the worker did not build the export"
        time.sleep(0.3)
        export.refresh_from_db()
    return export


@pytest.fixture
def ranked(project, admin_user):
    return rank_project(project, admin_user)


@pytest.fixture
def pairs_export(ranked, ml_engineer):
    export = build_export(ranked, ml_engineer, format="pickapic")
    assert export.status == "succeeded", export.error
    return export


@pytest.fixture
def model_cache(settings, tmp_path) -> Path:
    settings.PICKWISE_MODEL_CACHE_DIR = tmp_path / "models"
    return settings.PICKWISE_MODEL_CACHE_DIR


@pytest.fixture(scope="session")
def tiny_base_dir(tiny_pipeline_dir) -> Path:
    """The session's tiny pipeline (tests/conftest.py)."""
    return tiny_pipeline_dir


@pytest.fixture(scope="session")
def brightness_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pipeline (seed 0) whose VAE is fitted briefly, so that decoded brightness follows the latents (a
    random VAE decodes everything to one grey): what the DPO and DDPO brightness tests fine-tune. Built once per
    session (per xdist worker); read-only."""
    from generation.tiny import build_tiny_pipeline
    from rlhf.training.synthetic import fit_tiny_vae

    return fit_tiny_vae(build_tiny_pipeline(tmp_path_factory.mktemp("brightness") / "base", seed=0))


@pytest.fixture
def tiny_base(db, tiny_base_dir):
    from generation.services import model_version_register

    return model_version_register(name="tiny-base", source=str(tiny_base_dir), dtype="float32", **TINY_GENERATION)


@pytest.fixture
def outsider(db):
    """An ML engineer who is not a member of ``project``."""
    return UserFactory(username="olga-outsider", role=Role.ML_ENGINEER)


@pytest.fixture(autouse=True)
def _fresh_pipeline_cache():
    from generation import worker

    worker.reset_pipeline_cache()
    yield
    worker.reset_pipeline_cache()
