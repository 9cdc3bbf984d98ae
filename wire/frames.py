"""What travels in each MQTT message: topic names, the chunk frame and the manifest's
coding. Pure.

A chunk message's payload is a small binary header followed by the chunk's bytes, so
that any MQTT broker (v3.1.1 bridges included) carries it unchanged:

    b"RSC1" | attempt (1 byte) | transfer id length (1 byte) | transfer id (ASCII)
           | index (4 bytes, BE) | data

``attempt`` is 0 the first time the box's application sends the chunk and counts its
own resends (capped at 255); a broker's or client library's redelivery repeats the
same bytes. The hub counts a held chunk that arrives with attempt > 0 as the box
resending what the hub had acknowledged. The header costs 10 bytes plus the transfer
id (42 bytes for a 32-hex id).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import zstandard

from wire.errors import RemoteProtocolError
from wire.inflate import BoundedZstd, Inflated
from wire.manifest import MAX_CHUNK_SIZE

PREFIX = "radsetu/v1"
CHUNK_MAGIC = b"RSC1"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame's first bytes; a JSON manifest's are "{"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a compressed manifest inflates to no more
MANIFEST_LEVEL = 3
_ID = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_BOX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# the leaves under radsetu/v1/<box>/
UP_MANIFEST = "up/manifest"
UP_CHUNK = "up/chunk"
DOWN_ACK = "down/ack"
DOWN_REPORT = "down/report"
UP_REPORT_ACK = "up/report-ack"
UP_STUDY = "up/study"  # the clinic marked a study STAT or wrote its clinical note
DOWN_STUDY = "down/study"  # the hub's word on a study (a radiologist is reading it)
DOWN_RESEND = "down/resend"  # the hub asks for delivered studies again (it lost them)
UP_RESEND = "up/resend"  # the box's answer: what it queued, and why not the rest
UP_ORDER = "up/order"  # an order reception made at the clinic, and each change of its state
DOWN_ORDER = "down/order"  # the hub keeps that order as it is now
DOWN_KEPT = "down/kept"  # the hub has that study update, confirmation or print: not again
STATUS = "status"


def topic(box_id: str, leaf: str) -> str:
    return f"{PREFIX}/{box_id}/{leaf}"


def parse_topic(name: str) -> tuple[str, str]:
    """(box id, leaf) of a RadSetu topic; RemoteProtocolError for anything else."""
    parts = name.split("/", 3)
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != PREFIX or not _BOX.match(parts[2]):
        raise RemoteProtocolError(f"not a RadSetu topic: {name[:120]!r}")
    return parts[2], parts[3]


@dataclass(frozen=True)
class ChunkFrame:
    transfer_id: str
    index: int
    attempt: int
    data: memoryview


def encode_chunk(transfer_id: str, index: int, data: bytes, attempt: int = 0) -> bytes:
    tid = transfer_id.encode("ascii")
    head = bytes([min(attempt, 255), len(tid)])
    return b"".join((CHUNK_MAGIC, head, tid, struct.pack(">I", index), data))


def chunk_overhead(transfer_id: str) -> int:
    return len(CHUNK_MAGIC) + 2 + len(transfer_id) + 4


def decode_chunk(payload: bytes) -> ChunkFrame:
    """One chunk message; RemoteProtocolError says what is wrong with a malformed one.
    The data is a view into ``payload`` (no copy)."""
    view = memoryview(payload)
    if len(view) < 6 or bytes(view[:4]) != CHUNK_MAGIC:
        raise RemoteProtocolError("chunk message without the RSC1 header")
    attempt, n = view[4], view[5]
    if len(view) < 6 + n + 4:
        raise RemoteProtocolError("chunk message shorter than its header")
    tid = bytes(view[6 : 6 + n])
    if not _ID.match(tid):
        raise RemoteProtocolError(f"chunk message with a malformed transfer id {tid[:40]!r}")
    (index,) = struct.unpack(">I", view[6 + n : 10 + n])
    data = view[10 + n :]
    if len(data) > MAX_CHUNK_SIZE:
        raise RemoteProtocolError(f"chunk of {len(data)} bytes is larger than any chunk size")
    return ChunkFrame(tid.decode("ascii"), index, attempt, data)


def encode_manifest(body: bytes) -> bytes:
    """A manifest's JSON as ``up/manifest`` carries it: as one zstd frame, less than
    half its size (the chunks' SHA-256 in hex are most of a big study's manifest). A box
    sends every unfinished transfer's manifest again after each reconnect, in front of
    any chunk, so on a slow link these bytes are seconds before a STAT study's."""
    return zstandard.ZstdCompressor(level=MANIFEST_LEVEL).compress(body)


def decode_manifest(payload: bytes) -> bytes:
    """The manifest JSON of an ``up/manifest`` message: zstd-coded (``encode_manifest``)
    or, from a box of an earlier version, plain. RemoteProtocolError for a zstd frame
    that is damaged or inflates past MAX_MANIFEST_BYTES; whether the JSON is a
    manifest is for ``Manifest.from_json`` to say."""
    if payload[: len(ZSTD_MAGIC)] != ZSTD_MAGIC:
        return payload
    try:
        return b"".join(BoundedZstd(MAX_MANIFEST_BYTES).pieces(payload))
    except Inflated as exc:
        raise RemoteProtocolError(
            f"compressed manifest inflates past {MAX_MANIFEST_BYTES} bytes"
        ) from exc
    except zstandard.ZstdError as exc:
        raise RemoteProtocolError(f"compressed manifest not readable: {exc}") from exc
