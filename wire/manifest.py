"""The manifest: everything the hub needs to know about one transfer, as JSON.

Schema version 1 is documented in ``docs/wire.md``. ``from_json`` validates a peer's
manifest completely (RemoteProtocolError names the field); the rest of ``wire``
trusts a Manifest object.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from wire.errors import RemoteProtocolError

SCHEMA = 1
MAX_CHUNK_SIZE = 8 * 1024 * 1024
MAX_CHUNKS = 10_000_000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class Priority(Enum):
    STAT = "stat"
    ROUTINE = "routine"

    @property
    def rank(self) -> int:
        """Lower goes first."""
        return 0 if self is Priority.STAT else 1


@dataclass(frozen=True)
class InstanceEntry:
    sop_instance_uid: str
    size: int  # bytes of the original file
    sha256: str  # of the original file
    offset: int  # where its encoded record starts in the transfer's stream
    encoded_size: int  # bytes of its encoded record
    codec: str = "zstd"  # how the record is coded: "zstd" or "raw" (wire.codec)


@dataclass(frozen=True)
class Manifest:
    box_id: str
    study_uid: str
    transfer_id: str
    priority: Priority
    codec: dict[str, Any]  # {"name": ..., **params}; see wire.codec
    chunk_size: int
    stream_size: int  # bytes of the encoded stream
    instances: tuple[InstanceEntry, ...]
    chunk_sha256: tuple[str, ...]
    follow_up_of: str | None = None  # transfer id of an earlier transfer of this study
    schema: int = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_sha256)

    def chunk_length(self, index: int) -> int:
        if not 0 <= index < self.chunk_count:
            raise RemoteProtocolError(
                f"{self.transfer_id}: chunk {index} outside 0..{self.chunk_count - 1}"
            )
        if index < self.chunk_count - 1:
            return self.chunk_size
        return self.stream_size - self.chunk_size * (self.chunk_count - 1)

    @property
    def preview(self) -> dict[str, Any] | None:
        """For a lossy preview's transfer, what it is (``method``, ``ratio``, ``of``:
        how many instances of the study the box held unsent when it was packed, which
        grows while a STAT study is still arriving); None for lossless instances."""
        p = self.extra.get("preview")
        return p if isinstance(p, dict) else None

    @property
    def payload_bytes(self) -> int:
        return sum(i.size for i in self.instances)

    def to_json(self) -> bytes:
        d = asdict(self)
        d["priority"] = self.priority.value
        d["chunk_count"] = self.chunk_count
        d["instances"] = [asdict(i) for i in self.instances]
        d["chunk_sha256"] = list(self.chunk_sha256)
        return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Manifest:
        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RemoteProtocolError(f"manifest is not JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise RemoteProtocolError("manifest must be a JSON object")
        tid = d.get("transfer_id", "?")

        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            v = d.get(key)
            if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
                raise RemoteProtocolError(f"manifest {tid}: {key} missing or not {kind}")
            return v

        if need("schema", int) != SCHEMA:
            raise RemoteProtocolError(
                f"manifest {tid}: schema {d['schema']} not understood (this side speaks "
                f"{SCHEMA}); update the hub before the boxes"
            )
        for key, pattern in (("box_id", _ID), ("transfer_id", _ID), ("study_uid", _UID)):
            if not pattern.match(need(key, str)):
                raise RemoteProtocolError(f"manifest {tid}: {key} {d[key][:80]!r} is malformed")
        try:
            priority = Priority(need("priority", str))
        except ValueError as exc:
            raise RemoteProtocolError(
                f"manifest {tid}: unknown priority {d['priority']!r}"
            ) from exc
        codec = need("codec", dict)
        if not isinstance(codec.get("name"), str):
            raise RemoteProtocolError(f"manifest {tid}: codec has no name")
        chunk_size = need("chunk_size", int)
        stream_size = need("stream_size", int)
        if not 0 < chunk_size <= MAX_CHUNK_SIZE or stream_size < 0:
            raise RemoteProtocolError(f"manifest {tid}: chunk_size/stream_size out of range")
        hashes = _chunk_hashes(tid, need("chunk_sha256", list), d, chunk_size, stream_size)
        entries = _instance_entries(tid, need("instances", list), stream_size)
        follow = d.get("follow_up_of")
        if follow is not None and (not isinstance(follow, str) or not _ID.match(follow)):
            raise RemoteProtocolError(f"manifest {tid}: follow_up_of is malformed")
        return cls(
            box_id=d["box_id"],
            study_uid=d["study_uid"],
            transfer_id=d["transfer_id"],
            priority=priority,
            codec=codec,
            chunk_size=chunk_size,
            stream_size=stream_size,
            instances=tuple(entries),
            chunk_sha256=tuple(hashes),
            follow_up_of=follow,
            extra=extra if isinstance(extra := d.get("extra"), dict) else {},
        )


def _chunk_hashes(
    tid: str, hashes: list[Any], d: dict[str, Any], chunk_size: int, stream_size: int
) -> list[str]:
    """The chunk hashes, one per chunk of the stream, each 64 hex digits."""
    expect = -(-stream_size // chunk_size)
    if len(hashes) != expect or len(hashes) > MAX_CHUNKS or d.get("chunk_count") != expect:
        raise RemoteProtocolError(
            f"manifest {tid}: {len(hashes)} chunk hashes for {stream_size} bytes in "
            f"{chunk_size}-byte chunks (expected {expect})"
        )
    if not all(isinstance(h, str) and _HEX64.match(h) for h in hashes):
        raise RemoteProtocolError(f"manifest {tid}: a chunk hash is not 64 hex digits")
    return hashes


def _instance_entries(tid: str, raw_entries: list[Any], stream_size: int) -> list[InstanceEntry]:
    """The instances, each well formed, their records one after the other covering
    the whole stream."""
    entries = []
    pos = 0
    for raw_entry in raw_entries:
        try:
            e = InstanceEntry(**raw_entry)
        except TypeError as exc:
            raise RemoteProtocolError(f"manifest {tid}: bad instance entry: {exc}") from exc
        if (
            not isinstance(e.sop_instance_uid, str)
            or not _UID.match(e.sop_instance_uid)
            or not all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0
                for x in (e.size, e.offset, e.encoded_size)
            )
            or not isinstance(e.sha256, str)
            or not _HEX64.match(e.sha256)
            or not isinstance(e.codec, str)
        ):
            raise RemoteProtocolError(f"manifest {tid}: malformed instance entry {raw_entry}")
        if e.offset != pos:
            raise RemoteProtocolError(
                f"manifest {tid}: instance {e.sop_instance_uid} at offset {e.offset}, "
                f"expected {pos}"
            )
        pos += e.encoded_size
        entries.append(e)
    if pos != stream_size:
        raise RemoteProtocolError(
            f"manifest {tid}: instances cover {pos} bytes, the stream has {stream_size}"
        )
    return entries
