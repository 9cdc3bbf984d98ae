"""Taking an instance in, whatever door it came through (C-STORE, import, upload).

One path for all of them: copy the bytes into a store temp file (hashing on the way),
fsync, prove the dataset is whole, read its identifiers, then ``Store.keep``. Nothing
is acknowledged to anybody before ``accept_*`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common.dicomfile import (
    MAX_META_BYTES,
    InstanceInfo,
    InvalidInstance,
    Meta,
    build_meta,
    read_meta,
    verify,
)
from edge.store import Outcome, Store, TempFile

BLOCK = 1 << 20


@dataclass(frozen=True)
class Accepted:
    outcome: Outcome
    info: InstanceInfo
    sha256: str
    size: int


def accept_file(
    store: Store, src: BinaryIO, size: int, source: str, max_bytes: int, stat: bool = False
) -> Accepted:
    """Keep a Part 10 file byte for byte (its own meta header included).

    ``size`` is what the caller expects to copy (for the disk-space check). Raises
    InvalidInstance (nothing kept) or StoreFull.
    """
    if size > max_bytes:
        raise InvalidInstance(f"{size} bytes is more than the {max_bytes}-byte limit")
    head = src.read(MAX_META_BYTES)
    meta = read_meta(head)
    store.ensure_room(size)
    temp = store.temp(dataset_offset=meta.end)
    return _finish(store, temp, meta, head, src, source, max_bytes, stat)


def accept_dataset(
    store: Store,
    src: BinaryIO,
    size: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    source: str,
    max_bytes: int,
    stat: bool = False,
) -> Accepted:
    """Keep a dataset received over the network behind a meta header of our own.

    ``src`` is positioned at the first dataset byte; the dataset is never re-encoded.
    """
    if size > max_bytes:
        raise InvalidInstance(f"{size} bytes is more than the {max_bytes}-byte limit")
    head = build_meta(sop_class_uid, sop_instance_uid, transfer_syntax)
    meta = read_meta(head)
    store.ensure_room(size + len(head))
    temp = store.temp(dataset_offset=meta.end)
    return _finish(
        store,
        temp,
        meta,
        head,
        src,
        source,
        max_bytes,
        stat,
        expect=(sop_class_uid, sop_instance_uid),
    )


def accept_received(
    store: Store,
    path: Path,
    meta: Meta,
    sop_class_uid: str,
    sop_instance_uid: str,
    source: str,
    max_bytes: int,
    stat: bool = False,
) -> Accepted:
    """Keep a dataset the DICOM receiver already wrote, behind our own meta header, into
    the store's ``tmp/``: the file is adopted in place (hashed, fsynced, renamed), so
    the bytes are written once."""
    size = path.stat().st_size
    if size > max_bytes:
        raise InvalidInstance(f"{size} bytes is more than the {max_bytes}-byte limit")
    temp = TempFile.adopt(path, meta.end)
    return accept_written(
        store, temp, meta, sop_class_uid, sop_instance_uid, source, max_bytes, stat
    )


def accept_written(
    store: Store,
    temp: TempFile,
    meta: Meta,
    sop_class_uid: str,
    sop_instance_uid: str,
    source: str,
    max_bytes: int,
    stat: bool = False,
) -> Accepted:
    """Keep a temp file the caller wrote (our meta header, then the dataset as it came
    off the network, hashed on the way): fsync, prove, index."""
    try:
        store.ensure_room(0)  # the bytes are on the disk already; keep the reserve intact
    except BaseException:
        temp.discard()
        raise
    return _finish(
        store,
        temp,
        meta,
        b"",
        None,
        source,
        max_bytes,
        stat,
        expect=(sop_class_uid, sop_instance_uid),
    )


def _finish(
    store: Store,
    temp: TempFile,
    meta: Meta,
    head: bytes,
    src: BinaryIO | None,
    source: str,
    max_bytes: int,
    stat: bool,
    expect: tuple[str, str] | None = None,
) -> Accepted:
    try:
        if src is not None:
            temp.write(head)
            while block := src.read(BLOCK):
                temp.write(block)
                if temp.size > max_bytes:
                    raise InvalidInstance(f"more than the {max_bytes}-byte limit per instance")
        temp.close()
        info = verify(temp.path, meta, max_bytes)
        if expect and expect != (info.sop_class_uid, info.sop_instance_uid):
            raise InvalidInstance(
                f"the request names {expect[1]} of class {expect[0]} but the dataset is "
                f"{info.sop_instance_uid} of class {info.sop_class_uid}"
            )
    except BaseException:
        temp.discard()
        raise
    outcome = store.keep(temp, info, source, stat)
    return Accepted(outcome, info, temp.sha256, temp.size)
