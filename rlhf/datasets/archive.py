"""Zip archives of finished exports, made once on first download and cached under a key of their content.

The cache key is a hash of the export's content hash, its dataset card and its id (the folder name inside
the zip), never the id alone: after a database restore, an id that names another export finds another
archive, not a stale one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

from django.http import Http404

from rlhf.datasets.services import export_card, export_directory, export_root, export_store
from rlhf.models import PreferenceExport


def _archive_key(export: PreferenceExport, card: str) -> str:
    return hashlib.sha256(f"{export.content_hash}\x00{export.pk}\x00{card}".encode()).hexdigest()[:40]


def export_archive_url(export: PreferenceExport) -> str:
    """A signed, expiring link to the zip of a succeeded object-store export (made in the store on first
    download, streamed from its data objects). ``Http404`` when its data objects are missing."""
    store = export_store(export)
    assert store is not None, "export_archive_url is for object-store exports"
    data = store.key("data", export.content_hash)
    card = export_card(export)
    key = store.key("archives", f"{_archive_key(export, card)}.zip")
    filename = f"pickwise-export-{export.pk}.zip"
    if not store.has(key):
        if not export.content_hash or not store.exists(data):
            raise Http404("The files of this export are missing; export again.")
        store.write_zip(key, folder=data, arcname=f"pickwise-export-{export.pk}", extra={"README.md": card})
    return store.signed_url(key, filename=filename)


def export_archive(export: PreferenceExport) -> Path:
    """The zip of a succeeded export: every data file plus README.md (the card) under
    ``pickwise-export-<id>/``. ``Http404`` when its files are missing (a restored row whose data
    was never on this machine)."""
    directory = export_directory(export)
    if not export.content_hash or not directory.is_dir():
        raise Http404("The files of this export are missing; export again.")
    card = export_card(export)
    key = _archive_key(export, card)
    folder = export_root() / "archives"
    archive = folder / f"{key}.zip"
    if archive.exists():
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, suffix=".zip.partial")
    os.close(handle)
    prefix = f"pickwise-export-{export.pk}"
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as bundle:
        for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "README.md"):
            bundle.write(path, arcname=f"{prefix}/{path.relative_to(directory)}")
        bundle.writestr(f"{prefix}/README.md", card)
    os.replace(temporary, archive)  # atomic: concurrent downloads never see half a zip
    return archive
