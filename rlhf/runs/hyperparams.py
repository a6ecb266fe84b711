"""Hyper-parameters of runs: parsing what the browser and the API send, and building the training
code's frozen config dataclasses from a preset plus overrides, every problem an ``ApplicationError``
naming the field."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from core.exceptions import ApplicationError
from core.parsing import check_json, parse_bool, parse_json
from rlhf.training.checkpoint import config_dict as checkpoint_config_dict


def parse_hyperparameters(value: Any) -> dict[str, Any]:
    """A dict from the API, or the browser's text: a JSON object or ``key = value`` lines."""
    if value in (None, ""):
        return {}
    if isinstance(value, Mapping):
        return dict(check_json(dict(value), field="hyperparameters"))
    if not isinstance(value, str):
        raise ApplicationError("Hyper-parameters are a JSON object or key=value lines.", field="hyperparameters")
    text = value.strip()
    if text.startswith("{"):
        parsed = parse_json(text, field="hyperparameters")
        if not isinstance(parsed, dict):
            raise ApplicationError("Hyper-parameters must be a JSON object.", field="hyperparameters")
        return parsed
    result: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ApplicationError(f"Line {number} is not key=value: {line!r}.", field="hyperparameters")
        key, _, raw = line.partition("=")
        result[key.strip()] = raw.strip()
    return result


_INT_OR_NONE = {"max_steps", "image_size"}


_UPPER = {"lr": 1.0, "batch_size": 4096, "train_batch_size": 4096, "grad_accum": 1024, "epochs": 1000,
          "max_steps": 10_000_000, "iterations": 100_000, "lora_rank": 1024, "resolution": 2048,
          "sample_steps": 1000, "images_per_prompt": 1024, "prompts_per_iteration": 1024,
          "num_processes": 1024, "num_machines": 128}


def coerce(name: str, current: Any, value: Any) -> Any:
    try:
        if isinstance(current, bool):
            return parse_bool(value)
        if current is None and value in (None, "", "none", "None", "null"):
            return None
        if isinstance(current, int) or (current is None and name in _INT_OR_NONE):
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        if isinstance(current, float) or current is None:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(current, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(item).strip() for item in items if str(item).strip())
        return str(value)
    except (TypeError, ValueError):
        raise ApplicationError(f"{name} has the wrong type: {value!r}.", field=name) from None


def config_error(exc: ValueError, known: set[str], rename: Mapping[str, str]) -> ApplicationError:
    """The config dataclasses name the offending field first in their messages."""
    message = str(exc)
    first = message.split(" ", 1)[0].rstrip(":,")
    field = rename.get(first, first if first in known else "hyperparameters")
    return ApplicationError(message + ("" if message.endswith(".") else "."), field=field)


def build_config(
    factory: Callable[..., Any], config_cls: type, fixed: dict[str, Any], overrides: Mapping[str, Any],
    *, protected: set[str], rename: Mapping[str, str],
) -> Any:
    """``factory(**fixed, **coerced overrides)``; unknown, protected or out-of-range keys name the field."""
    known = {f.name for f in fields(config_cls)}
    try:
        defaults = factory(**fixed)
    except ValueError as exc:
        raise config_error(exc, known, rename) from None
    coerced: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known or key in protected:
            raise ApplicationError(f"Unknown hyper-parameter {key!r}.", field=key)
        coerced[key] = coerce(key, getattr(defaults, key), value)
        upper = _UPPER.get(key)
        if upper is not None and isinstance(coerced[key], int | float) and coerced[key] > upper:
            raise ApplicationError(f"{key} must be at most {upper}, not {coerced[key]!r}.", field=key)
    try:
        return factory(**{**fixed, **coerced})
    except ValueError as exc:
        raise config_error(exc, known, rename) from None


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON for the database (as checkpoints record it)."""
    return json_safe(checkpoint_config_dict(config))


def json_safe(value: Any) -> Any:
    """JSON for PostgreSQL: NaN and infinities become null, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
