"""Every loss against values computed by hand with math.log / math.exp."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rlhf.training.losses import (
    bradley_terry_loss,
    choose_one_loss,
    ddpo_clipped_loss,
    dpo_loss,
    gaussian_kl_same_std,
    normalize_advantages_per_prompt,
    plackett_luce_loss,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


def test_bradley_terry_hard_soft_and_weighted() -> None:
    # pair 0: 2 vs 1, first won  -> -log sigmoid(1)  = log(1 + e^-1)
    # pair 1: 0 vs 0, tie        -> -(0.5 log 0.5 + 0.5 log 0.5) = log 2
    # pair 2: 1 vs 3, second won -> -log sigmoid(2)  = log(1 + e^-2)
    loss = bradley_terry_loss(t(2, 0, 1), t(1, 0, 3), label=t(1, 0.5, 0), weight=t(1, 2, 1))
    expected = (softplus(-1) + 2 * math.log(2) + softplus(-2)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_bradley_terry_tie_equals_pickscore_two_way_softmax_cross_entropy() -> None:
    # PickScore: CE(softmax([3, 1]), [0.5, 0.5])
    z = math.exp(3) + math.exp(1)
    expected = -(0.5 * math.log(math.exp(3) / z) + 0.5 * math.log(math.exp(1) / z))
    assert bradley_terry_loss(t(3), t(1), label=t(0.5)).item() == pytest.approx(expected, rel=1e-12)


def test_bradley_terry_default_label_is_hard_preference() -> None:
    assert bradley_terry_loss(t(0.5), t(0.0)).item() == pytest.approx(softplus(-0.5), rel=1e-12)


def test_plackett_luce_three_images_no_ties() -> None:
    # ranking: image 1 best, then image 0, then image 2
    s0, s1, s2 = 1.0, 2.0, 0.5
    log_lik = (s1 - math.log(math.exp(s0) + math.exp(s1) + math.exp(s2))) + (
        s0 - math.log(math.exp(s0) + math.exp(s2))
    )
    loss = plackett_luce_loss(t(s0, s1, s2), torch.tensor([1, 0, 2]))
    assert loss.item() == pytest.approx(-log_lik, rel=1e-12)


def test_plackett_luce_tied_group_uses_efron() -> None:
    # images 0 and 1 tie for first, image 2 last
    s0, s1, s2 = 1.0, 2.0, 0.5
    a = math.exp(s0) + math.exp(s1) + math.exp(s2)
    b = math.exp(s0) + math.exp(s1)
    log_lik = s0 + s1 - math.log(a) - math.log(a - 0.5 * b)  # last stage: s2 - log(e^s2) = 0
    loss = plackett_luce_loss(t(s0, s1, s2), torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx(-log_lik, rel=1e-12)


def test_plackett_luce_two_items_is_bradley_terry_and_padding_is_ignored() -> None:
    scores = torch.tensor([[0.3, 1.1, 7.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    ranks = torch.tensor([[1, 0, -1], [0, 1, -1]])
    expected = (softplus(-(1.1 - 0.3)) + softplus(-2.0)) / 2
    assert plackett_luce_loss(scores, ranks).item() == pytest.approx(expected, rel=1e-12)


def test_plackett_luce_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        plackett_luce_loss(t(1, 2), torch.tensor([0, 1, 2]))


def test_choose_one_is_softmax_cross_entropy_over_candidates() -> None:
    expected_0 = -(1 - math.log(math.exp(1) + math.exp(2) + math.exp(3)))
    expected_1 = -(0 - math.log(math.exp(0) + math.exp(0) + math.exp(-1)))
    scores = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    loss = choose_one_loss(scores, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx((expected_0 + expected_1) / 2, rel=1e-12)


def test_dpo_loss_and_implicit_accuracy() -> None:
    # pair 0: policy improves on the winner -> inside = -0.5*10*((0.1-0.2)-(0.3-0.2)) = +1
    # pair 1: the opposite                  -> inside = -1
    out = dpo_loss(t(0.1, 0.3), t(0.3, 0.1), t(0.2, 0.2), t(0.2, 0.2), beta=10.0)
    assert out.inside_term.tolist() == pytest.approx([1.0, -1.0])
    assert out.loss.item() == pytest.approx((softplus(-1) + softplus(1)) / 2, rel=1e-12)
    assert out.implicit_accuracy.item() == 0.5


def test_dpo_positive_charges_only_a_preferred_image_the_policy_finds_less_likely() -> None:
    # pair 0: the policy's error on the winner rose by 0.1 and on the loser by 0.3: plain DPO rewards it
    #   (inside = -0.5*10*(0.1-0.3) = +1); DPO-Positive with lambda 4 adds 4*0.1 -> -0.5*10*(0.1-0.3+0.4) = -1
    # pair 1: the winner's error fell by 0.1 (the hinge is 0): -0.5*10*(-0.1-0.1) = +1 with or without it
    model_w, model_l, ref_w, ref_l = t(0.3, 0.1), t(0.5, 0.3), t(0.2, 0.2), t(0.2, 0.2)
    plain = dpo_loss(model_w, model_l, ref_w, ref_l, beta=10.0)
    positive = dpo_loss(model_w, model_l, ref_w, ref_l, beta=10.0, positive=4.0)
    assert plain.inside_term.tolist() == pytest.approx([1.0, 1.0])
    assert positive.inside_term.tolist() == pytest.approx([-1.0, 1.0])
    assert positive.loss.item() == pytest.approx((softplus(1) + softplus(-1)) / 2, rel=1e-12)
    assert positive.implicit_accuracy.item() == 0.5
    assert positive.chosen_error_change.tolist() == pytest.approx([0.1, -0.1])


def test_dpo_anchor_charges_what_both_images_gain_or_lose_together_not_what_moves_between_them() -> None:
    # both pairs: the loser's error rose 0.2 more than the winner's (inside = -0.5*10*(-0.2) = +1 each);
    # pair 0 also moved both by +0.1 (common = -0.25*10*(0.1+0.3) = -1), pair 1 by -0.1 (-0.25*10*(-0.1+0.1) = 0)
    model_w, model_l, ref_w, ref_l = t(0.3, 0.1), t(0.5, 0.3), t(0.2, 0.2), t(0.2, 0.2)
    plain = dpo_loss(model_w, model_l, ref_w, ref_l, beta=10.0)
    anchored = dpo_loss(model_w, model_l, ref_w, ref_l, beta=10.0, anchor=2.0)
    assert anchored.inside_term.tolist() == plain.inside_term.tolist() == pytest.approx([1.0, 1.0])
    assert anchored.loss.item() == pytest.approx(softplus(-1) + 2.0 * ((-1 + 0) / 2) ** 2, rel=1e-12)
    # every image 0.1 likelier: pair 0's common -0.5, pair 1's +0.5; the batch's mean drift is 0, so no charge
    shifted = dpo_loss(model_w - 0.1, model_l - 0.1, ref_w, ref_l, beta=10.0, anchor=2.0)
    assert shifted.inside_term.tolist() == pytest.approx([1.0, 1.0])
    assert shifted.loss.item() == pytest.approx(softplus(-1), rel=1e-12)


def test_dpo_loss_at_reference_is_log_two() -> None:
    out = dpo_loss(t(0.4), t(0.7), t(0.4), t(0.7), beta=5000.0)
    assert out.loss.item() == pytest.approx(math.log(2))
    assert out.implicit_accuracy.item() == 0.0


def test_ddpo_clipped_surrogate() -> None:
    log_new = t(math.log(1.5), math.log(0.5), math.log(1.05), math.log(1.5))
    log_old = t(0, 0, 0, 0)
    adv = t(1, -1, 2, -1)
    # per element max(-A r, -A clip(r, 0.8, 1.2)):
    #   r=1.5,  A=1  -> max(-1.5, -1.2) = -1.2
    #   r=0.5,  A=-1 -> max(0.5, 0.8)   = 0.8
    #   r=1.05, A=2  -> max(-2.1, -2.1) = -2.1
    #   r=1.5,  A=-1 -> max(1.5, 1.2)   = 1.5
    out = ddpo_clipped_loss(log_new, log_old, adv, clip_range=0.2)
    assert out.loss.item() == pytest.approx((-1.2 + 0.8 - 2.1 + 1.5) / 4, rel=1e-12)
    assert out.clip_fraction.item() == pytest.approx(3 / 4)
    kl = 0.5 * (2 * math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.05) ** 2) / 4
    assert out.approx_kl.item() == pytest.approx(kl, rel=1e-12)


def test_ddpo_advantage_clipping() -> None:
    out = ddpo_clipped_loss(t(0.0), t(0.0), t(10.0), clip_range=0.2, adv_clip_max=5.0)
    assert out.loss.item() == pytest.approx(-5.0)


def test_normalize_advantages_per_prompt() -> None:
    rewards = [1.0, 3.0, 10.0, 10.0, 16.0, 5.0]
    ids = ["a", "a", "b", "b", "b", "c"]
    adv = normalize_advantages_per_prompt(rewards, ids, eps=0.0)
    std_b = math.sqrt((4 + 4 + 16) / 3)
    lone = (5.0 - statistics.fmean(rewards)) / statistics.pstdev(rewards)  # single sample: batch stats
    expected = [-1.0, 1.0, -2 / std_b, -2 / std_b, 4 / std_b, lone]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)


def test_batch_scaled_advantages_keep_how_far_apart_the_reward_puts_a_groups_images() -> None:
    # Group a's rewards are 100 times further apart than group b's: per-group std makes both +-1,
    # one batch-wide std keeps a's advantages 100 times b's.
    rewards = [0.0, 2.0, 5.0, 5.02]
    ids = ["a", "a", "b", "b"]
    grouped = normalize_advantages_per_prompt(rewards, ids, eps=0.0)
    assert grouped.tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0], rel=1e-4)
    batch = normalize_advantages_per_prompt(rewards, ids, eps=0.0, scale="batch")
    centred = [-1.0, 1.0, -0.01, 0.01]
    spread = statistics.pstdev(centred)
    assert batch.tolist() == pytest.approx([c / spread for c in centred], rel=1e-4)
    assert statistics.pstdev(batch.tolist()) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="scale must be 'group' or 'batch'"):
        normalize_advantages_per_prompt(rewards, ids, scale="prompt")  # type: ignore[arg-type]


def test_normalize_advantages_checks_lengths() -> None:
    with pytest.raises(ValueError, match="prompt ids"):
        normalize_advantages_per_prompt([1.0, 2.0], ["a"])


def test_gaussian_kl_same_std() -> None:
    kl = gaussian_kl_same_std(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), 2.0)
    assert kl.tolist() == pytest.approx([(1 / 8 + 4 / 8) / 2])
