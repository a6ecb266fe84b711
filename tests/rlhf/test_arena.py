"""The blind arena: blind order, votes mapped to versions, win rate and leaderboard against hand-computed votes."""

from __future__ import annotations

import math

import pytest
from django.test import Client

from core.exceptions import PermissionDeniedError
from generation.models import GeneratedImage, GenerationJob, ModelVersion
from projects.roles import Role
from rlhf.loop import stats
from rlhf.loop.arena import arena_comparison_add, arena_create, arena_next, arena_results, arena_vote
from rlhf.models import Arena, ArenaVote
from tests.factories import PASSWORD, UserFactory

PROMPT = "a large red circle in the center on a white background"


def version(name: str) -> ModelVersion:
    return ModelVersion.objects.create(name=name, source="tests/fixtures/none", dtype="float32")


def image(project, model_version: ModelVersion, seed: int) -> GeneratedImage:
    job = GenerationJob.objects.create(project=project, model_version=model_version, prompt=PROMPT, params={},
                                       params_hash="0" * 64, num_images=1, seeds=[seed], status="succeeded")
    return GeneratedImage.objects.create(
        job=job, index=0, model_version=model_version, prompt=PROMPT, seed=seed, params={},
        storage_key=f"arena-test/{model_version.pk}/{seed}.png", sha256="0" * 64, width=8, height=8,
        size_bytes=1, generation_seconds=0.0)


def comparisons(arena, project, first, second, seeds):
    return [arena_comparison_add(arena=arena, prompt=PROMPT, seed=s, image_a=image(project, first, s),
                                 image_b=image(project, second, s)) for s in seeds]


def vote_for(arena, user, wanted: ModelVersion | None) -> ArenaVote:
    """Vote the way a person would: by looking at which side shows the wanted version's image."""
    matchup = arena_next(arena=arena, user=user)
    choice = "tie" if wanted is None else ("left" if matchup.left.model_version_id == wanted.pk else "right")
    return arena_vote(arena=arena, user=user, comparison_id=matchup.comparison.pk, choice=choice)


def test_win_rate_and_wilson_interval_by_hand():
    rate = stats.win_rate(7, 2, 1)
    assert rate.rate == 0.75 and rate.n == 10
    assert rate.low == pytest.approx(0.44218, abs=1e-4) and rate.high == pytest.approx(0.91906, abs=1e-4)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    paired = stats.paired_win_rate([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 5.0, 1.0])
    assert (paired.wins, paired.losses, paired.ties) == (2, 1, 1)


def test_paired_difference_and_its_t_interval_by_hand():
    change = stats.paired_difference([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 5.0, 1.0])  # differences 1, 0, -2, 3
    half = 3.182446 * math.sqrt(13 / 3) / 2  # t(0.975, 3 df) x sample std / sqrt(n)
    assert change.mean == 0.5 and change.n == 4
    assert change.low == pytest.approx(0.5 - half, abs=1e-5) and change.high == pytest.approx(0.5 + half, abs=1e-5)
    assert stats.paired_difference([True, True], [False, True]).as_dict()["mean"] == 0.5  # a pass-rate change
    one = stats.paired_difference([2.0], [1.0])
    assert (one.mean, one.low, one.high) == (1.0, None, None)  # one pair has no spread to size an interval with
    with pytest.raises(ValueError, match="3 new scores but 2 old"):
        stats.paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="no pairs"):
        stats.paired_difference([], [])


def test_arena_votes_win_rate_and_leaderboard_against_hand_computed_votes(project, admin_user, annotator):
    old, new = version("arena-old"), version("arena-new")
    arena = arena_create(project=project, user=admin_user, versions=[old, new])
    comparisons(arena, project, new, old, range(10))
    sides = set()
    for wanted in [new] * 7 + [old] * 2 + [None]:
        vote = vote_for(arena, annotator, wanted)
        sides.add(vote.a_shown_left)
        assert vote.winner == ("tie" if wanted is None else "a" if wanted == old else "b")
    assert sides == {True, False}  # the blind order varies between comparisons
    assert arena_next(arena=arena, user=annotator) is None
    again = arena_vote(arena=arena, user=annotator, comparison_id=vote.comparison_id, choice="left")
    assert again.pk == vote.pk and ArenaVote.objects.count() == 10  # a double click stores nothing

    results = arena_results(arena=arena)
    assert results.votes == 10
    [h2h] = results.head_to_head
    assert (h2h["version"], h2h["against"], h2h["wins"], h2h["losses"], h2h["ties"]) == ("arena-new", "arena-old",
                                                                                           7, 2, 1)
    assert h2h["rate"] == 0.75 and h2h["low"] == pytest.approx(0.44218, abs=1e-4)
    top, bottom = results.leaderboard
    assert top["version"] == "arena-new" and (top["wins"], top["losses"], top["ties"]) == (7, 2, 1)
    # Two versions: the Bradley-Terry odds are (wins + ties/2 + prior) / (losses + ties/2 + prior)
    assert top["strength"] / bottom["strength"] == pytest.approx(7.6 / 2.6, rel=1e-6)
    assert top["rating"] - bottom["rating"] == pytest.approx(400 * math.log10(7.6 / 2.6), rel=1e-6)


def test_leaderboard_orders_every_version_compared():
    votes = ([stats.Vote(1, 2, "b")] * 6 + [stats.Vote(1, 2, "a")] * 2 + [stats.Vote(2, 3, "b")] * 5
             + [stats.Vote(1, 3, "b")] * 4 + [stats.Vote(1, 3, "tie")])
    board = stats.leaderboard(votes)
    assert [row.version for row in board] == [3, 2, 1]
    assert [(row.wins, row.losses, row.ties) for row in board] == [(9, 0, 1), (6, 7, 0), (2, 10, 1)]
    assert math.prod(row.strength for row in board) == pytest.approx(1.0)  # geometric mean 1


def test_only_annotators_of_the_project_vote(project, admin_user, ml_engineer, annotator, other_project):
    old, new = version("arena-a"), version("arena-b")
    arena = arena_create(project=project, user=admin_user, versions=[old, new])
    [comparison] = comparisons(arena, project, old, new, [3])
    with pytest.raises(PermissionDeniedError):
        arena_create(project=project, user=annotator, versions=[old, new])
    for user in (ml_engineer, other_project.memberships.first().user):
        with pytest.raises(PermissionDeniedError):
            arena_vote(arena=arena, user=user, comparison_id=comparison.pk, choice="left")
    assert not ArenaVote.objects.exists()


def test_arena_pages(project, admin_user, annotator, ml_engineer):
    old, new = version("arena-c"), version("arena-d")
    arena = arena_create(project=project, user=admin_user, versions=[old, new])
    [comparison] = comparisons(arena, project, old, new, [5])
    browser = Client()
    assert browser.login(username=annotator.username, password=PASSWORD)
    url = f"/ml/projects/{project.pk}/arena/"
    page = browser.get(url).content.decode()
    assert "arena-c" not in page and "arena-d" not in page and page.count("<img") == 2  # blind
    fragment = browser.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in fragment and fragment.count("<img") == 2
    response = browser.post(url, {"comparison": comparison.pk, "choice": "tie"})
    assert response.status_code == 303 and ArenaVote.objects.get().winner == "tie"
    assert "No comparisons left" in browser.get(url).content.decode()
    browser.logout()
    assert browser.login(username=ml_engineer.username, password=PASSWORD)
    results = browser.get(f"/ml/projects/{project.pk}/arena/results/").content.decode()
    assert "arena-c" in results and "arena-d" in results and "Leaderboard" in results


def test_admins_set_up_an_arena_in_the_browser_and_a_gpu_task_fills_it(
    project, admin_user, annotator, tiny_base, tiny_base_dir, django_capture_on_commit_callbacks
):
    from generation.services import model_version_register
    from rlhf import tasks
    from tests.rlhf.conftest import TINY_GENERATION

    other = model_version_register(name="tiny-other", source=str(tiny_base_dir), dtype="float32",
                                   **{**TINY_GENERATION, "guidance": 2.0})
    url = f"/ml/projects/{project.pk}/arena/setup/"
    valid = {"versions": [tiny_base.pk, other.pk], "prompts": "a red circle\n\na blue square\n", "seeds": "3, 4"}
    voter = Client()  # a member who may not manage the project: refused, and told so
    assert voter.login(username=annotator.username, password=PASSWORD)
    assert voter.get(url).status_code == 403 and voter.post(url, valid).status_code == 403
    stranger = Client()  # not a member: the project does not exist for them
    stranger.force_login(UserFactory(username="arena-stranger", role=Role.ADMIN))
    assert stranger.get(url).status_code == 404 and stranger.post(url, valid).status_code == 404

    browser = Client()
    assert browser.login(username=admin_user.username, password=PASSWORD)
    assert "Make this project an arena" in browser.get(url).content.decode()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        one = browser.post(url, {**valid, "versions": [tiny_base.pk]})
        bad_seed = browser.post(url, {**valid, "seeds": "3, x"})
        long_line = browser.post(url, {**valid, "prompts": "ok\n" + "y" * 1001})
        empty = browser.post(url, {**valid, "prompts": ""})
    assert one.status_code == 400 and "at least two model versions" in one.content.decode()
    assert bad_seed.status_code == 400 and "Seeds: &#x27;x&#x27; is not a whole number" in bad_seed.content.decode()
    assert long_line.status_code == 400 and "Line 2: a prompt has at most 1000 characters" in long_line.content.decode()
    assert empty.status_code == 400 and "Give at least one prompt" in empty.content.decode()
    assert callbacks == [] and not Arena.objects.filter(project=project).exists()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert browser.post(url, valid).status_code == 303
    arena = Arena.objects.get(project=project)
    assert set(arena.versions.all()) == {tiny_base, other} and len(callbacks) == 1
    # What the queued gpu task does (run here in the test process); a repeat finds it done.
    generation = arena.generations.get()
    assert generation.prompts == ["a red circle", "a blue square"] and generation.seeds == [3, 4]
    assert tasks.arena_generate_comparisons(generation.pk)["status"] == "succeeded"
    assert tasks.arena_generate_comparisons(generation.pk)["status"] == "succeeded"
    generation.refresh_from_db()
    assert generation.attempts == 1 and generation.prompts_done == 2 and generation.progress == 1.0
    assert arena.comparisons.count() == 4
    page = browser.get(url).content.decode()
    assert "This project is an arena" in page and "4 comparisons ready" in page
    matchup = arena_next(arena=arena, user=annotator)
    assert {matchup.left.model_version_id, matchup.right.model_version_id} == {tiny_base.pk, other.pk}
    assert matchup.left.seed == matchup.right.seed and matchup.left.prompt == matchup.right.prompt
