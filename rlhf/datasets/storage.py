"""Exports in an S3-compatible bucket (``EXPORT_STORAGE_URL``, an export's destination ``object_store``).

Laid out under the store's prefix as exports are on disk under ``PICKWISE_EXPORT_DIR``:

- ``building/<id>-attempt-<n>/``: one attempt's files, each streamed as it is written (pyarrow's S3 output
  stream sends 5 MiB multipart parts; no file is ever whole in memory). A killed attempt leaves at most an
  unfinished multipart upload there, never an object under ``data/``; the next attempt of the export, or its
  end, deletes the folder.
- ``data/<content hash>/``: the published export. The lease holder copies its attempt's objects there
  (server-side copies) after the last row, while its lease is renewed, then marks the export succeeded under
  the export's row lock (not held during the copies). The folder is keyed by content: a worker that lost its
  lease mid-copy wrote the same bytes.
  Readers load it with ``datasets.load_dataset("parquet", data_files="s3://.../pairs.parquet",
  storage_options=...)``.
- ``archives/<key>.zip``: the download (data files plus the dataset card), made once and handed out as a
  signed link that expires after ``EXPORT_DOWNLOAD_URL_SECONDS``.

The endpoint and credentials are settings (``EXPORT_S3_*``, falling back to the media bucket's), never input.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
from django.conf import settings

from core.exceptions import ApplicationError

BLOCK = 1 << 20


@functools.lru_cache(maxsize=4)
def _filesystem(endpoint: str, region: str, key: str, secret: str) -> pafs.S3FileSystem:
    options: dict[str, Any] = {"access_key": key, "secret_key": secret, "region": region}
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return pafs.S3FileSystem(**options)


@functools.lru_cache(maxsize=4)
def _client(endpoint: str, region: str, key: str, secret: str) -> Any:
    import boto3  # lazy: only object-store exports need it

    return boto3.client("s3", endpoint_url=endpoint or None, region_name=region, aws_access_key_id=key,
                        aws_secret_access_key=secret)


def _credentials() -> tuple[str, str, str, str]:
    return (settings.EXPORT_S3_ENDPOINT_URL, settings.EXPORT_S3_REGION_NAME, settings.EXPORT_S3_ACCESS_KEY_ID,
            settings.EXPORT_S3_SECRET_ACCESS_KEY)


@dataclass(frozen=True)
class ObjectStore:
    """A bucket and a key prefix (no slashes at either end; may be empty)."""

    bucket: str
    prefix: str

    @classmethod
    def from_url(cls, url: str) -> ObjectStore:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ApplicationError(f"The export's destination {url!r} is not an s3://bucket/prefix.",
                                   field="destination")
        return cls(bucket=parsed.netloc, prefix=parsed.path.strip("/"))

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def path_url(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"

    @property
    def filesystem(self) -> pafs.S3FileSystem:
        return _filesystem(*_credentials())

    @property
    def client(self) -> Any:
        return _client(*_credentials())

    def check(self) -> None:
        """The bucket exists and these credentials reach it; else an error naming the setting."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            reason = "no such bucket" if code in ("404", "NoSuchBucket") else f"the store answered {code or exc}"
            raise ApplicationError(f"EXPORT_STORAGE_URL {self.url}: {reason}.", field="destination") from None
        except BotoCoreError as exc:
            raise ApplicationError(f"EXPORT_STORAGE_URL {self.url}: {exc}", field="destination") from None

    def open_output(self, key: str) -> pa.NativeFile:
        """A streamed upload: parts go out as they fill; the object exists only once the stream is closed."""
        return self.filesystem.open_output_stream(f"{self.bucket}/{key}")

    def keys(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under ``prefix/``, in key order."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix.rstrip("/") + "/"):
            for item in page.get("Contents", []):
                yield item["Key"], int(item["Size"])

    def exists(self, prefix: str) -> bool:
        """Whether any object lies under ``prefix/``."""
        return next(self.keys(prefix), None) is not None

    def has(self, key: str) -> bool:
        """Whether the object ``key`` exists."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, prefix: str, *, folder: bool = True) -> int:
        """Delete every object under ``prefix/`` (``folder=False``: every key starting with ``prefix``)."""
        keys = [k for k, _ in self.keys(prefix)] if folder else self._starting_with(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def _starting_with(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        return [item["Key"] for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                for item in page.get("Contents", [])]

    def read_blocks(self, key: str) -> Iterator[bytes]:
        with self.filesystem.open_input_stream(f"{self.bucket}/{key}") as stream:
            while block := stream.read(BLOCK):
                yield block

    def content_hash(self, prefix: str) -> str:
        """The sha256 over the folder's files, as ``_hash_directory`` computes it on disk (same data, same hash),
        read back block by block."""
        digest = hashlib.sha256()
        base = prefix.rstrip("/") + "/"
        for key, _ in sorted(self.keys(prefix)):
            if key.rsplit("/", 1)[-1] == "README.md":
                continue
            digest.update(key[len(base):].encode())
            for block in self.read_blocks(key):
                digest.update(block)
        return digest.hexdigest()

    def publish(self, partial: str, final: str) -> None:
        """Copy the attempt's objects to ``final/`` (managed copies: multipart past 5 GiB), unless the same data
        is there already, then drop the attempt's objects."""
        if not self.exists(final):
            base = partial.rstrip("/") + "/"
            for key, _ in self.keys(partial):
                self.client.copy({"Bucket": self.bucket, "Key": key}, self.bucket,
                                 final.rstrip("/") + "/" + key[len(base):])
        self.delete(partial)

    def signed_url(self, key: str, *, filename: str) -> str:
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"'},
            ExpiresIn=settings.EXPORT_DOWNLOAD_URL_SECONDS,
        )

    def write_zip(self, key: str, *, folder: str, arcname: str, extra: dict[str, str]) -> None:
        """Zip the objects under ``folder/`` (plus ``extra`` text files) into ``key``, streamed both ways, through a
        temporary key: a zip that failed halfway is never at ``key``."""
        temporary = f"{key}.partial-{uuid.uuid4().hex}"
        base = folder.rstrip("/") + "/"
        try:
            with self.open_output(temporary) as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as bundle:
                for source, _ in self.keys(folder):
                    if source.rsplit("/", 1)[-1] == "README.md":
                        continue
                    with bundle.open(f"{arcname}/{source[len(base):]}", "w", force_zip64=True) as entry:
                        for block in self.read_blocks(source):
                            entry.write(block)
                for name, text in extra.items():
                    bundle.writestr(f"{arcname}/{name}", text)
            self.client.copy({"Bucket": self.bucket, "Key": temporary}, self.bucket, key)
        finally:
            self.delete(temporary, folder=False)


def configured_store() -> ObjectStore | None:
    return ObjectStore.from_url(settings.EXPORT_STORAGE_URL) if settings.EXPORT_STORAGE_URL else None
