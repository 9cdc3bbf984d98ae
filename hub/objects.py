"""Where the hub keeps its large things: instances, report PDFs and the chunks of
transfers in progress, each under a key (``objects/ab/<sha256>.dcm``,
``reports/<id>-v1.pdf``, ``chunks/<transfer>/00000001``).

The default is a folder (the hub's data folder); ``[objects] url`` names an
S3-compatible object store instead (SeaweedFS, MinIO, Ceph's RGW, AWS S3), so that
hub processes on several machines see the same objects. Every put is durable when it
returns: a folder's file is fsynced and renamed and its folder fsynced; an S3 PUT
returns once the store has the object. The index (SQLite or PostgreSQL) only ever
names objects that are already stored.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any, Protocol

from common.durable import fsync_dir, write_durably

#: above this, an upload to S3 goes in parts (and a read streams in pieces)
PART_BYTES = 16 * 1024 * 1024


class ObjectStore(Protocol):
    """The hub's large things by key."""

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get(self, key: str) -> bytes: ...
    def open(self, key: str) -> IO[bytes]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def local(self, key: str) -> AbstractContextManager[Path]: ...


class FolderObjects:
    """Objects as files under ``root`` (their key is their path there)."""

    def __init__(self, root: Path, tmp: Path):
        self.root, self.tmp = Path(root), Path(tmp)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"object key {key!r} leaves the store")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        write_durably(self._path(key), data, self.tmp)

    def put_file(self, key: str, path: Path) -> None:
        """Move ``path`` (already fsynced, on the same filesystem) into place."""
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)
        fsync_dir(final.parent)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def open(self, key: str) -> IO[bytes]:
        return open(self._path(key), "rb")

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        folder = self._path(prefix.rstrip("/"))
        if folder.is_dir():
            shutil.rmtree(folder)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    @contextmanager
    def local(self, key: str) -> Iterator[Path]:
        """A path to the object's bytes (the file itself, here)."""
        yield self._path(key)


class S3Objects:
    """Objects in one bucket of an S3-compatible store (boto3, path-style addressing,
    which every S3-compatible server answers)."""

    def __init__(self, cfg: dict[str, Any], tmp: Path):
        import boto3  # only a hub that uses an object store needs it
        from botocore.config import Config as BotoConfig

        self.bucket = str(cfg["bucket"])
        self.tmp = Path(tmp)  # local copies for readers that need a file
        self.client = boto3.client(
            "s3",
            endpoint_url=str(cfg["url"]),
            aws_access_key_id=str(cfg["access_key"]),
            aws_secret_access_key=str(cfg["secret_key"]),
            region_name=str(cfg.get("region") or "us-east-1"),
            config=BotoConfig(
                s3={"addressing_style": "path"},
                # a store that is down costs the shared ingest worker a few seconds per
                # message, not minutes: what fails is not acknowledged to the box as
                # held, and the box sends it again
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )
        from boto3.s3.transfer import TransferConfig

        self.transfer = TransferConfig(
            multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, use_threads=False
        )

    def ensure_bucket(self) -> None:
        """Make the bucket when it is not there (a new deployment)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def put_file(self, key: str, path: Path) -> None:
        """Upload ``path`` (in parts when large), then remove the local file."""
        self.client.upload_file(str(path), self.bucket, key, Config=self.transfer)
        Path(path).unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def open(self, key: str) -> IO[bytes]:
        """A seekable copy (pydicom and Flask's send_file seek): in memory up to
        PART_BYTES, else spooled to a temporary file."""
        import tempfile

        spool = tempfile.SpooledTemporaryFile(max_size=PART_BYTES, dir=self.tmp)  # noqa: SIM115
        self.client.download_fileobj(self.bucket, key, spool, Config=self.transfer)
        spool.seek(0)
        return spool  # type: ignore[return-value]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    @contextmanager
    def local(self, key: str) -> Iterator[Path]:
        """A path to a copy of the object, removed afterwards (for readers that need a
        file, e.g. the self-check of a stored instance)."""
        import tempfile

        fd, name = tempfile.mkstemp(suffix=".obj", dir=self.tmp)
        os.close(fd)
        try:
            self.client.download_file(self.bucket, key, name, Config=self.transfer)
            yield Path(name)
        finally:
            os.unlink(name)


_S3: dict[tuple[str, ...], S3Objects] = {}


def object_store(cfg: dict[str, Any], root: Path, tmp: Path) -> ObjectStore:
    """The configured store: S3 when ``[objects] url`` is set (one client per process,
    shared by its threads, as boto3's clients allow), else the data folder."""
    if cfg.get("url"):
        # per process: a client made before gunicorn forks must not share its pooled
        # connections with the workers
        key = (str(os.getpid()),) + tuple(
            str(cfg.get(k, "")) for k in ("url", "bucket", "access_key", "secret_key")
        )
        if key not in _S3:
            _S3[key] = S3Objects(cfg, tmp)
        return _S3[key]
    return FolderObjects(root, tmp)
