"""Fixtures for the generation tests: a tiny pipeline on disk, registered as a model version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from generation import worker
from generation.tiny import build_tiny_lora

# Cheap defaults for the tiny model: 32x32 images (4x4 latents), 4 DDIM steps, with guidance.
TINY_DEFAULTS = {"scheduler": "ddim", "steps": 4, "guidance": 5.0, "width": 32, "height": 32}


@pytest.fixture(scope="session")
def tiny_lora_dir(tmp_path_factory: pytest.TempPathFactory, tiny_pipeline_dir: Path) -> Path:
    return build_tiny_lora(tiny_pipeline_dir, tmp_path_factory.mktemp("tiny-lora") / "lora", seed=3)


@pytest.fixture
def tiny_version(db, tiny_pipeline_dir):
    from generation.services import model_version_register

    return model_version_register(
        name="tiny", source=str(tiny_pipeline_dir), dtype="float32", **TINY_DEFAULTS
    )


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny models gain nothing from threads, and spinning OpenMP threads on a busy 2-core machine
    make them ~50x slower; worker subprocesses get GENERATION_TORCH_THREADS=1 the same way. Set for each
    test, not once a session: a test elsewhere in the same process may have changed the count, and
    the byte-for-byte tests compare renders (a batch against one image alone) that agree on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ.setdefault("GENERATION_TORCH_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_pipeline_cache():
    """Model-version ids (the cache keys) repeat across tests that roll back: start each test cold."""
    worker.reset_pipeline_cache()
    yield
    worker.reset_pipeline_cache()
