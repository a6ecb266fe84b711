"""Reward functions for DDPO: a typed Protocol and an explicit registry, validated when a config is built.

Built-ins: ``brightness`` (mean grey level in [0, 1]), ``jpeg_compressibility`` (minus the JPEG size in
kB at quality 95, as in DDPO), ``shapes_adherence`` (the shapes-world judge's share of the caption's
attributes an image gets right, in [0, 1]), ``shapes_overall`` (the judge's all-or-nothing verdict,
with partial credit only below it) and ``reward_model`` (a PickScore-style checkpoint from
:mod:`rlhf.training.reward_train`; needs a path argument). Register more with :func:`register_reward`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from generation.shapes.judge import judge
from rlhf.training.conditioning import conditions_on_source


class RewardFunction(Protocol):
    def __call__(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray | list[float]: ...


# A factory gets the config's reward argument (a path for "reward_model", None for the built-ins).
RewardFactory = Callable[[str | None], RewardFunction]


def brightness(images: list[Image.Image], prompts: list[str]) -> np.ndarray:
    return np.array([np.asarray(im.convert("L"), dtype=np.float64).mean() / 255.0 for im in images])


def jpeg_compressibility(images: list[Image.Image], prompts: list[str]) -> np.ndarray:
    sizes = []
    for im in images:
        buffer = io.BytesIO()
        im.convert("RGB").save(buffer, format="JPEG", quality=95)
        sizes.append(buffer.tell() / 1000.0)
    return -np.array(sizes)


def shapes_adherence(images: list[Image.Image], prompts: list[str]) -> np.ndarray:
    """Partial credit for prompt adherence in the shapes world: the judge's correct attributes
    (shape, colour, size, position of each object, the object count and the background) over all
    of them. Dense, unlike the judge's all-or-nothing ``overall``, so RL gets a gradient."""
    scores = []
    for image, prompt in zip(images, prompts, strict=True):
        verdict = judge(image, prompt)
        checks = [ok for attributes in verdict.objects for ok in attributes.values()]
        checks += [verdict.count, verdict.background]
        scores.append(sum(checks) / len(checks))
    return np.array(scores, dtype=np.float64)


OVERALL_BONUS = 1.0  # shapes_overall: what an image with every attribute right earns on top of its partial credit
PARTIAL_WEIGHT = 0.25  # shapes_overall: the weight of partial credit, below any fully right image


def shapes_overall(images: list[Image.Image], prompts: list[str]) -> np.ndarray:
    """The judge's overall verdict (every attribute right) as the reward, partial credit breaking ties
    among the wrong images only: 1.25 for a right image, at most 0.25 otherwise. Unlike
    ``shapes_adherence`` it never pays for one attribute (bigger, easier shapes) at another's expense."""
    partial = shapes_adherence(images, prompts)
    return np.where(partial >= 1.0, OVERALL_BONUS + PARTIAL_WEIGHT, PARTIAL_WEIGHT * partial)


class RewardModelReward:
    """Scores with a reward-model checkpoint, loaded on first use (so building a config stays cheap)."""

    def __init__(self, path: str, batch_size: int = 32) -> None:
        self.path, self.batch_size = path, batch_size
        self._model: object | None = None

    def __call__(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        # lazy: torch and transformers load on first scoring, so building a DDPO config stays cheap
        from rlhf.training.reward_model import RewardModel, load_reward_model, score

        if self._model is None:
            self._model = load_reward_model(self.path)
        assert isinstance(self._model, RewardModel)
        return np.array(score(self._model, prompts, images, self.batch_size))


def _no_argument(name: str, fn: RewardFunction) -> RewardFactory:
    def factory(argument: str | None) -> RewardFunction:
        if argument:
            raise ValueError(f"reward {name!r} takes no argument, got {argument!r}")
        return fn

    return factory


def _reward_model_factory(argument: str | None) -> RewardFunction:
    if not argument:
        raise ValueError("reward 'reward_model' needs reward_arg: the path of a reward-model checkpoint")
    path = Path(argument)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise ValueError(
            f"reward_arg {argument!r} is not a reward-model checkpoint (config.json + model.safetensors)"
        )
    if conditions_on_source(path):
        raise ValueError(
            f"reward_arg {argument!r} is a reward model conditioned on the source image (condition_on_source): it "
            "scores image edits beside their sources, and this reward scores text-to-image samples, which have none"
        )
    return RewardModelReward(argument)


REWARD_FUNCTIONS: dict[str, RewardFactory] = {
    "brightness": _no_argument("brightness", brightness),
    "jpeg_compressibility": _no_argument("jpeg_compressibility", jpeg_compressibility),
    "shapes_adherence": _no_argument("shapes_adherence", shapes_adherence),
    "shapes_overall": _no_argument("shapes_overall", shapes_overall),
    "reward_model": _reward_model_factory,
}


def register_reward(name: str, factory: RewardFactory) -> None:
    if name in REWARD_FUNCTIONS:
        raise ValueError(f"reward {name!r} is already registered")
    REWARD_FUNCTIONS[name] = factory


def build_reward(name: str, argument: str | None = None) -> RewardFunction:
    """The reward function for a name; ValueError naming the choices for an unknown one."""
    if name not in REWARD_FUNCTIONS:
        raise ValueError(f"reward must be one of {sorted(REWARD_FUNCTIONS)}, not {name!r}")
    return REWARD_FUNCTIONS[name](argument)
