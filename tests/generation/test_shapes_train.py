from __future__ import annotations

import json
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch

from generation.shapes.model import ModelConfig, build_train_scheduler, build_vae, load_pipeline, tiny_config
from generation.shapes.train import (
    TrainConfig,
    diffusion_target,
    export_pipeline,
    finetune_decoder,
    lr_factor,
    main,
    prefetched,
    shape_pixels,
    smoke_recipe,
    to_tensor,
    train,
    vae_batch,
    vae_loss,
)
from generation.shapes.world import parse_caption, render


def test_v_prediction_target_matches_the_formula():
    scheduler = build_train_scheduler(ModelConfig())
    latents, noise = torch.ones(2, 1, 1, 1), torch.full((2, 1, 1, 1), 2.0)
    t = torch.tensor([0, 999])
    a = scheduler.alphas_cumprod[t].sqrt().view(2, 1, 1, 1)
    s = (1 - scheduler.alphas_cumprod[t]).sqrt().view(2, 1, 1, 1)
    expected = a * 2.0 - s * 1.0  # v = sqrt(abar) * eps - sqrt(1 - abar) * x0
    assert torch.allclose(diffusion_target(scheduler, latents, noise, t), expected)
    eps = build_train_scheduler(replace(ModelConfig(), prediction_type="epsilon"))
    assert torch.equal(diffusion_target(eps, latents, noise, t), noise)


def test_prefetched_batches_come_in_order_and_match_the_serial_ones():
    cfg = replace(smoke_recipe("unused"), vae_batch=2, vae_steps=7)
    serial = list(prefetched(partial(vae_batch, cfg), 7, workers=0))
    ahead = list(prefetched(partial(vae_batch, cfg), 7, workers=2))  # workers make steps 0,2,4,6 / 1,3,5
    assert len(ahead) == 7
    for (x, w, corner), (x2, w2, corner2) in zip(serial, ahead, strict=True):
        assert torch.equal(x, x2) and torch.equal(w, w2) and list(corner) == list(corner2)
    assert len({corner for _, _, corner in serial}) > 1


@pytest.mark.parametrize(("argv", "says"), [
    (["--latent-channels", "0"], "latent_channels must be at least 1"),
    (["--vae-minutes", "0"], "vae_minutes must be positive"),
])
def test_command_line_overrides_are_checked_before_anything_runs(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--run-dir", str(tmp_path / "run"), "--vae-only"])
    assert exit_info.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_vae_loss_and_lr_schedule_by_hand():
    recon, target = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    # squared 0.25 plus absolute 0.5 per pixel, plus 0.1 x mean KL 3
    assert vae_loss(recon, target, torch.tensor([2.0, 4.0]), kl_weight=0.1).item() == pytest.approx(
        0.75 + 0.3
    )
    weight = torch.ones(1, 1, 2, 2)
    weight[..., 0, 0] = 5.0  # one pixel of four weighs 5: mean weight 2
    assert vae_loss(recon, target, torch.zeros(1), 0.1, weight).item() == pytest.approx(0.75 * 2)
    assert lr_factor(0, 10) == pytest.approx(0.1) and lr_factor(9, 10) == 1.0 and lr_factor(500, 10) == 1.0


def test_shape_pixels_marks_exactly_the_painted_pixels():
    scene = parse_caption("a small red square in the center on a white and black background")
    mask = shape_pixels(render(scene)[None])
    assert mask.shape == (1, 1, 64, 64) and mask.sum().item() == 12 * 12


def test_to_tensor_maps_uint8_to_minus_one_one():
    x = to_tensor(np.array([[[[0, 255, 127]]]], dtype=np.uint8))
    assert x.shape == (1, 3, 1, 1)
    assert x.flatten().tolist() == pytest.approx([-1.0, 1.0, -0.00392], abs=1e-4)


def test_configs_validate_their_choices():
    with pytest.raises(ValueError, match="prediction_type"):
        ModelConfig(prediction_type="flow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="latent_channels"):
        ModelConfig(latent_channels=0)
    with pytest.raises(ValueError, match="vae_minutes"):
        TrainConfig(vae_minutes=0)


def test_tiny_recipe_trains_resumes_and_exports_a_loadable_pipeline(tmp_path):
    cfg = replace(
        smoke_recipe(str(tmp_path / "run")),
        model=tiny_config(),
        vae_steps=3,
        pool_size=32,
        steps=4,
        ckpt_every=2,
    )
    ckpt = train(cfg)
    assert torch.load(ckpt)["step"] == 4
    ckpt = train(replace(cfg, steps=6))  # resumes from step 4, skips the finished VAE and cache phases
    state = torch.load(ckpt)
    assert state["step"] == 6 and state["config"]["seed"] == 0 and "git_commit" in state
    out = export_pipeline(cfg.run_dir, tmp_path / "export")
    pipe = load_pipeline(out)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    images = pipe(["a small red circle in the center on a white background"], num_inference_steps=2).images
    assert images[0].size == (64, 64)
    # phase 1b: the decoder trains on (encoder frozen), and the export then takes the fine-tuned VAE
    vae_ft = finetune_decoder(cfg, 3, max_minutes=5.0)
    assert json.loads((vae_ft / "progress.json").read_text()) == {"step": 3}
    again = export_pipeline(cfg.run_dir, tmp_path / "export-ft")
    assert json.loads((again / "training.json").read_text())["vae"] == "vae_ft"


def test_a_run_can_take_a_given_vae_instead_of_training_one(tmp_path):
    torch.manual_seed(5)
    given = build_vae(tiny_config())
    given.save_pretrained(tmp_path / "given")
    cfg = replace(
        smoke_recipe(str(tmp_path / "run")), model=tiny_config(), vae_from=str(tmp_path / "given"),
        vae_steps=10**6, pool_size=32, steps=2, ckpt_every=2,
    )  # fmt: skip
    train(cfg)  # a million VAE steps would never finish: phase 1 is not run
    out = export_pipeline(cfg.run_dir, tmp_path / "export")
    exported = load_pipeline(out).vae.state_dict()
    assert all(torch.equal(exported[k], v) for k, v in given.state_dict().items())
    assert json.loads((out / "training.json").read_text())["config"]["vae_from"] == str(tmp_path / "given")
    wrong = replace(cfg, run_dir=str(tmp_path / "other"), model=replace(tiny_config(), latent_channels=8))
    with pytest.raises(ValueError, match=r"has 4 latent channels, the model 8"):
        train(wrong)
