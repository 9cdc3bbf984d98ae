"""The sneakernet file of `radsetu pack`: one transfer (manifest + chunks) in one file,
so a study can travel on a USB stick and be ingested as if it came over the wire.

Layout: ``MAGIC``, the manifest's length (4 bytes, big endian), the manifest JSON,
then every chunk in index order (their lengths follow from the manifest).
"""

from __future__ import annotations

import struct

from wire.errors import RemoteProtocolError
from wire.manifest import Manifest

MAGIC = b"RADSETU-PACK\x00\x01"
MAX_MANIFEST = 64 * 1024 * 1024


def header(manifest: Manifest) -> bytes:
    body = manifest.to_json()
    return MAGIC + struct.pack(">I", len(body)) + body


def header_length(prefix: bytes) -> int:
    """Given the first ``len(MAGIC) + 4`` bytes, how many header bytes there are."""
    if len(prefix) < len(MAGIC) + 4 or prefix[: len(MAGIC)] != MAGIC:
        raise RemoteProtocolError("not a RadSetu pack file (no RADSETU-PACK header)")
    n: int = struct.unpack(">I", prefix[len(MAGIC) : len(MAGIC) + 4])[0]
    if n > MAX_MANIFEST:
        raise RemoteProtocolError(f"pack file manifest of {n} bytes is implausibly large")
    return len(MAGIC) + 4 + n


def read_manifest(head: bytes) -> Manifest:
    return Manifest.from_json(head[len(MAGIC) + 4 :])
