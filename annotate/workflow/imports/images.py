"""Find the bytes of an imported image and check that they are one: uploads, a zip, the import root, the
configured S3 bucket, or an http(s) URL fetched through :func:`core.outbound.fetch`.

Every problem is an :class:`ImageProblem` whose message says what is wrong with that reference; the
import reports it with the row's line and the image's column.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.files.storage import default_storage
from PIL import Image, UnidentifiedImageError

from annotate.workflow.imports.table import ImageRef
from core.outbound import OutboundError, fetch

# Pillow format -> (content type, file extension)
FORMATS = {"PNG": ("image/png", "png"), "JPEG": ("image/jpeg", "jpg"), "WEBP": ("image/webp", "webp"),
           "GIF": ("image/gif", "gif")}


class ImageProblem(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int
    url_timeout: float

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(max_bytes=settings.IMPORT_MAX_IMAGE_BYTES, max_pixels=settings.IMPORT_MAX_IMAGE_PIXELS,
                   url_timeout=float(settings.IMPORT_URL_TIMEOUT_SECONDS))


@dataclass(frozen=True)
class CheckedImage:
    sha256: str
    content_type: str
    extension: str
    width: int
    height: int
    size_bytes: int
    source: str  # an ExternalSource value
    name: str

    @property
    def storage_key(self) -> str:
        """Content-addressed: identical bytes are one file, whoever imports them."""
        return f"external/{self.sha256[:2]}/{self.sha256}.{self.extension}"


def inspect(data: bytes, *, limits: Limits, source: str, name: str) -> CheckedImage:
    """Check that ``data`` is a whole PNG, JPEG, WebP or GIF within the limits."""
    if len(data) > limits.max_bytes:
        raise ImageProblem(f"the image is {len(data):,} bytes; the limit is {limits.max_bytes:,}")
    if not data:
        raise ImageProblem("unreadable image: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt, (width, height) = image.format, image.size
                if fmt not in FORMATS:
                    raise ImageProblem(f"unsupported image type {fmt}; use PNG, JPEG, WebP or GIF")
                if width * height > limits.max_pixels:
                    raise ImageProblem(f"the image is {width}x{height} pixels; the limit is "
                                       f"{limits.max_pixels:,} pixels")
                image.verify()
            with Image.open(io.BytesIO(data)) as image:  # verify() leaves the image unusable: decode afresh
                if fmt == "JPEG":
                    image.draft("RGB", (64, 64))  # decode at a fraction of the size: enough to find truncation
                image.load()
    except ImageProblem:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageProblem("unreadable image: not a PNG, JPEG, WebP or GIF file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(f"unreadable image: {exc}") from None
    content_type, extension = FORMATS[fmt]
    return CheckedImage(sha256=hashlib.sha256(data).hexdigest(), content_type=content_type, extension=extension,
                        width=width, height=height, size_bytes=len(data), source=source, name=name[:2000])


class Sources:
    """Where names point: uploaded files (by name), a zip's entries, and folders on the server.

    ``uploads`` maps a file's name as sent (and, when unique, its base name) to its storage key.
    ``folders`` are searched in order for relative names; every path must stay inside its folder.
    """

    def __init__(self, *, uploads: dict[str, str], zip_path: Path | None, folders: list[Path],
                 limits: Limits) -> None:
        self.uploads = dict(uploads)
        by_base: dict[str, list[str]] = {}
        for name in uploads:
            by_base.setdefault(PurePosixPath(name).name, []).append(name)
        self.upload_bases = {base: names[0] for base, names in by_base.items() if len(names) == 1}
        self.zip = zipfile.ZipFile(zip_path) if zip_path else None
        self.zip_entries: dict[str, str] = {}
        if self.zip is not None:
            entries = [info.filename for info in self.zip.infolist() if not info.is_dir()]
            self.zip_entries = {entry: entry for entry in entries}
            bases: dict[str, list[str]] = {}
            for entry in entries:
                parts = PurePosixPath(entry).parts
                for depth in range(1, len(parts)):  # without its leading folders: "pics/a.png" -> "a.png"
                    bases.setdefault(str(PurePosixPath(*parts[depth:])), []).append(entry)
            for short, full in bases.items():
                if short not in self.zip_entries and len(full) == 1:
                    self.zip_entries[short] = full[0]
        self.folders = [folder.resolve() for folder in folders]
        self.limits = limits

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def read(self, ref: ImageRef) -> CheckedImage:
        data, source, name = self.fetch(ref)
        return inspect(data, limits=self.limits, source=source, name=name)

    def fetch(self, ref: ImageRef) -> tuple[bytes, str, str]:
        """The bytes a reference names, with its source (an ``ExternalSource`` value) and original name."""
        if ref.kind == "bytes":
            assert isinstance(ref.value, bytes)
            return ref.value, "inline", ref.name or ref.column
        value = str(ref.value)
        if ref.kind == "url":
            try:
                fetched = fetch(value, field=ref.column, max_bytes=self.limits.max_bytes,
                                timeout=self.limits.url_timeout, content_types=("image/",))
            except OutboundError as exc:
                raise ImageProblem(f"missing image: {exc.message}") from None
            return fetched.content, "url", value
        if ref.kind == "s3":
            return self._s3(value), "s3", value
        return self._named(value)

    def _s3(self, url: str) -> bytes:
        bucket, _, key = url[len("s3://"):].partition("/")
        configured = getattr(settings, "AWS_STORAGE_BUCKET_NAME", "")
        if not configured:
            raise ImageProblem(f"{url}: no S3 bucket is configured (AWS_STORAGE_BUCKET_NAME)")
        if bucket != configured:
            raise ImageProblem(f"{url}: only keys in the configured bucket {configured!r} can be imported")
        if not key or key.startswith("/") or ".." in PurePosixPath(key).parts:
            raise ImageProblem(f"{url}: not a key")
        try:
            if default_storage.size(key) > self.limits.max_bytes:
                raise ImageProblem(f"{url} is larger than the limit of {self.limits.max_bytes:,} bytes")
            with default_storage.open(key, "rb") as handle:
                return handle.read(self.limits.max_bytes + 1)
        except ImageProblem:
            raise
        except Exception:  # boto's ClientError, FileNotFoundError, ...: the key is not there or not readable
            raise ImageProblem(f"missing image: no key {key!r} in bucket {configured!r}") from None

    def _named(self, name: str) -> tuple[bytes, str, str]:
        clean = name.replace("\\", "/")
        key = self.uploads.get(clean) or self.uploads.get(self.upload_bases.get(PurePosixPath(clean).name, ""))
        if key:
            with default_storage.open(key, "rb") as handle:
                return handle.read(self.limits.max_bytes + 1), "upload", name
        if self.zip is not None:
            entry = self.zip_entries.get(clean.lstrip("./")) or self.zip_entries.get(clean)
            if entry:
                info = self.zip.getinfo(entry)
                if info.file_size > self.limits.max_bytes:
                    raise ImageProblem(f"{name} is {info.file_size:,} bytes; the limit is {self.limits.max_bytes:,}")
                try:
                    return self.zip.read(entry), "zip", name
                except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
                    raise ImageProblem(f"unreadable image: the zip entry {entry!r} is damaged ({exc})") from None
        for folder in self.folders:
            path = (folder / clean).resolve() if not Path(clean).is_absolute() else Path(clean).resolve()
            if not path.is_relative_to(folder):
                if Path(clean).is_absolute() or ".." in Path(clean).parts:
                    raise ImageProblem(f"{name} is outside the import root")
                continue
            if path.is_file():
                if path.stat().st_size > self.limits.max_bytes:
                    raise ImageProblem(f"{name} is {path.stat().st_size:,} bytes; the limit is "
                                       f"{self.limits.max_bytes:,}")
                return path.read_bytes(), "path", name
        raise ImageProblem(f"missing image: no file {name!r} among the uploaded images"
                           + (", in the zip" if self.zip is not None else "")
                           + (" or under the import root" if self.folders else ""))
