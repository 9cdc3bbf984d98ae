"""Packing a study into one encoded stream cut into chunks, and back; streaming, no I/O.

Each instance becomes one record in the stream, coded on its own (so the hub can
verify and keep instances as they complete). Codecs, named per instance in the
manifest so that an older box's transfers stay readable:

- ``zstd``: zstandard at the transfer's ``codec.level``;
- ``raw``: the bytes as they are (already-compressed pixel data gains nothing);
- ``dicom-jxl``: pixel data as a lossless JPEG XL image, the rest zstd'd
  (``wire.pixels``); chosen per instance when the packer has a ``pixel_effort`` and
  the instance suits it, otherwise the instance goes as ``zstd``;
- ``dicom-j2k-rest``: what completes the instance's lossy preview, sent earlier, to
  the original file (``wire.layered``); made by the caller (``Packer.add_record``)
  and decoded with the preview the unpacker's ``previews`` gives.

The caller owns all I/O: it feeds bytes in and writes the chunks that come out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import zstandard

from wire import layered, pixels
from wire.errors import LocalProtocolError, PreviewMissing, RemoteProtocolError
from wire.inflate import BoundedZstd, Inflated
from wire.manifest import InstanceEntry, Manifest, Priority

CODECS = ("zstd", "raw", "dicom-jxl", "dicom-j2k-rest")
WHOLE = ("dicom-jxl", "dicom-j2k-rest")  # records decoded only once all of them is in
DEFAULT_LEVEL = 3
MAX_LISTED_FALLBACKS = 20
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little-endian, as Part 10 files have it

# (file bytes, effort, zstd level) -> a dicom-jxl record, or None when the file is not
# an image it codes. It may raise anything: a codec is an optimisation, never a gate.
ImageCoder = Callable[[bytes, int, int], "bytes | None"]
# SOP Instance UID -> the preview a dicom-j2k-rest record completes, or None when it is
# not here
Previews = Callable[[str], "layered.Held | None"]


def default_image_coder(data: bytes, effort: int, level: int) -> bytes | None:
    # no check inside: the packer decodes the whole record and compares every byte
    return pixels.encode(data, effort, level, check=False)


@dataclass(frozen=True)
class Fallback:
    """An instance the pixel coder could not take; it went as zstd (or raw)."""

    sop_instance_uid: str
    reason: str


class _Record:
    def __init__(
        self,
        sop_instance_uid: str,
        codec: str,
        level: int,
        offset: int,
        pixel_effort: int | None = None,
        image_coder: ImageCoder = default_image_coder,
    ):
        if codec not in CODECS:
            raise LocalProtocolError(f"unknown codec {codec!r}")
        self.sop_instance_uid = sop_instance_uid
        self.codec = codec
        self.level = level
        self.pixel_effort = pixel_effort
        self.image_coder = image_coder
        self.fallback: str | None = None  # why the pixel coder was not used, if it failed
        self.offset = offset
        self.size = 0
        self.encoded = 0
        self.sha = hashlib.sha256()
        self._z = zstandard.ZstdCompressor(level=level).compressobj() if codec == "zstd" else None
        self._split = False  # a zstd block ended where the pixel data starts
        self._whole = bytearray() if codec == "dicom-jxl" else None

    def feed(self, data: bytes) -> bytes:
        self.size += len(data)
        self.sha.update(data)
        if self._whole is not None:  # an image coder needs the whole instance
            self._whole += data
            return b""
        out = self._zstd(self._z, data) if self._z else bytes(data)
        self.encoded += len(out)
        return out

    def _zstd(self, z: Any, data: bytes) -> bytes:
        """zstd, with a block ended where the pixel data starts. zstd stores a block as it
        is when coding it gains nothing, so a header in the same block as compressed
        pixel data (a preview's JPEG 2000) would go uncompressed with it: about 0.7 KB
        more for each preview image. The tag found elsewhere (an icon's pixel data, a
        value's bytes) only ends a block early; the frame decodes the same."""
        if self._split:
            return bytes(z.compress(data))
        at = bytes(data).find(PIXEL_DATA_TAG)
        if at < 0:
            return bytes(z.compress(data))
        self._split = True
        head = z.compress(data[:at]) + z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return bytes(head + z.compress(data[at:]))

    def end(self) -> bytes:
        if self._whole is not None:
            whole = bytes(self._whole)
            self._whole = None
            out = self._code_image(whole)
            if out is None and pixels.already_compressed(whole):
                self.codec, out = "raw", whole  # JPEG & co. gain nothing from zstd
            else:
                # plain zstd when the image coder does not apply, and when it does
                # worse (mostly empty images, where zstd's long matches win)
                z = zstandard.ZstdCompressor(level=self.level).compress(whole)
                if out is None or len(z) < len(out):
                    self.codec, out = "zstd", z
        else:
            out = self._z.flush() if self._z else b""
        self.encoded += len(out)
        return out

    def _code_image(self, whole: bytes) -> bytes | None:
        """The dicom-jxl record, or None (with ``self.fallback`` set when the coder
        failed rather than declined). The record is used only if it decodes to the
        very same bytes."""
        try:
            out = self.image_coder(whole, self.pixel_effort or 3, self.level)
        except Exception as exc:  # noqa: BLE001 - the codec's boundary: anything goes to zstd
            self.fallback = f"pixel coder failed: {type(exc).__name__}: {exc}"[:300]
            return None
        if out is None:
            return None  # not an image it codes (colour, compressed...): not a fault
        try:
            same = pixels.decode(out, len(whole)) == whole
        except Exception as exc:  # noqa: BLE001 - as above
            self.fallback = f"pixel coder's record does not decode: {exc}"[:300]
            return None
        if not same:
            self.fallback = "pixel coder's record does not decode to the same bytes"
            return None
        return out


class Packer:
    """Instances in, chunks out. Memory stays at about one chunk plus zstd's window."""

    def __init__(
        self,
        *,
        box_id: str,
        study_uid: str,
        transfer_id: str,
        priority: Priority,
        chunk_size: int,
        level: int = DEFAULT_LEVEL,
        follow_up_of: str | None = None,
        pixel_effort: int | None = None,
        extra: dict[str, Any] | None = None,
        image_coder: ImageCoder = default_image_coder,
    ):
        self.box_id, self.study_uid, self.transfer_id = box_id, study_uid, transfer_id
        self.extra = dict(extra or {})
        self.priority, self.follow_up_of = priority, follow_up_of
        self.chunk_size = chunk_size
        self.level = level
        self.pixel_effort = pixel_effort
        self.image_coder = image_coder
        self.fallbacks: list[Fallback] = []
        self._buf = bytearray()
        self._ready: list[bytes] = []
        self._hashes: list[str] = []
        self._entries: list[InstanceEntry] = []
        self._codecs: dict[str, str] = {}
        self._rec: _Record | None = None
        self._stream = 0
        self._finished = False

    def begin_instance(
        self, sop_instance_uid: str, codec: str | None = None, size: int | None = None
    ) -> None:
        """Start an instance. Without ``codec``: ``dicom-jxl`` when the packer has a
        ``pixel_effort`` and the instance (``size`` bytes, if known) is small enough to
        hold whole, else ``zstd``."""
        if self._rec is not None or self._finished:
            raise LocalProtocolError("begin_instance while an instance is open or after finish")
        if codec is None:
            fits = size is None or size <= pixels.MAX_PIXEL_BYTES
            codec = "dicom-jxl" if self.pixel_effort is not None and fits else "zstd"
        self._rec = _Record(
            sop_instance_uid,
            codec,
            self.level,
            self._stream,
            self.pixel_effort,
            self.image_coder,
        )

    def feed(self, data: bytes) -> None:
        if self._rec is None:
            raise LocalProtocolError("feed without begin_instance")
        self._out(self._rec.feed(data))

    def end_instance(self) -> InstanceEntry:
        rec = self._rec
        if rec is None:
            raise LocalProtocolError("end_instance without begin_instance")
        self._out(rec.end())
        entry = InstanceEntry(
            sop_instance_uid=rec.sop_instance_uid,
            size=rec.size,
            sha256=rec.sha.hexdigest(),
            offset=rec.offset,
            encoded_size=rec.encoded,
            codec=rec.codec,
        )
        self._entries.append(entry)
        if rec.fallback is not None:
            self.fallbacks.append(Fallback(rec.sop_instance_uid, rec.fallback))
        self._rec = None
        return entry

    def add_record(
        self, sop_instance_uid: str, codec: str, record: bytes, size: int, sha256: str
    ) -> InstanceEntry:
        """An instance the caller coded itself (and checked): its record as it is, with
        the size and SHA-256 of the file it rebuilds."""
        if self._rec is not None or self._finished:
            raise LocalProtocolError("add_record while an instance is open or after finish")
        if codec not in CODECS:
            raise LocalProtocolError(f"unknown codec {codec!r}")
        entry = InstanceEntry(
            sop_instance_uid=sop_instance_uid,
            size=size,
            sha256=sha256,
            offset=self._stream,
            encoded_size=len(record),
            codec=codec,
        )
        self._out(record)
        self._entries.append(entry)
        return entry

    def _out(self, data: bytes) -> None:
        self._stream += len(data)
        self._buf += data
        while len(self._buf) >= self.chunk_size:
            self._emit(bytes(self._buf[: self.chunk_size]))
            del self._buf[: self.chunk_size]

    def _emit(self, chunk: bytes) -> None:
        self._hashes.append(hashlib.sha256(chunk).hexdigest())
        self._ready.append(chunk)

    def chunks(self) -> list[bytes]:
        """Chunks completed since the last call, in order; write them out."""
        out, self._ready = self._ready, []
        return out

    def finish(self) -> tuple[Manifest, list[bytes]]:
        """The manifest and the last chunks. No instance may be open."""
        if self._rec is not None:
            raise LocalProtocolError("finish with an instance still open")
        if not self._entries:
            raise LocalProtocolError("a transfer needs at least one instance")
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()
        self._finished = True
        params: dict[str, Any] = {"name": "records-v1", "level": self.level}
        if self.pixel_effort is not None:
            params["pixel_effort"] = self.pixel_effort
        extra = dict(self.extra)
        if self.fallbacks:  # the hub shows them beside the transfer's figures
            extra["coder_fallbacks"] = len(self.fallbacks)
            extra["coder_fallback_reasons"] = {
                f.sop_instance_uid: f.reason for f in self.fallbacks[:MAX_LISTED_FALLBACKS]
            }
        manifest = Manifest(
            codec=params,
            chunk_size=self.chunk_size,
            stream_size=self._stream,
            instances=tuple(self._entries),
            chunk_sha256=tuple(self._hashes),
            box_id=self.box_id,
            study_uid=self.study_uid,
            transfer_id=self.transfer_id,
            priority=self.priority,
            follow_up_of=self.follow_up_of,
            extra=extra,
        )
        return manifest, self.chunks()


@dataclass(frozen=True)
class InstanceBytes:
    """A piece of a decoded instance, in order."""

    sop_instance_uid: str
    data: bytes


@dataclass(frozen=True)
class InstanceVerified:
    """Every byte of the instance arrived and its SHA-256 matches the manifest."""

    entry: InstanceEntry


class Unpacker:
    """Chunks in (in order, already checked against their hashes), instances out.

    Raises RemoteProtocolError when an instance does not decode or its SHA-256 does
    not match: its bytes must then be thrown away by the caller.
    """

    def __init__(self, manifest: Manifest, previews: Previews | None = None):
        self.m = manifest
        self.previews = previews
        self._next_chunk = 0
        self._i = 0  # current instance
        self._left = 0
        self._start_instance()

    def _start_instance(self) -> None:
        if self._i >= len(self.m.instances):
            return
        e = self.m.instances[self._i]
        if e.codec not in CODECS:
            raise RemoteProtocolError(
                f"{self.m.transfer_id}: unknown codec {e.codec!r} for {e.sop_instance_uid}"
            )
        self._left = e.encoded_size
        self._sha = hashlib.sha256()
        self._size = 0
        self._z = BoundedZstd(e.size) if e.codec == "zstd" else None
        self._whole = bytearray() if e.codec in WHOLE else None

    def _decode_whole(self, e: InstanceEntry, record: bytes) -> bytes:
        if e.codec == "dicom-jxl":
            return pixels.decode(record, e.size)
        preview = self.previews(e.sop_instance_uid) if self.previews else None
        try:
            return layered.decode_rest(record, preview, e.size)
        except PreviewMissing as exc:
            raise PreviewMissing(f"{self.m.transfer_id} {e.sop_instance_uid}: {exc}") from exc

    def feed_chunk(self, index: int, data: bytes) -> Iterator[InstanceBytes | InstanceVerified]:
        if index != self._next_chunk:
            raise LocalProtocolError(f"chunk {index} fed, expected {self._next_chunk}")
        self._next_chunk += 1
        view = memoryview(data)
        while True:
            if self._i >= len(self.m.instances):
                if len(view):
                    raise RemoteProtocolError(f"{self.m.transfer_id}: bytes past the last instance")
                return
            e = self.m.instances[self._i]
            take = min(self._left, len(view))
            part, view = view[:take], view[take:]
            self._left -= take
            if self._whole is not None:
                self._whole += part
                part = memoryview(b"")
                if not self._left:
                    part = memoryview(self._decode_whole(e, bytes(self._whole)))
                    self._whole = None
            if len(part):
                outs = self._z.pieces(part) if self._z else iter((bytes(part),))
                try:
                    for out in outs:
                        yield from self._take(e, out)
                except Inflated as exc:
                    raise RemoteProtocolError(
                        f"{self.m.transfer_id} {e.sop_instance_uid}: decodes to more than "
                        f"its {e.size} bytes"
                    ) from exc
                except zstandard.ZstdError as exc:
                    raise RemoteProtocolError(
                        f"{self.m.transfer_id} {e.sop_instance_uid}: does not decode: {exc}"
                    ) from exc
            if self._left:
                return  # the rest of this instance is in the next chunk
            got = self._sha.hexdigest()
            if self._size != e.size or got != e.sha256:
                raise RemoteProtocolError(
                    f"{self.m.transfer_id} {e.sop_instance_uid}: sha256 mismatch (expected "
                    f"{e.sha256[:12]}, got {got[:12]}, {self._size}/{e.size} bytes)"
                )
            yield InstanceVerified(e)
            self._i += 1
            self._start_instance()

    def _take(self, e: InstanceEntry, out: bytes) -> Iterator[InstanceBytes]:
        self._size += len(out)
        if self._size > e.size:
            raise RemoteProtocolError(
                f"{self.m.transfer_id} {e.sop_instance_uid}: decodes to more than "
                f"its {e.size} bytes"
            )
        self._sha.update(out)
        if out:
            yield InstanceBytes(e.sop_instance_uid, out)

    @property
    def current_entry(self) -> InstanceEntry | None:
        """The instance being decoded (the one to blame when decoding fails)."""
        return self.m.instances[self._i] if self._i < len(self.m.instances) else None

    @property
    def done(self) -> bool:
        return self._i >= len(self.m.instances)


def pack_bytes(
    instances: list[tuple[str, bytes]], chunk_size: int = 256 * 1024, **kw: Any
) -> tuple[Manifest, list[bytes]]:
    """Convenience for tests and small transfers: everything in memory."""
    p = Packer(chunk_size=chunk_size, **kw)
    chunks: list[bytes] = []
    for uid, data in instances:
        p.begin_instance(uid)
        p.feed(data)
        p.end_instance()
        chunks += p.chunks()
    manifest, last = p.finish()
    return manifest, chunks + last
