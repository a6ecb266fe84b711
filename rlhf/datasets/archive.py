"""Zip archives of finished exports, made once on first download and kept beside the export."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path


def export_archive(directory: Path) -> Path:
    """``<directory>.zip`` holding every file of the export under a folder of the same name."""
    archive = directory.with_name(f"{directory.name}.zip")
    if archive.exists():
        return archive
    handle, temporary = tempfile.mkstemp(dir=directory.parent, suffix=".zip.partial")
    os.close(handle)
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as bundle:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            bundle.write(path, arcname=f"pickwise-export-{directory.name}/{path.relative_to(directory)}")
    os.replace(temporary, archive)  # atomic: concurrent downloads never see half a zip
    return archive
