"""Checkpoint bookkeeping shared by every trainer: metadata JSON, git commit, latest-checkpoint lookup.

A checkpoint is a directory ``<output_dir>/checkpoints/checkpoint-<step>/`` holding the model weights
(safetensors), ``pickwise.json`` (the metadata written here) and ``training_state/`` (accelerate's
``save_state``: optimiser, scheduler, RNG states) for resuming.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

METADATA_FILE = "pickwise.json"
STATE_DIR = "training_state"
CHECKPOINTS_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def git_commit(cwd: Path | None = None) -> str | None:
    """The current ``git rev-parse HEAD``, or None outside a repository, without git, or before a commit."""
    repo = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607 - git from PATH is intended
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a dataclass config (paths become strings)."""
    raw = dataclasses.asdict(config)
    return {k: str(v) if isinstance(v, Path) else v for k, v in raw.items()}


def write_metadata(
    directory: Path,
    *,
    kind: str,
    config: Any,
    seed: int,
    step: int,
    export_id: str | None = None,
    reward_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``pickwise.json``: what produced these weights (config, commit, data, seed, step)."""
    meta = {
        "kind": kind,
        "config": config_dict(config),
        "git_commit": git_commit(),
        "export_id": export_id,
        "reward_id": reward_id,
        "seed": seed,
        "step": step,
        "created_at": datetime.now(tz=UTC).isoformat(),
        **(extra or {}),
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def read_metadata(directory: Path) -> dict[str, Any]:
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a Pickwise checkpoint: {METADATA_FILE} is missing")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def check_resumable(checkpoint: Path, meta: dict[str, Any], config: Any, keys: tuple[str, ...],
                    added: dict[str, Any] | None = None) -> None:
    """ValueError unless ``config`` agrees with the checkpoint's on every key that shapes the training.

    A key in ``added`` that the checkpoint lacks was written before the key existed: it ran with that value.
    """
    for key in keys:
        was = meta["config"].get(key, (added or {}).get(key))
        if was != getattr(config, key):
            raise ValueError(f"cannot resume {checkpoint}: {key} was {was!r}, now {getattr(config, key)!r}")


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"checkpoint-{step}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (those with metadata), oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and (child / METADATA_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    """Delete the training state of all but the newest ``keep_last`` checkpoints (their weights stay)."""
    for path in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(path / STATE_DIR, ignore_errors=True)
