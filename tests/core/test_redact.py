"""Server paths are hidden from people who are not superusers; links are not paths and stay."""

from __future__ import annotations

from core.redact import HIDDEN, hide_paths


def test_paths_are_hidden_and_links_kept():
    shown = hide_paths({
        "data_path": "/srv/pickwise/var/exports/7/pairs.parquet",
        "error": "No such file: /srv/pickwise/var/models/run-3/checkpoint-2",
        "backbone": "openai/clip-vit-base-patch32",
        "download_url": "/api/exports/7/download/",
        "url": "/ml/exports/7/",
        "lineage": {"lora_path": "/srv/pickwise/var/models/loras/finetune-3"},
    })
    assert shown == {
        "data_path": HIDDEN,
        "error": f"No such file: {HIDDEN}",
        "backbone": "openai/clip-vit-base-patch32",
        "download_url": "/api/exports/7/download/",
        "url": "/ml/exports/7/",
        "lineage": {"lora_path": HIDDEN},
    }
