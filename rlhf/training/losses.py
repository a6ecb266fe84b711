"""Pure loss functions for reward modelling and diffusion fine-tuning.

Every function here takes tensors and returns tensors: no modules, no optimisers, no I/O. Each one has a
hand-computed unit test in ``tests/rlhf/test_losses.py``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.training.configs import AdvantageScale as AdvantageScale


def _weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return values.mean()
    weight = weight.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1e-12)


def bradley_terry_loss(
    r_chosen: Tensor, r_rejected: Tensor, label: Tensor | None = None, weight: Tensor | None = None
) -> Tensor:
    """Bradley–Terry negative log-likelihood with soft labels (PickScore's objective).

    ``label`` is the probability that the first image (``r_chosen``) is preferred: 1 for a hard preference,
    0.5 for a tie, 0 when the second one won. With soft labels this equals PickScore's cross-entropy between
    ``softmax([r_chosen, r_rejected])`` and ``[label, 1 - label]``. ``weight`` gives each pair a weight; the
    result is the weighted mean ``sum(w * l) / sum(w)``.
    """
    diff = r_chosen - r_rejected
    p = torch.ones_like(diff) if label is None else label.to(diff.dtype)
    per_pair = -(p * F.logsigmoid(diff) + (1 - p) * F.logsigmoid(-diff))
    return _weighted_mean(per_pair, weight)


def plackett_luce_loss(scores: Tensor, ranks: Tensor, weight: Tensor | None = None) -> Tensor:
    """Plackett–Luce negative log-likelihood of a ranking, with ties handled by Efron's approximation.

    ``scores`` and ``ranks`` are ``(N,)`` for one list or ``(B, N)`` for a batch. Rank 0 is the best;
    equal ranks are ties; a negative rank marks padding (lists shorter than N). The result is the (weighted)
    mean over lists of each list's negative log-likelihood (a sum over its stages).

    Tie convention (Efron, 1977). Items are removed best-first, one tied group ``G`` (``d`` items) at a time,
    from the set ``R`` of items not yet removed. With ``A = sum_{j in R} exp(s_j)`` and
    ``B = sum_{j in G} exp(s_j)`` the group contributes

        sum_{i in G} s_i  -  sum_{k=0}^{d-1} log(A - (k / d) * B)

    which for ``d = 1`` is the ordinary Plackett–Luce stage ``s_i - log A``. The last group is included
    (a singleton last stage contributes ``log 1 = 0``; a tied last group does not).
    """
    if scores.shape != ranks.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and ranks {tuple(ranks.shape)} differ in shape")
    if scores.dim() == 1:
        scores, ranks = scores.unsqueeze(0), ranks.unsqueeze(0)
    nll = []
    for s_row, r_row in zip(scores, ranks, strict=True):
        valid = r_row >= 0
        s, r = s_row[valid], r_row[valid]
        total = s.new_zeros(())
        remaining = torch.ones_like(s, dtype=torch.bool)
        for level in torch.unique(r, sorted=True):
            group = r == level
            d = int(group.sum())
            shift = s[remaining].max().detach()
            a = torch.exp(s[remaining] - shift).sum()
            b = torch.exp(s[group] - shift).sum()
            total = total + s[group].sum()
            for k in range(d):
                total = total - (shift + torch.log(a - (k / d) * b))
            remaining = remaining & ~group
        nll.append(-total)
    return _weighted_mean(torch.stack(nll), weight)


def choose_one_loss(scores: Tensor, chosen_index: Tensor, weight: Tensor | None = None) -> Tensor:
    """HPSv2-style loss: softmax over the N candidates of each prompt, cross-entropy on the chosen one.

    ``scores`` is ``(B, N)``; ``chosen_index`` is ``(B,)`` long. Padding candidates may be given ``-inf``.
    """
    per_list = F.cross_entropy(scores, chosen_index.long(), reduction="none")
    return _weighted_mean(per_list, weight)


class DPOLossOutput(NamedTuple):
    loss: Tensor  # scalar, to backpropagate
    implicit_accuracy: Tensor  # scalar in [0, 1]: share of pairs where the policy beats the reference
    inside_term: Tensor  # (B,) the argument of the log-sigmoid, for logging
    # (B,) the policy's denoising error on each preferred image minus the reference's: above 0, the policy
    # finds the images people preferred less likely than the model it started from
    chosen_error_change: Tensor


def dpo_loss(
    model_err_w: Tensor,
    model_err_l: Tensor,
    ref_err_w: Tensor,
    ref_err_l: Tensor,
    beta: float,
    weight: Tensor | None = None,
    positive: float = 0.0,
    anchor: float = 0.0,
) -> DPOLossOutput:
    """Diffusion-DPO loss (Wallace et al. 2023), in the diffusers example's form.

    The ``*_err_*`` tensors are ``(B,)`` per-sample denoising errors ``||eps - eps_theta(x_t, t)||^2``
    (mean over pixels) for the preferred (``w``) and rejected (``l``) images, from the policy and the
    reference model, all at the same noise and timestep::

        inside = -0.5 * beta * ((model_w - ref_w) - (model_l - ref_l) + positive * max(0, model_w - ref_w))
        loss = -logsigmoid(inside)

    DPO's loss sees only the difference between the two changes, so the policy can lower the likelihood of
    the preferred images too, as long as it lowers the rejected ones' more. ``positive`` (the lambda of
    DPO-Positive, Pal et al. 2024; 0 is plain DPO) charges every unit by which the policy's error on a
    preferred image exceeds the reference's.

    On labels that carry no preference the loss is flat along the changes both images share, so the policy
    drifts there freely: every image less likely (plain DPO), or more likely (DPO-Positive). ``anchor``
    (0: off) charges that drift, ``anchor * common**2`` with ``common = -0.25 * beta * mean((model_w - ref_w)
    + (model_l - ref_l))`` over the batch (the inside term's units): the policy may move likelihood from
    rejected images to preferred ones, not onto or off both. The implicit accuracy counts ``inside > 0`` (a
    tie at exactly 0 counts as wrong, as in diffusers).
    """
    chosen_change, rejected_change = model_err_w - ref_err_w, model_err_l - ref_err_l
    inside = -0.5 * beta * (chosen_change - rejected_change + positive * F.relu(chosen_change))
    loss = _weighted_mean(-F.logsigmoid(inside), weight)
    if anchor:
        loss = loss + anchor * _weighted_mean(-0.25 * beta * (chosen_change + rejected_change), weight) ** 2
    accuracy = (inside > 0).to(inside.dtype).mean()
    return DPOLossOutput(loss=loss, implicit_accuracy=accuracy, inside_term=inside.detach(),
                         chosen_error_change=chosen_change.detach())


class PolicyLossOutput(NamedTuple):
    loss: Tensor  # scalar, to backpropagate
    approx_kl: Tensor  # scalar: 0.5 * mean((log_prob_new - log_prob_old)^2), as in ddpo-pytorch
    clip_fraction: Tensor  # scalar: share of ratios outside [1 - clip_range, 1 + clip_range]


def ddpo_clipped_loss(
    log_prob_new: Tensor,
    log_prob_old: Tensor,
    advantages: Tensor,
    clip_range: float,
    adv_clip_max: float | None = None,
) -> PolicyLossOutput:
    """The PPO clipped surrogate used by DDPO (Black et al. 2023) and Flow-GRPO, averaged over elements.

    ``ratio = exp(log_prob_new - log_prob_old)``;
    ``loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))``. Advantages are optionally
    clipped to ``[-adv_clip_max, adv_clip_max]`` first.
    """
    if adv_clip_max is not None:
        advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    log_ratio = log_prob_new - log_prob_old
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    approx_kl = 0.5 * (log_ratio.detach() ** 2).mean()
    clip_fraction = ((ratio.detach() - 1.0).abs() > clip_range).to(ratio.dtype).mean()
    return PolicyLossOutput(loss=loss, approx_kl=approx_kl, clip_fraction=clip_fraction)


def gaussian_kl_same_std(mean_p: Tensor, mean_q: Tensor, std: Tensor | float) -> Tensor:
    """KL(N(mean_p, std^2) || N(mean_q, std^2)) per sample, averaged over non-batch dims.

    For equal variances the KL is ``(mean_p - mean_q)^2 / (2 std^2)`` per dimension (the Flow-GRPO KL
    term between the policy and the reference's denoising step).
    """
    std_t = torch.as_tensor(std, dtype=mean_p.dtype, device=mean_p.device)
    kl = (mean_p - mean_q) ** 2 / (2 * std_t**2)
    return kl.mean(dim=tuple(range(1, kl.dim()))) if kl.dim() > 1 else kl


# How normalize_advantages_per_prompt scales each prompt's centred rewards (DDPOConfig.advantage_scale).


def normalize_advantages_per_prompt(
    rewards: Tensor | Sequence[float],
    prompt_ids: Sequence[Hashable],
    eps: float = 1e-6,
    scale: AdvantageScale = "group",
) -> Tensor:
    """Group-normalised advantages: ``(r - mean_g) / (std_g + eps)`` over the samples of each prompt ``g``.

    ``std`` is the population standard deviation (ddof 0), as in ddpo-pytorch's per-prompt stat tracker
    and Flow-GRPO. A prompt with a single sample has no spread of its own, so it falls back to the
    batch-wide mean and std (ddpo-pytorch's ``min_count`` fallback).

    ``scale="batch"`` divides every group's centred rewards by one standard deviation, that of all the
    centred rewards, instead of each group's own (Dr. GRPO, Liu et al. 2025, drops the per-group std).
    A group whose images the reward barely tells apart then gets small advantages instead of unit ones:
    with a weak reward model, most of a per-group-normalised update is noise.
    """
    if scale not in get_args(AdvantageScale):
        raise ValueError(f"scale must be 'group' or 'batch', not {scale!r}")
    r = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    if r.numel() != len(prompt_ids):
        raise ValueError(f"{r.numel()} rewards but {len(prompt_ids)} prompt ids")
    advantages = torch.empty_like(r)
    global_mean, global_std = r.mean(), r.std(unbiased=False)
    groups: dict[Hashable, list[int]] = {}
    for i, pid in enumerate(prompt_ids):
        groups.setdefault(pid, []).append(i)
    for members in groups.values():
        idx = torch.tensor(members)
        group = r[idx]
        if len(members) > 1:
            mean, std = group.mean(), group.std(unbiased=False)
        else:
            mean, std = global_mean, global_std
        advantages[idx] = (group - mean) if scale == "batch" else (group - mean) / (std + eps)
    if scale == "batch":
        advantages = advantages / (advantages.std(unbiased=False) + eps)
    return advantages


def log_normal_density(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Element-wise log N(x; mean, std^2) = -(x - mean)^2 / (2 std^2) - log std - log sqrt(2 pi)."""
    return -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
