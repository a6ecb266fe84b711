"""Train and evaluate a PickScore-style reward model from a preference export (Parquet).

Entry points: :func:`train_reward_model` (config + data path + output dir in, :class:`RewardTrainResult`
out) and :func:`evaluate_reward_model`. Output layout::

    <output_dir>/backbone-<name>/             for a named backbone (BACKBONES: "tiny", "shapes_vae", ...)
                                              (rank N > 0 of a distributed run builds its copy in
                                              backbone-<name>-rankN/ and loads rank 0's)
    <output_dir>/checkpoints/checkpoint-<N>/  model + pickwise.json + training_state/ (resumable)
    <output_dir>/final/                       the trained model + pickwise.json with eval metrics
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor
from torch.utils.data import DataLoader

from rlhf.training import evaluate as ev
from rlhf.training.checkpoint import (
    STATE_DIR,
    check_resumable,
    checkpoint_dir,
    latest_checkpoint,
    prune_checkpoints,
    read_metadata,
    write_metadata,
)
from rlhf.training.configs import REWARD_PRESETS as REWARD_PRESETS
from rlhf.training.configs import MixedPrecision as MixedPrecision
from rlhf.training.configs import RewardLoss as RewardLoss
from rlhf.training.configs import RewardModelConfig as RewardModelConfig
from rlhf.training.configs import RewardPreset as RewardPreset
from rlhf.training.configs import TieHandling as TieHandling
from rlhf.training.configs import pickscore_preset as pickscore_preset
from rlhf.training.configs import reward_preset as reward_preset
from rlhf.training.configs import shapes_reward_preset as shapes_reward_preset
from rlhf.training.configs import tiny_reward_preset as tiny_reward_preset
from rlhf.training.data import (
    PreferenceDataset,
    RankedBatch,
    RankedList,
    Split,
    collate_ranked,
    count_rows,
    images_without_source,
    iter_rows,
)
from rlhf.training.losses import bradley_terry_loss, choose_one_loss, plackett_luce_loss
from rlhf.training.reward_model import (
    BACKBONES,
    RewardModel,
    load_reward_model,
    save_reward_model,
)

OnLog = Callable[[int, Mapping[str, float]], None]
ShouldStop = Callable[[], bool]
OnPhase = Callable[[str], None]  # "loading_model", "training", ... (where the trainer is)
_RESUME_KEYS = ("backbone", "loss", "seed", "export_id", "batch_size", "grad_accum", "condition_on_source")
_RESUME_ADDED = {"condition_on_source": False}  # keys newer than some checkpoints: what those ran with
PAD_SCORE = -1e4  # score of padding slots in listwise batches (kept finite for bf16/fp16)


@dataclass(frozen=True)
class RewardEvalResult:
    accuracy: float  # tie-aware pairwise accuracy at ``threshold``
    threshold: float  # predicted-tie threshold on |p0 - p1|
    pairs: int
    by_model: dict[str, dict[str, float]] = field(default_factory=dict)
    calibration: list[ev.CalibrationBin] = field(default_factory=list)
    ece: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "threshold": self.threshold,
            "pairs": self.pairs,
            "by_model": self.by_model,
            "calibration": [b.__dict__ for b in self.calibration],
            "ece": self.ece,
        }


@dataclass(frozen=True)
class RewardTrainResult:
    model_dir: Path  # load with load_reward_model(model_dir)
    step: int
    stopped: bool  # True when should_stop() ended the run early
    last_metrics: dict[str, float]
    validation: RewardEvalResult | None
    test: RewardEvalResult | None


# ----------------------------------------------------------------------------------------------- losses
def _score_matrix(model: RewardModel | torch.nn.Module, batch: RankedBatch) -> Tensor:
    rewards = model(batch.captions, batch.pixel_values, batch.list_index, source_values=batch.source_values)
    scores = torch.full(batch.ranks.shape, PAD_SCORE, dtype=rewards.dtype, device=rewards.device)
    return scores.index_put((batch.list_index, batch.slot_index), rewards)


def _pairs(scores: Tensor, ranks: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All (i < j) pairs inside each list: rewards, BT label (1 / 0.5 / 0) and weight shared per list."""
    n = ranks.shape[1]
    valid = ranks >= 0
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=ranks.device), diagonal=1)
    mask = valid[:, :, None] & valid[:, None, :] & upper
    b, i, j = mask.nonzero(as_tuple=True)
    ri, rj = ranks[b, i], ranks[b, j]
    label = torch.where(ri < rj, 1.0, torch.where(ri == rj, 0.5, 0.0)).to(scores.dtype)
    per_list = mask.sum(dim=(1, 2)).clamp_min(1).to(weight.dtype)
    return scores[b, i], scores[b, j], label, (weight / per_list)[b]


def batch_loss(scores: Tensor, batch: RankedBatch, loss: RewardLoss) -> tuple[Tensor, Tensor]:
    """The configured loss and the batch's pairwise accuracy on untied pairs."""
    r_a, r_b, label, pair_weight = _pairs(scores, batch.ranks, batch.weight)
    decided = label != 0.5
    accuracy = (
        ((r_a > r_b) == (label == 1.0))[decided].float().mean() if decided.any() else scores.new_tensor(0.5)
    )
    if loss == "bradley_terry":
        if batch.label_0 is not None and batch.ranks.shape[1] == 2:
            return bradley_terry_loss(scores[:, 0], scores[:, 1], batch.label_0, batch.weight), accuracy
        return bradley_terry_loss(r_a, r_b, label, pair_weight), accuracy
    if loss == "plackett_luce":
        return plackett_luce_loss(scores, batch.ranks, batch.weight), accuracy
    # choose_one: the best-ranked image is the chosen one; a list whose top rank is tied has no single
    # choice and gets weight 0.
    ranks = batch.ranks.masked_fill(batch.ranks < 0, torch.iinfo(torch.long).max)
    best = ranks.min(dim=1, keepdim=True).values
    unique_top = (ranks == best).sum(dim=1) == 1
    return choose_one_loss(scores, ranks.argmin(dim=1), batch.weight * unique_top), accuracy


# ----------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def predict_pairs(
    model: RewardModel, rows: list[RankedList], batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray, list[str], list[str], np.ndarray]:
    """(p0, label_0, model_0, model_1, weight) for every pair; listwise rows give all their pairs."""
    p0, labels, m0, m1, weights = [], [], [], [], []
    model.eval()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = collate_ranked(chunk, model.transform, with_sources=model.conditions_on_source).to(model.device)
        scores = _score_matrix(model, batch).float()
        for k, row in enumerate(chunk):
            n = len(row.images)
            for i in range(n):
                for j in range(i + 1, n):
                    p0.append(float(torch.sigmoid(scores[k, i] - scores[k, j])))
                    if row.label_0 is not None:
                        labels.append(row.label_0)
                    else:
                        ri, rj = row.ranks[i], row.ranks[j]
                        labels.append(1.0 if ri < rj else (0.5 if ri == rj else 0.0))
                    models = row.models or [""] * n
                    m0.append(models[i])
                    m1.append(models[j])
                    weights.append(row.weight)
    return np.array(p0), np.array(labels), m0, m1, np.array(weights)


def evaluate_reward_model(
    model: RewardModel,
    data_path: Path,
    split: Split,
    *,
    threshold: float | None = None,
    batch_size: int = 32,
    n_bins: int = 10,
) -> RewardEvalResult | None:
    """Tie-aware accuracy on ``split``; with ``threshold=None`` the threshold is tuned on this split.

    Returns None when the split is empty.
    """
    rows = list(iter_rows(data_path, split))
    if not rows:
        return None
    p0, labels, m0, m1, _ = predict_pairs(model, rows, batch_size)
    if threshold is None:
        threshold, accuracy = ev.tune_tie_threshold(p0, labels)
    else:
        accuracy = ev.tie_aware_accuracy(p0, labels, threshold)
    bins = ev.calibration_bins(p0, labels, n_bins)
    return RewardEvalResult(
        accuracy=accuracy,
        threshold=threshold,
        pairs=len(p0),
        by_model=ev.accuracy_by_model(p0, labels, m0, m1, threshold),
        calibration=bins,
        ece=ev.expected_calibration_error(bins),
    )


# ----------------------------------------------------------------------------------------------- training
def _save_checkpoint(
    accelerator: Accelerator, model: torch.nn.Module, config: RewardModelConfig, directory: Path, **extra: Any
) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_reward_model(accelerator.unwrap_model(model), directory)
    accelerator.save_state(str(directory / STATE_DIR))
    if accelerator.is_main_process:
        write_metadata(
            directory,
            kind="reward_model",
            config=config,
            seed=config.seed,
            step=int(extra.pop("step")),
            export_id=config.export_id,
            extra=extra,
        )


def train_reward_model(
    config: RewardModelConfig,
    data_path: Path,
    output_dir: Path,
    *,
    on_log: OnLog | None = None,
    should_stop: ShouldStop | None = None,
    resume: bool = True,
    on_phase: OnPhase | None = None,
) -> RewardTrainResult:
    """Train on the ``train`` split, tune the tie threshold on ``validation``, report ``test``.

    ``on_log(step, metrics)`` is called after every optimisation step (loss, accuracy, lr, pairs_per_s)
    and after evaluations; ``should_stop()`` is polled after every step and, when true, the run saves a
    checkpoint and returns with ``stopped=True``. With ``resume`` the latest checkpoint in ``output_dir``
    is continued. ``on_phase(name)`` hears where it is: "loading_model", "training", "evaluating". A
    non-finite loss raises FloatingPointError.
    """
    data_path, output_dir = Path(data_path), Path(output_dir)
    if not data_path.is_file():
        raise FileNotFoundError(f"preference export {data_path} does not exist")
    output_dir.mkdir(parents=True, exist_ok=True)
    log: OnLog = on_log or (lambda step, metrics: None)
    phase: OnPhase = on_phase or (lambda name: None)

    # --- setup: accelerator, backbone, data, optimiser
    phase("loading_model")
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum, cpu=config.cpu
    )
    set_seed(config.seed)
    backbone = Path(config.backbone)
    if config.backbone in BACKBONES:
        # Every rank builds it (the same random draws on each), but transformers saves a model on rank 0 only:
        # the other ranks build into a directory of their own and, once rank 0's is complete, load rank 0's.
        main_dir = output_dir / f"backbone-{config.backbone}"
        own_dir = (main_dir if accelerator.is_main_process
                   else main_dir.with_name(f"{main_dir.name}-rank{accelerator.process_index}"))
        built = BACKBONES[config.backbone](own_dir, seed=config.seed, image_size=config.image_size)
        accelerator.wait_for_everyone()
        backbone = main_dir / built.relative_to(own_dir)
    model = load_reward_model(backbone, image_size=config.image_size).train()
    if config.condition_on_source:  # image edits: the head also sees the source (a no-op for a conditioned backbone)
        model.enable_source_conditioning(seed=config.seed)
        missing, images = images_without_source(data_path)  # every split: validation and test are scored too
        if missing:
            raise ValueError(f"condition_on_source: {missing} of the {images} images of {data_path.name} have no "
                             "source image; it trains on image-editing rankings only")
    elif model.conditions_on_source:
        raise ValueError(f"backbone {config.backbone} conditions on the source image: set condition_on_source")
    dataset = PreferenceDataset(
        data_path,
        "train",
        shuffle_buffer=config.shuffle_buffer,
        seed=config.seed,
        drop_ties=config.ties == "skip",
        per_prompt_weighting=config.weight_pairs_per_prompt,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    train_rows = count_rows(data_path, "train")
    if train_rows == 0:
        raise ValueError(f"{data_path} has no rows in the train split")
    processes = accelerator.num_processes
    if config.batch_size % processes:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {processes} processes")
    rows_per_step = config.batch_size * config.grad_accum  # all processes together
    total_steps = config.epochs * math.ceil(train_rows / rows_per_step)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size // processes,  # this process's share of the global micro-batch
        collate_fn=partial(collate_ranked, transform=model.transform, with_sources=config.condition_on_source),
        num_workers=config.num_workers,
    )
    optimizer = torch.optim.AdamW(model.parameter_groups(lr=config.lr, source_head_lr=config.source_head_lr),
                                  lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (config.warmup_steps + 1))
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    # --- resume from the latest checkpoint
    step, epoch, rows_in_epoch = 0, 0, 0
    latest = latest_checkpoint(output_dir) if resume else None
    if latest is not None:
        meta = read_metadata(latest)
        check_resumable(latest, meta, config, _RESUME_KEYS, _RESUME_ADDED)
        accelerator.load_state(str(latest / STATE_DIR))
        step, epoch, rows_in_epoch = meta["step"], meta["epoch"], meta["rows_in_epoch"]

    # --- train
    phase("training")
    stopped = False
    last: dict[str, float] = {}
    micro_losses: list[float] = []
    micro_acc: list[float] = []
    tick, rows_since_tick = time.perf_counter(), 0
    while step < total_steps and not stopped:
        dataset.set_epoch(epoch, skip=rows_in_epoch)
        for batch in loader:
            batch = batch.to(accelerator.device)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss, accuracy = batch_loss(_score_matrix(model, batch), batch, config.loss)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"reward model loss became {loss.item()} at step {step + 1} (epoch {epoch}); "
                        "lower lr or use mixed_precision='no'"
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro_losses.append(loss.item())
            micro_acc.append(accuracy.item())
            rows_in_epoch += len(batch.captions) * accelerator.num_processes
            rows_since_tick += len(batch.captions) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue

            # --- one optimisation step done: log, checkpoint, maybe stop
            step += 1
            now = time.perf_counter()
            means = np.array([np.mean(micro_losses), np.mean(micro_acc)])
            if processes > 1:  # equal shares: the mean of the processes' means is the global batch's
                means = accelerator.reduce(torch.tensor(means, device=accelerator.device), "mean").cpu().numpy()
            last = {
                "loss": float(means[0]),
                "accuracy": float(means[1]),
                "lr": float(scheduler.get_last_lr()[0]),
                "epoch": float(epoch),
                "pairs_per_s": rows_since_tick / max(now - tick, 1e-9),
            }
            micro_losses, micro_acc, tick, rows_since_tick = [], [], now, 0
            log(step, last)
            if config.eval_every and step % config.eval_every == 0:
                val = evaluate_reward_model(
                    accelerator.unwrap_model(model), data_path, "validation", threshold=config.tie_threshold
                )
                if val is not None:
                    log(step, {"val_accuracy": val.accuracy, "val_threshold": val.threshold})
                accelerator.unwrap_model(model).train()
            stopped = bool(should_stop and should_stop())
            due = config.checkpoint_every and step % config.checkpoint_every == 0
            if stopped or due or step >= total_steps:
                _save_checkpoint(
                    accelerator, model, config, checkpoint_dir(output_dir, step),
                    step=step, epoch=epoch, rows_in_epoch=rows_in_epoch, metrics=last,
                )  # fmt: skip
                prune_checkpoints(output_dir, config.keep_last)
            if stopped or step >= total_steps:
                break
        else:
            epoch, rows_in_epoch = epoch + 1, 0

    if stopped:
        return RewardTrainResult(checkpoint_dir(output_dir, step), step, True, last, None, None)

    # --- evaluate: tune the tie threshold on validation, apply it to test; save the final model
    phase("evaluating")
    unwrapped = accelerator.unwrap_model(model)
    validation = evaluate_reward_model(
        unwrapped, data_path, "validation", threshold=config.tie_threshold, batch_size=config.eval_batch_size
    )
    threshold = (
        config.tie_threshold
        if config.tie_threshold is not None
        else (validation.threshold if validation else 0.0)
    )
    test = evaluate_reward_model(
        unwrapped, data_path, "test", threshold=threshold, batch_size=config.eval_batch_size
    )
    final = output_dir / "final"
    if accelerator.is_main_process:
        save_reward_model(unwrapped, final)
        write_metadata(
            final,
            kind="reward_model",
            config=config,
            seed=config.seed,
            step=step,
            export_id=config.export_id,
            extra={
                "tie_threshold": threshold,
                "validation": validation.as_dict() if validation else None,
                "test": test.as_dict() if test else None,
                "metrics": last,
            },
        )
    for name, result in (("val", validation), ("test", test)):
        if result is not None:
            log(step, {f"{name}_accuracy": result.accuracy, f"{name}_threshold": result.threshold})
    return RewardTrainResult(final, step, False, last, validation, test)
