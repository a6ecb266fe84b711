"""A reduced round runs through every stage and registers a version whose lineage points at the round."""

from __future__ import annotations

import pytest
from django.test import Client

from annotate import template_services
from annotate.models import Annotation, AnnotationTask
from annotate.workflow_services import project_update_settings
from rlhf.loop.rounds import RoundConfig, project_current_version, round_run
from rlhf.models import LoopRound, RunStatus, VersionEvaluation
from tests.factories import PASSWORD
from tests.rlhf.conftest import RANK_SCHEMA, TINY_GENERATION

DPO_FAST = {"max_steps": 2, "batch_size": 4}


def test_round_config_is_validated_when_built():
    with pytest.raises(ValueError, match="reward_model"):
        RoundConfig(method="ddpo")
    with pytest.raises(ValueError, match="preference"):
        RoundConfig(preference="nope")


def test_reduced_round_runs_every_stage(project, admin_user, ml_engineer, tiny_base, model_cache):
    template = template_services.template_create(project=project, name="Rank", created_by=admin_user,
                                                 schema=RANK_SCHEMA, strict=True)
    version = template_services.template_version_publish(template=template, created_by=admin_user)
    project_update_settings(project=project, template_version=version, generation_settings=TINY_GENERATION)
    project.refresh_from_db()
    config = RoundConfig(prompts=3, images_per_prompt=4, annotators=2, preference="brighter", method="dpo",
                         reward_model=True, reward_hyperparameters={"max_steps": 2, "batch_size": 4},
                         hyperparameters=DPO_FAST, eval_prompts=2)
    loop_round = round_run(project=project, user=admin_user, config=config, start_version=tiny_base)

    assert loop_round.status == RunStatus.SUCCEEDED and loop_round.stage == "done", loop_round.error
    assert AnnotationTask.objects.filter(project=project).count() == 3
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
    evaluation = VersionEvaluation.objects.get(pk=stats["evaluation"])
    assert evaluation.version == new and evaluation.baseline == tiny_base and evaluation.status == "succeeded"

    browser = Client()
    assert browser.login(username=ml_engineer.username, password=PASSWORD)
    page = browser.get(f"/ml/projects/{project.pk}/rounds/").content.decode()
    assert "Round 1" in page and new.name in page
    fragment = browser.get(f"/ml/projects/{project.pk}/rounds/", HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in fragment and "Round 1" in fragment
    report = browser.get(f"/ml/evaluations/{evaluation.pk}/").content.decode()
    assert "win rate" in report.lower() and new.name in report
    assert LoopRound.objects.filter(project=project).count() == 1


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
