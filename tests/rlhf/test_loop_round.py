"""A reduced round runs through every stage and registers a version whose lineage points at the round; the next
round continues its LoRA."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from django.test import Client

from annotate.builder import services as template_services
from annotate.models import Annotation, AnnotationTask
from annotate.workflow.services import project_update_settings, task_create
from core.exceptions import ApplicationError
from generation.models import GenerationJob
from projects.roles import Role
from rlhf import tasks
from rlhf.loop.rounds import (
    RoundConfig,
    project_current_version,
    round_annotator_seed,
    round_image_seeds,
    round_reward_preset,
    round_run,
)
from rlhf.models import LoopRound, RunStatus, VersionEvaluation
from rlhf.runs.paths import export_data_path
from rlhf.training.data import iter_rows
from tests.annotate.factories_workflow import RANK_SCHEMA
from tests.factories import PASSWORD, ProjectFactory, UserFactory
from tests.rlhf.conftest import TINY_GENERATION

DPO_FAST = {"max_steps": 2, "batch_size": 4}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ready_to_rank(project, admin_user) -> None:
    """Give ``project`` a published ranking template and the tiny model's generation settings."""
    template = template_services.template_create(project=project, name="Rank", created_by=admin_user,
                                                 schema=RANK_SCHEMA, strict=True)
    version = template_services.template_version_publish(template=template, created_by=admin_user)
    project_update_settings(project=project, template_version=version, generation_settings=TINY_GENERATION)
    project.refresh_from_db()


def test_round_config_is_validated_when_built():
    with pytest.raises(ValueError, match="reward_model"):
        RoundConfig(method="ddpo")
    with pytest.raises(ValueError, match="preference"):
        RoundConfig(preference="nope")
    with pytest.raises(ValueError, match="label_accuracy must be from 0.5"):
        RoundConfig(label_accuracy=0.45)
    with pytest.raises(ValueError, match="temperature must be finite; for labels of pure noise set label_accuracy"):
        RoundConfig(temperature=float("inf"))
    with pytest.raises(ValueError, match="eval_caption_seed"):
        RoundConfig(eval_caption_seed=-1)


@pytest.mark.parametrize(("config", "field", "message"), [
    (RoundConfig(hyperparameters={"max_steps": 0}), "hyperparameters.max_steps",
     "The round's DPO fine-tune: max_steps must be > 0, not 0."),
    (RoundConfig(method="ddpo", reward_model=True, hyperparameters={"sample_stepz": 3}), "hyperparameters.sample_stepz",
     "The round's DDPO fine-tune: Unknown hyper-parameter 'sample_stepz'."),
    (RoundConfig(method="ddpo", reward_model=True, reward_hyperparameters={"lr": "fast"}),
     "reward_hyperparameters.lr", "The round's reward model (tiny preset): lr has the wrong type: 'fast'."),
])
def test_a_rounds_recipe_is_checked_before_it_makes_anything(project, admin_user, tiny_base, config, field, message):
    """A wrong hyper-parameter used to surface once the round had generated and ranked its images."""
    ready_to_rank(project, admin_user)
    with pytest.raises(ApplicationError) as error:
        round_run(project=project, user=admin_user, config=config, start_version=tiny_base)
    assert (error.value.field, error.value.message) == (field, message)
    assert not LoopRound.objects.exists() and not GenerationJob.objects.exists()


def test_a_ddpo_rounds_reward_model_sees_shapes_model_images_with_the_shapes_preset(tiny_base, tiny_base_dir,
                                                                                     tmp_path):
    from generation.services import model_version_register
    from generation.shapes.model import WEIGHTS_DIR
    from generation.tiny import build_tiny_lora

    shapes = model_version_register(name="shapes-v1", source=str(WEIGHTS_DIR), dtype="float32")
    on_shapes = model_version_register(name="shapes-lora", parent=shapes, lora_path=str(tmp_path / "lora"))
    on_tiny = model_version_register(name="tiny-lora", parent=tiny_base,
                                     lora_path=str(build_tiny_lora(tiny_base_dir, tmp_path / "tiny-lora", seed=3)))
    auto = RoundConfig(method="ddpo", reward_model=True)
    assert [round_reward_preset(config=auto, version=v) for v in (shapes, on_shapes, tiny_base, on_tiny)] == [
        "shapes", "shapes", "tiny", "tiny"]
    assert round_reward_preset(config=RoundConfig(reward_preset="tiny"), version=shapes) == "tiny"
    assert round_reward_preset(config=RoundConfig(reward_preset="shapes"), version=tiny_base) == "shapes"
    with pytest.raises(ValueError, match=r"reward_preset must be one of \['auto', 'tiny', 'shapes'\], not 'big'"):
        RoundConfig(reward_preset="big")


def test_evaluation_captions_of_other_eval_seeds_are_other_held_out_draws():
    from generation.shapes.world import held_out_captions
    from rlhf.loop.evaluate import evaluation_captions

    assert evaluation_captions(20) == held_out_captions(20)  # eval seed 0: the captions every figure so far used
    assert evaluation_captions(20, eval_seed=1) == evaluation_captions(20, eval_seed=1)
    assert evaluation_captions(20, eval_seed=1) != evaluation_captions(20) != evaluation_captions(20, eval_seed=2)
    with pytest.raises(ValueError, match="eval_seed"):
        evaluation_captions(20, eval_seed=-1)


def test_means_relative_change_and_effect_size_with_their_intervals():
    from rlhf.loop import stats

    mean = stats.mean_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2) * sd 1 / sqrt(3)
    assert (mean.value, mean.n) == (2.0, 3) and (mean.low, mean.high) == pytest.approx((2 - half, 2 + half))
    assert stats.mean_interval([5.0]).low is None

    new, old = [2.0, 4.0, 3.0, 5.0], [1.0, 2.0, 2.0, 3.0]
    relative = stats.relative_change(new, old)
    assert relative.value == pytest.approx((3.5 - 2.0) / 2.0)
    effect = stats.standardised_difference(new, old)  # d_av: mean change over the root mean of the variances
    assert effect.value == pytest.approx(1.5 / math.sqrt((np.var(new, ddof=1) + np.var(old, ddof=1)) / 2))
    for estimate in (relative, effect):
        assert estimate.n == 4 and estimate.low <= estimate.value <= estimate.high
    assert stats.standardised_difference(new, old) == effect  # the bootstrap is seeded: the same interval
    # A scale-free figure: the same scores in other units give the same effect size and relative change.
    assert stats.standardised_difference([x * 100 for x in new], [x * 100 for x in old]) == effect
    assert stats.relative_change([1.0, -1.0], [1.0, -1.0]) is None  # the baseline's mean is 0
    assert stats.standardised_difference([1.0, 1.0], [1.0, 1.0]) is None  # no spread to standardise by


@pytest.mark.django_db
def test_a_small_rounds_split_holds_out_one_caption_and_trains_on_the_rest(admin_user):
    """Which captions a seed holds out depends on their ids; a round of three captions once held out two,
    leaving its fine-tune too few pairs to train on."""
    from annotate.models import Prompt
    from rlhf.exports.splits import SplitSpec
    from rlhf.loop.rounds import SPLIT_TRAIN, _split_seed

    for attempt in range(12):  # twelve id sets: the old rule took a two-held-out seed for some of them
        made = ProjectFactory(name=f"small round {attempt}", created_by=admin_user)
        for i in range(3):
            task_create(project=made, prompt_text=f"caption {attempt}-{i}", created_by=admin_user)
        spec = SplitSpec(train=SPLIT_TRAIN, validation=1 - SPLIT_TRAIN, test=0.0, seed=_split_seed(made))
        splits = sorted(spec.assign(str(pk)) for pk in Prompt.objects.filter(project=made).values_list("pk", flat=True))
        assert splits == ["train", "train", "validation"], attempt


def test_rounds_of_other_prompt_seeds_are_labelled_with_other_noise():
    from rlhf.preferences import noisy_ranking

    def rankings(prompt_seed: int) -> list[list[int]]:  # 20 ties ranked by annotator 0 of round 1
        rng = np.random.default_rng(round_annotator_seed(config=RoundConfig(prompt_seed=prompt_seed), number=1))
        return [noisy_ranking([0.5] * 4, temperature=0.02, rng=rng) for _ in range(20)]

    assert rankings(0) == rankings(0)  # the same round labels the same way
    assert rankings(0) != rankings(1) and rankings(1) != rankings(2)  # another round, other noise
    # One stream with the captions (seed prompt_seed + round): prompt_seed 0's second round is prompt_seed 1's first.
    second, first = RoundConfig(prompt_seed=0), RoundConfig(prompt_seed=1)
    assert round_annotator_seed(config=second, number=2) == round_annotator_seed(config=first, number=1)


def test_reduced_round_runs_every_stage(project, admin_user, ml_engineer, tiny_base, model_cache):
    ready_to_rank(project, admin_user)
    config = RoundConfig(prompts=3, images_per_prompt=4, annotators=2, preference="brighter", method="dpo",
                         reward_model=True, reward_hyperparameters={"max_steps": 2, "batch_size": 4},
                         hyperparameters=DPO_FAST, eval_prompts=2)
    loop_round = round_run(project=project, user=admin_user, config=config, start_version=tiny_base)

    assert loop_round.status == RunStatus.SUCCEEDED and loop_round.stage == "done", loop_round.error
    tasks_made = AnnotationTask.objects.filter(project=project).order_by("pk")
    assert tasks_made.count() == 3
    # The round's images have the recipe's seeds, so running the same round again makes the same images.
    seeds = [sorted(image.seed for image in task.images.all()) for task in tasks_made]
    assert seeds == [round_image_seeds(config=config, number=1, caption_index=i) for i in range(3)]
    assert len({seed for group in seeds for seed in group}) == 12
    assert Annotation.objects.filter(project=project).count() == 6
    assert loop_round.export.status == "succeeded" and loop_round.reward_run.status == "succeeded"
    new = loop_round.output_version
    assert new.parent == tiny_base and new.finetune_run == loop_round.finetune_run
    assert loop_round.finetune_run.lineage["round"] == {"id": loop_round.pk, "number": 1,
                                                        "input_version": tiny_base.pk}
    assert project_current_version(project=project) == new
    assert list(project.model_versions.all()) == [new]  # the next round generates with it
    stats = loop_round.stats
    assert stats["images"] == 12 and stats["annotations"] == 6 and stats["pairs"] > 0
    assert "reward_accuracy" in stats and stats["win_rate"]["n"] == 2
    # The annotators' noise as given, the label accuracy their rankings reached, and DPO's fit on the pairs of
    # the export's held-out captions (a round of three still holds some out).
    assert stats["temperature"] == 0.02 and "label_accuracy_target" not in stats
    assert stats["label_pairs"] <= 6 * 6 and 0 <= stats["label_accuracy"] <= 1
    held_out = sum(not row.is_tie for row in iter_rows(export_data_path(loop_round.export), "validation"))
    fit = stats["dpo_heldout"]
    assert fit["n"] == held_out > 0 and fit["low"] <= fit["accuracy"] <= fit["high"]
    evaluation = VersionEvaluation.objects.get(pk=stats["evaluation"])
    for key in ("score_version", "score_baseline", "score_relative", "score_effect_size"):
        assert stats[f"{key}_interval"] == evaluation.results[f"{key}_interval"]  # as the report page has them
    assert evaluation.version == new and evaluation.baseline == tiny_base and evaluation.status == "succeeded"

    browser = Client()
    assert browser.login(username=ml_engineer.username, password=PASSWORD)
    page = browser.get(f"/ml/projects/{project.pk}/rounds/").content.decode()
    assert "Round 1" in page and new.name in page
    assert f"{stats['label_accuracy']:.3f}, temperature 0.02" in page
    assert f"{fit['accuracy']:.3f} (95% CI {fit['low']:.3f}–{fit['high']:.3f}, {fit['n']} pairs)" in page
    fragment = browser.get(f"/ml/projects/{project.pk}/rounds/", HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in fragment and "Round 1" in fragment
    report = browser.get(f"/ml/evaluations/{evaluation.pk}/").content.decode()
    assert "win rate" in report.lower() and new.name in report
    assert f"{100 * evaluation.results['score_relative']:.2f}% of the baseline mean" in report
    assert f"d<sub>av</sub> {evaluation.results['score_effect_size']:.3f}" in report
    results = evaluation.results
    assert f"{results['adherence_fixed']} fixed, {results['adherence_broken']} broken" in report
    assert stats["adherence_delta_interval"] == results["adherence_delta_interval"]
    assert stats["score_delta_interval"][0] <= stats["score_delta"] <= stats["score_delta_interval"][1]
    assert LoopRound.objects.filter(project=project).count() == 1
    # The gpu-train task of a round that already ran returns it as it is.
    assert tasks.finetune_loop_round(loop_round.pk) == {"round": loop_round.pk, "status": "succeeded"}
    assert LoopRound.objects.get(pk=loop_round.pk).output_version == new


def test_reduced_ddpo_round_optimises_the_rounds_reward_model(project, admin_user, tiny_base, model_cache):
    ready_to_rank(project, admin_user)
    config = RoundConfig(prompts=3, images_per_prompt=4, annotators=2, preference="brighter", method="ddpo",
                         reward_model=True, reward_hyperparameters={"max_steps": 2, "batch_size": 4},
                         hyperparameters={"iterations": 2, "prompts_per_iteration": 2, "images_per_prompt": 2,
                                          "sample_steps": 2},
                         eval_prompts=2, label_accuracy=0.9)
    loop_round = round_run(project=project, user=admin_user, config=config, start_version=tiny_base)

    assert loop_round.status == RunStatus.SUCCEEDED and loop_round.stage == "done", loop_round.error
    # The temperature was calibrated to label accuracy 0.9 on the pairs of this round's own images.
    from rlhf.loop.simulate import _load_image
    from rlhf.preferences import brighter, temperature_for_label_accuracy

    differences = []
    for task in AnnotationTask.objects.filter(project=project).prefetch_related("task_images__image"):
        scores = [brighter(_load_image(ti.image.storage_key), "") for ti in task.task_images.all()]
        differences += [a - b for i, a in enumerate(scores) for b in scores[i + 1:]]
    stats = loop_round.stats
    assert stats["label_accuracy_target"] == 0.9
    assert stats["temperature"] == pytest.approx(temperature_for_label_accuracy(differences, 0.9), rel=1e-9)
    assert "dpo_heldout" not in stats and "reward_accuracy" in stats
    assert loop_round.reward_run.preset == "tiny"  # the tiny pipeline's images: not the shapes model's
    run = loop_round.finetune_run
    reward_version = loop_round.reward_run.registered_version
    assert run.method == "ddpo" and run.reward_version == reward_version and run.step == 2
    assert run.config["reward_arg"] == reward_version.path  # DDPO's reward is the model this round trained
    assert run.config["objective"] == "group_dpo"  # the round's default for a learned reward model
    assert sorted(run.config["prompts"]) == sorted(AnnotationTask.objects.filter(project=project)
                                                   .values_list("prompt__text", flat=True))
    assert loop_round.output_version.finetune_run == run and loop_round.stats["win_rate"]["n"] == 2


def test_start_button_queues_one_round_for_the_train_worker(
    project, annotator, ml_engineer, tiny_base, django_capture_on_commit_callbacks
):
    url = f"/ml/projects/{project.pk}/rounds/start/"
    valid = {"method": "dpo", "prompts": 20, "images_per_prompt": 4, "annotators": 3,
             "preference": "larger_shapes", "temperature": 0.02, "start_version": tiny_base.pk}
    people = Client()  # a member who may not train: refused, and told so
    assert people.login(username=annotator.username, password=PASSWORD)
    assert people.post(url, valid).status_code == 403
    stranger = Client()  # not a member: the project does not exist for them
    stranger.force_login(UserFactory(username="round-stranger", role=Role.ML_ENGINEER))
    assert stranger.post(url, valid).status_code == 404
    assert "Start a round" not in people.get(f"/ml/projects/{project.pk}/rounds/").content.decode()

    browser = Client()
    assert browser.login(username=ml_engineer.username, password=PASSWORD)
    page = browser.get(f"/ml/projects/{project.pk}/rounds/").content.decode()
    assert "Start a round" in page and 'name="start_version"' in page
    # Bad input: a field error, nothing queued.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = browser.post(url, {**valid, "prompts": 0})
    assert response.status_code == 400 and "Prompts:" in response.content.decode()
    first = browser.post(url, {**valid, "start_version": ""})
    assert first.status_code == 400 and "Start version:" in first.content.decode()
    noisy = browser.post(url, {**valid, "label_accuracy": 0.3})
    assert noisy.status_code == 400 and "Label accuracy:" in noisy.content.decode()
    assert callbacks == [] and not LoopRound.objects.filter(project=project).exists()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert browser.post(url, {**valid, "method": "ddpo", "label_accuracy": 0.7}).status_code == 303
    loop_round = LoopRound.objects.get(project=project)
    assert (loop_round.status, loop_round.stage, loop_round.input_version) == ("queued", "pending", tiny_base)
    assert loop_round.config["method"] == "ddpo" and loop_round.config["reward_model"] is True
    assert loop_round.config["prompts"] == 20 and loop_round.created_by == ml_engineer
    assert loop_round.config["label_accuracy"] == 0.7  # the temperature is calibrated to it when the round runs
    assert len(callbacks) == 1  # rlhf.tasks.finetune_loop_round, on commit
    # The page follows it (htmx polling) and a second start waits for it to end.
    page = browser.get(f"/ml/projects/{project.pk}/rounds/").content.decode()
    assert 'hx-trigger="every 3s"' in page and "<progress" in page
    again = browser.post(url, valid)
    assert again.status_code == 400 and "still queued or running" in again.content.decode()
    assert LoopRound.objects.filter(project=project).count() == 1
    LoopRound.objects.filter(pk=loop_round.pk).update(status="failed")
    assert browser.get(f"/ml/projects/{project.pk}/rounds/", HTTP_HX_REQUEST="true").status_code == 286


def test_comparison_counts_fixed_and_broken_captions_and_sizes_the_changes():
    from PIL import Image

    from generation.shapes.world import held_out_captions, parse_caption, render
    from rlhf.loop.evaluate import compare, scorer_for

    captions = held_out_captions(4)
    truth = [Image.fromarray(render(parse_caption(c), np.random.default_rng(0))) for c in captions]  # all pass
    blank = Image.new("RGB", truth[0].size, "white")  # and this fails
    new, old = [truth[0], truth[1], truth[2], blank], [truth[0], blank, blank, blank]
    scorer, name = scorer_for(preference="larger_shapes")
    result = compare(new, old, captions, scorer=scorer, score_name=name).as_dict()
    assert (result["adherence_version"], result["adherence_baseline"]) == (0.75, 0.25)
    assert (result["adherence_fixed"], result["adherence_broken"]) == (2, 0)
    half = 3.182446 * math.sqrt(1 / 3) / 2  # pass-rate differences 0, 1, 1, 0
    assert result["adherence_delta"] == 0.5
    assert result["adherence_delta_interval"] == pytest.approx([0.5 - half, 0.5 + half], abs=1e-5)
    # Rendered shapes beat blank images on size: two wins, two ties, and a score change above zero.
    assert (result["win_rate"]["wins"], result["win_rate"]["ties"]) == (2, 2)
    assert result["score_delta"] > 0 and result["score_delta_interval"][0] < result["score_delta"]


def test_renders_this_process_made_already_are_taken_not_made_again(tiny_base, model_cache):
    from generation.shapes.world import held_out_captions
    from rlhf.loop.evaluate import RENDERS, render

    RENDERS.clear()
    captions = held_out_captions(3)
    first = render(tiny_base, captions, (0, 1))
    assert len(first) == 6 and len(RENDERS) == 1
    again = render(tiny_base, captions, (0, 1))
    assert all(a is b for a, b in zip(again, first, strict=True))  # the same images, not a second render
    # Anything that decides the pixels is part of the key: other seeds, params or batch size render anew.
    assert render(tiny_base, captions, (0, 2))[0] is not first[0]
    assert render(tiny_base, captions, (0, 1), params={"steps": 3})[0] is not first[0]
    assert render(tiny_base, captions, (0, 1), batch=2)[0] is not first[0]
    assert len(RENDERS) == 4
    # What the memo hands back is what rendering gives: sampling is deterministic in its key.
    RENDERS.clear()
    fresh = render(tiny_base, captions, (0, 1))
    assert fresh[0] is not first[0]
    assert [image.tobytes() for image in fresh] == [image.tobytes() for image in first]


def test_the_render_memo_drops_its_oldest_renders_beyond_its_pixel_budget():
    from PIL import Image

    from rlhf.loop.evaluate import RenderMemo

    memo = RenderMemo(max_pixels=3 * 32 * 32)
    images = {name: [Image.new("RGB", (32, 32), colour)] for name, colour in (("a", "red"), ("b", "green"),
                                                                                ("c", "blue"), ("d", "white"))}
    for name in "abc":
        memo.put(name, images[name])
    assert memo.get("a") == images["a"]  # a is now the latest used
    memo.put("d", images["d"])  # four images over a budget of three: b, the least recently used, goes
    assert memo.get("b") is None and [memo.get(name) for name in "acd"] == [images[name] for name in "acd"]
    memo.put("big", [Image.new("RGB", (64, 64))])  # one render over the budget alone is not kept
    assert memo.get("big") is None and len(memo) == 3


def test_evaluate_version_command(tiny_base, model_cache, tiny_base_dir, tmp_path, capsys):
    import json

    from django.core.management import call_command

    from generation.services import model_version_register
    from generation.tiny import build_tiny_lora

    lora = model_version_register(name="tiny-lora", parent=tiny_base,
                                  lora_path=str(build_tiny_lora(tiny_base_dir, tmp_path / "lora", seed=3)))
    call_command("evaluate_version", "tiny-lora", "--preference", "brighter", "--prompts", "2", "--seeds", "0,1")
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 4 and out["win_rate"]["n"] == 4 and out["score_name"] == "brighter"
    assert VersionEvaluation.objects.get(pk=out["evaluation"]).baseline == tiny_base
    assert lora.parent == tiny_base


def test_the_second_round_continues_the_first_rounds_lora(project, admin_user, annotator, outsider, tiny_base,
                                                          model_cache):
    ready_to_rank(project, admin_user)
    config = RoundConfig(prompts=3, images_per_prompt=4, annotators=2, preference="brighter", method="dpo",
                         hyperparameters=DPO_FAST, eval_prompts=4)
    first = round_run(project=project, user=admin_user, config=config, start_version=tiny_base)
    assert first.status == RunStatus.SUCCEEDED, first.error
    second = round_run(project=project, user=admin_user, config=config)
    assert second.status == RunStatus.SUCCEEDED, second.error

    one, two = first.output_version, second.output_version
    assert second.input_version == one and first.finetune_run.lineage["continued_from"] is None
    run = second.finetune_run
    assert run.base_version == one and run.lineage["continued_from"] == {"id": one.pk, "name": one.name}
    assert run.lineage["base_version"]["id"] == tiny_base.pk and run.config["init_lora"] == one.lora_path
    assert run.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # DPO's reference: round 1's model
    assert two.parent == tiny_base and one.parent == tiny_base  # one adapter on the base, round after round
    assert project_current_version(project=project) == two and list(project.model_versions.all()) == [two]

    # Each round against the base too: round 1's own evaluation is against it, round 2 adds one on the same
    # held-out captions and seeds, and each keeps its first GRID_SAMPLES pairs' images for the timeline's grid.
    assert first.stats["against_base"]["evaluation"] == first.stats["evaluation"]
    against = second.stats["against_base"]
    base_evaluation = VersionEvaluation.objects.get(pk=against["evaluation"])
    assert (base_evaluation.version, base_evaluation.baseline) == (two, tiny_base)
    assert VersionEvaluation.objects.get(pk=second.stats["evaluation"]).baseline == one
    assert against["version"] == tiny_base.pk
    for key in ("win_rate", "score_effect_size", "score_effect_size_interval", "adherence_delta",
                "adherence_delta_interval"):
        assert against[key] == base_evaluation.results[key], key
    samples = base_evaluation.results["samples"]
    captions = VersionEvaluation.objects.get(pk=first.stats["evaluation"]).config["prompts"]
    assert [(s["index"], s["prompt"], s["seed"]) for s in samples] == [(i, c, 0) for i, c in enumerate(captions)]

    browser = Client()
    assert browser.login(username=annotator.username, password=PASSWORD)  # a member who may view the project
    page = browser.get(f"/ml/projects/{project.pk}/rounds/").content.decode()
    effect, (low, high) = against["score_effect_size"], against["score_effect_size_interval"]
    assert f"d<sub>av</sub> {effect:.3f} (95% CI {low:.3f} to {high:.3f})" in page
    win = against["win_rate"]
    assert f"win rate {win['rate']:.3f} (95% CI {win['low']:.3f}–{win['high']:.3f}, n=4)" in page
    grid = page[page.index('id="round-grid"'):page.index("</table>", page.index('id="round-grid"'))]
    assert f"<th>base (tiny-base)</th><th>round 1 ({one.name})</th><th>round 2 ({two.name})</th>" in grid
    first_evaluation = first.stats["evaluation"]
    for i, caption in enumerate(captions):  # base and round 1 from round 1's evaluation, round 2 from its own
        row = (f'<td>{caption}</td><td>0</td>'
               f'<td><img src="/ml/evaluations/{first_evaluation}/samples/baseline/{i}.png"')
        assert row in grid
        assert f'src="/ml/evaluations/{first_evaluation}/samples/version/{i}.png"' in grid
        assert f'src="/ml/evaluations/{against["evaluation"]}/samples/version/{i}.png"' in grid
    image = browser.get(f"/ml/evaluations/{against['evaluation']}/samples/version/0.png")
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    from rlhf.loop.evaluate import render

    rendered = render(two, captions[:1], (0,), params=TINY_GENERATION)[0]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(b"".join(image.streaming_content))).convert("RGB")),
                          np.asarray(rendered.convert("RGB")))  # the image round 2's version draws there
    assert browser.get(f"/ml/evaluations/{against['evaluation']}/samples/version/4.png").status_code == 404
    assert browser.get(f"/ml/evaluations/{against['evaluation']}/samples/other/0.png").status_code == 404
    stranger = Client()
    assert stranger.login(username=outsider.username, password=PASSWORD)
    assert stranger.get(f"/ml/evaluations/{against['evaluation']}/samples/version/0.png").status_code == 404


def test_a_first_round_may_start_from_a_lora_version(project, ml_engineer, tiny_base, tiny_base_dir, tmp_path,
                                                    django_capture_on_commit_callbacks):
    from generation.services import model_version_register
    from generation.tiny import build_tiny_lora

    lora = model_version_register(name="tiny-lora", parent=tiny_base,
                                  lora_path=str(build_tiny_lora(tiny_base_dir, tmp_path / "lora", seed=3)))
    browser = Client()
    assert browser.login(username=ml_engineer.username, password=PASSWORD)
    page = browser.get(f"/ml/projects/{project.pk}/rounds/").content.decode()
    assert f'<option value="{lora.pk}">tiny-lora: continue this LoRA (on tiny-base)</option>' in page
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = browser.post(f"/ml/projects/{project.pk}/rounds/start/", {
            "method": "dpo", "prompts": 4, "images_per_prompt": 4, "annotators": 2, "preference": "larger_shapes",
            "temperature": 0.02, "start_version": lora.pk})
    assert response.status_code == 303 and len(callbacks) == 1
    assert LoopRound.objects.get(project=project).input_version == lora
