"""Simulated annotators: preference registry, Bradley-Terry noise, and the queue worked exactly as people do."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.management import call_command
from PIL import Image

from annotate.builder import services as template_services
from annotate.models import Annotation, AnnotationTask, TaskAssignment
from annotate.workflow.services import project_update_settings, task_create
from core.exceptions import PermissionDeniedError
from generation.models import GenerationJob
from projects.roles import Role
from rlhf.loop.simulate import annotators_simulate, simulated_annotators_ensure
from rlhf.loop.stats import ranking_label_counts
from rlhf.preferences import (
    SimulationConfig,
    brighter,
    build_preference,
    expected_label_accuracy,
    larger_shapes,
    noisy_ranking,
    shape_centred,
    temperature_for_label_accuracy,
    warmer,
)
from tests.annotate.factories_workflow import RANK_SCHEMA, task_with_images
from tests.factories import MembershipFactory, UserFactory
from tests.rlhf.conftest import TINY_GENERATION


def square(side: int, *, at: tuple[int, int] = (32, 32), colour=(220, 30, 30), size: int = 64) -> Image.Image:
    pixels = np.full((size, size, 3), 245, dtype=np.uint8)
    y, x = at
    pixels[y - side // 2 : y + side // 2, x - side // 2 : x + side // 2] = colour
    return Image.fromarray(pixels)


def redness(image: Image.Image, prompt: str) -> float:
    """A user's own preference, named by its dotted path."""
    return float(np.asarray(image.convert("RGB"), dtype=float)[..., 0].mean())


def test_builtin_preferences_score_what_they_say():
    assert larger_shapes(square(24), "") > larger_shapes(square(12), "") > larger_shapes(square(0), "") == 0.0
    assert larger_shapes(square(24), "") == pytest.approx(24 * 24 / 64**2)
    assert brighter(square(2, colour=(250, 250, 250)), "") > brighter(square(30, colour=(10, 10, 10)), "")
    assert shape_centred(square(12), "") > 0.95 > shape_centred(square(12, at=(8, 8)), "")
    assert warmer(square(24, colour=(220, 30, 30)), "") > warmer(square(12, colour=(220, 30, 30)), "") > 0
    assert warmer(square(24, colour=(40, 80, 220)), "") < 0
    assert warmer(square(64, colour=(255, 0, 0)), "") == 1.0


def test_preferences_by_name_or_dotted_path_validated_when_the_config_is_built():
    assert build_preference("brighter") is brighter
    assert build_preference("tests.rlhf.test_simulated_annotators:redness") is redness
    assert build_preference("tests.rlhf.test_simulated_annotators.redness") is redness
    assert SimulationConfig(preference="tests.rlhf.test_simulated_annotators:redness").preference_fn() is redness
    for bad in ("largest", "tests.rlhf.nope:fn", "tests.rlhf.test_simulated_annotators:missing"):
        with pytest.raises(ValueError, match="preference"):
            SimulationConfig(preference=bad)
    with pytest.raises(ValueError, match="temperature"):
        SimulationConfig(temperature=-1)


def test_noisy_ranking_is_bradley_terry_at_the_temperature():
    rng = np.random.default_rng(0)
    assert noisy_ranking([0.1, 0.9, 0.5], temperature=0, rng=rng) == [1, 2, 0]
    draws = 4000
    first = sum(noisy_ranking([1.0, 0.0], temperature=1.0, rng=rng)[0] == 0 for _ in range(draws)) / draws
    assert abs(first - 1 / (1 + np.exp(-1.0))) < 0.03  # P(i above j) = sigmoid((s_i - s_j) / T)
    cold = sum(noisy_ranking([1.0, 0.0], temperature=0.05, rng=rng)[0] == 0 for _ in range(200))
    assert cold == 200


def test_label_accuracy_is_calibrated_to_a_temperature_on_the_pairs_score_differences():
    sigmoid = 1 / (1 + np.exp(-1.0))
    # Ties have no right label and are left out; the rest average sigmoid(|d| / T), whichever way round.
    assert expected_label_accuracy([1.0, -1.0, 0.0], 1.0) == pytest.approx(sigmoid)
    assert expected_label_accuracy([2.0, 0.5], 0.5) == pytest.approx((1 / (1 + np.exp(-4)) + sigmoid) / 2)
    assert temperature_for_label_accuracy([1.0, -1.0, 0.0], sigmoid) == pytest.approx(1.0, rel=1e-6)
    assert temperature_for_label_accuracy([0.01, 0.02], 1.0) == 0.0  # rank by score
    assert temperature_for_label_accuracy([0.01, 0.02], 0.5) == float("inf")  # labels of pure noise
    # The same accuracy is the same noise whatever the preference's units: the temperature scales with them.
    rng = np.random.default_rng(0)
    small = rng.normal(size=200) * 0.003
    assert temperature_for_label_accuracy(small * 1000, 0.7) == pytest.approx(
        1000 * temperature_for_label_accuracy(small, 0.7), rel=1e-6)
    for bad in (0.4, 1.2, float("nan")):
        with pytest.raises(ValueError, match="label_accuracy must be from 0.5"):
            temperature_for_label_accuracy(small, bad)
    with pytest.raises(ValueError, match="same score"):
        temperature_for_label_accuracy([0.0, 0.0], 0.6)


def test_rankings_at_the_calibrated_temperature_reach_the_label_accuracy():
    rng = np.random.default_rng(1)
    tasks = [dict(zip("abcd", rng.uniform(0, 0.2, size=4), strict=True)) for _ in range(1500)]
    differences = [s[x] - s[y] for s in tasks for i, x in enumerate("abcd") for y in "abcd"[i + 1:]]
    for target in (0.6, 0.85):
        temperature = temperature_for_label_accuracy(differences, target)
        right = judged = 0
        for scores in tasks:
            order = noisy_ranking(list(scores.values()), temperature=temperature, rng=rng)
            counts = ranking_label_counts([["abcd"[i]] for i in order], scores)
            right, judged = right + counts[0], judged + counts[1]
        assert judged == 6 * len(tasks) and abs(right / judged - target) < 0.015
    # At an infinite temperature the order is a fair draw, whatever the scores.
    firsts = sum(noisy_ranking([1.0, 0.0], temperature=float("inf"), rng=rng)[0] == 0 for _ in range(2000))
    assert abs(firsts / 2000 - 0.5) < 0.04


def test_label_counts_cover_the_pairs_a_ranking_orders():
    scores = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 2.0}
    # a>b right, a>c right, a>d right, b>c wrong, b>d wrong; c and d score alike: no right answer.
    assert ranking_label_counts([["a"], ["b"], ["c"], ["d"]], scores) == (3, 5)
    # best-of-n: the chosen image above each other one; the others share last place, unordered.
    assert ranking_label_counts([["b"]], scores) == (0, 3)
    assert ranking_label_counts([["a", "b"], ["c", "d"]], scores) == (2, 4)  # a tie group orders nothing inside


def _generate_project(project, admin_user, tiny_base, *, tasks: int, overlap: int):
    template = template_services.template_create(project=project, name="Rank", created_by=admin_user,
                                                 schema=RANK_SCHEMA, strict=True)
    version = template_services.template_version_publish(template=template, created_by=admin_user)
    project_update_settings(project=project, template_version=version, overlap=overlap, images_per_task=4,
                            generation_settings=TINY_GENERATION, model_version_ids=[tiny_base.pk])
    project.refresh_from_db()
    for i in range(tasks):
        task_create(project=project, prompt_text=f"a large red circle number {i}", created_by=admin_user)
    return project


def test_simulated_annotators_generate_rank_and_respect_overlap(project, admin_user, tiny_base, model_cache):
    project = _generate_project(project, admin_user, tiny_base, tasks=3, overlap=2)
    users = simulated_annotators_ensure(project=project, count=3)
    report = annotators_simulate(project=project, users=users,
                                 config=SimulationConfig(preference="brighter", temperature=0))
    assert report.annotations == 6 and report.generation_jobs == 3  # images made once, by the first taker
    assert GenerationJob.objects.filter(project=project, status="succeeded").count() == 3
    for task in AnnotationTask.objects.filter(project=project):
        answers = list(Annotation.objects.filter(task=task))
        assert len(answers) == 2 and len({a.annotator_id for a in answers}) == 2  # overlap, never twice
        assert task.taken_count == 2 and not task.is_open
        for answer in answers:
            assert "brighter" in answer.rationale
            ids = answer.ranked_image_ids()
            assert sorted(ids) == sorted(str(i.image_id) for i in task.task_images.all())
    assert not TaskAssignment.objects.filter(project=project, status="active").exists()
    # at T=0 every ranking follows the preference: the first image is the brightest
    from rlhf.loop.simulate import _load_image

    answer = Annotation.objects.filter(project=project).select_related("task").first()
    keys = {str(i.image_id): i.image.storage_key for i in answer.task.task_images.select_related("image")}
    scores = [brighter(_load_image(keys[i]), "") for i in answer.ranked_image_ids()]
    assert scores == sorted(scores, reverse=True)


def test_simulated_annotators_are_refused_where_people_are(project, admin_user, ml_engineer, other_project,
                                                            tiny_base):
    project = _generate_project(project, admin_user, tiny_base, tasks=1, overlap=1)
    outsider = UserFactory(username="sim-outsider", role=Role.ANNOTATOR)
    MembershipFactory(project=other_project, user=outsider, role=Role.ANNOTATOR)
    no_group = UserFactory(username="sim-no-group")  # a member without the annotator group
    MembershipFactory(project=project, user=no_group, role=Role.ANNOTATOR)
    config = SimulationConfig(preference="brighter")
    for user in (ml_engineer, outsider, no_group):
        with pytest.raises(PermissionDeniedError):
            annotators_simulate(project=project, users=[user], config=config)
    assert not TaskAssignment.objects.filter(project=project).exists()
    assert not GenerationJob.objects.filter(project=project).exists()


def test_command_works_a_queue_of_stored_images(project, admin_user):
    template = template_services.template_create(project=project, name="Rank", created_by=admin_user,
                                                 schema=RANK_SCHEMA, strict=True)
    version = template_services.template_version_publish(template=template, created_by=admin_user)
    project_update_settings(project=project, template_version=version, overlap=3)
    for i in range(2):
        task_with_images(project, prompt=f"stored {i}", store=True)
    call_command("simulate_annotators", project=project.pk, annotators=3, preference="larger_shapes",
                 temperature=0.5, seed=1, stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert Annotation.objects.filter(project=project).count() == 6
    assert Annotation.objects.filter(project=project, annotator__username="sim-annotator-3").count() == 2
