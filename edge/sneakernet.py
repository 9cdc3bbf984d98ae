"""`radsetu pack` and `radsetu unpack`: a study as one file on a USB stick, and back.

Packing reads instances from a folder or from the box's store; unpacking verifies every
chunk hash and every instance's SHA-256 before a file is written (each one written to
a temp name, fsynced, then renamed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from common.dicomfile import MAX_META_BYTES, InvalidInstance, read_meta, verify
from common.durable import fsync_dir
from edge.store import reader
from wire import pixels
from wire.adaptive import Profile, choose, delivery_seconds
from wire.codec import (
    Fallback,
    ImageCoder,
    InstanceBytes,
    InstanceVerified,
    Packer,
    Unpacker,
    default_image_coder,
)
from wire.errors import RemoteProtocolError
from wire.manifest import Manifest, Priority
from wire.packfile import MAGIC, header, header_length, read_manifest

BLOCK = 1 << 20

log = logging.getLogger("radsetu.sync")


class PackError(Exception):
    """Something a person must fix (wrong path, mixed studies...); the message says what."""


@dataclass(frozen=True)
class Source:
    sop_instance_uid: str
    study_uid: str
    path: Path
    sha256: str | None = None  # what the file must hash to (the store knows it)
    key: int | None = None  # the caller's own id for it (the box's instance row)
    rest: Path | None = None  # a dicom-j2k-rest record to send instead (its preview went)


@dataclass(frozen=True)
class Held:
    """An instance left out of a pack because its file cannot be read as it was kept."""

    source: Source
    reason: str


@dataclass(frozen=True)
class PackResult:
    manifest: Manifest
    held: list[Held] = field(default_factory=list)  # left out, each with the reason

    @property
    def fallbacks(self) -> list[Fallback]:
        """Instances the pixel coder could not take (they went as zstd or raw)."""
        reasons = self.manifest.extra.get("coder_fallback_reasons") or {}
        return [Fallback(uid, why) for uid, why in reasons.items()]


class NothingToPack(PackError):
    """Every instance was left out; ``held`` says why for each."""

    def __init__(self, message: str, held: list[Held]):
        super().__init__(message)
        self.held = held


class _Unreadable(Exception):
    def __init__(self, source: Source, reason: str):
        super().__init__(reason)
        self.source, self.reason = source, reason


class BoundedCoder:
    """The pixel coder with a time limit per instance. A coder that overruns is left
    to finish on its own (its thread is a daemon) and is not used again by this
    coder: the rest of the transfer goes as zstd."""

    def __init__(self, seconds: float, coder: ImageCoder = default_image_coder):
        self.seconds = seconds
        self.coder = coder
        self.timed_out = False

    def __call__(self, data: bytes, effort: int, level: int) -> bytes | None:
        if self.timed_out:
            raise TimeoutError("off for the rest of this transfer after a time-out")
        result: list[bytes | None] = []
        error: list[BaseException] = []

        def run() -> None:
            try:
                result.append(self.coder(data, effort, level))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                error.append(exc)

        worker = threading.Thread(target=run, name="pixel-coder", daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(self.seconds)
        # the time taken decides, not whether the thread happened to be scheduled
        # before join gave up: a coding that finished late is still an overrun
        if worker.is_alive() or time.monotonic() - started > self.seconds:
            self.timed_out = True
            raise TimeoutError(f"took longer than {self.seconds:g} s")
        if error:
            raise error[0]
        return result[0]


def sources_from_folder(folder: Path) -> tuple[list[Source], list[tuple[str, str]]]:
    """Instances in a folder (or one file), and the files skipped with the reason."""
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    found, skipped = [], []
    for p in files:
        try:
            with open(p, "rb") as f:
                meta = read_meta(f.read(MAX_META_BYTES))
            info = verify(p, meta, max_bytes=1 << 62)
        except (InvalidInstance, OSError) as exc:
            skipped.append((str(p), getattr(exc, "reason", str(exc))))
            continue
        found.append(Source(info.sop_instance_uid, info.study_uid, p))
    return found, skipped


def sources_from_store(data_dir: Path, study_uid: str) -> list[Source]:

    with reader(data_dir) as db:
        rows = db.execute(
            "SELECT sop_instance_uid, path FROM instances WHERE study_uid=? ORDER BY id",
            [study_uid],
        ).fetchall()
    return [Source(uid, study_uid, data_dir / rel) for uid, rel in rows]


def pack(
    sources: Iterable[Source],
    out: Path,
    box_id: str,
    chunk_size: int,
    level: int,
    priority: Priority = Priority.ROUTINE,
    pixel_effort: int | None = 3,
    follow_up_of: str | None = None,
    transfer_id: str | None = None,
    extra: dict[str, Any] | None = None,
    coder_seconds: float = 120.0,
) -> PackResult:
    """Write one pack file; the chunks go to a temp file first, since the manifest
    (with every chunk's hash) is known only at the end.

    One instance never stops its study: a file that is gone, cannot be read, or no
    longer hashes to its ``sha256`` is left out (``PackResult.held`` says which and
    why) and the rest is packed; a pixel coder that fails on an instance leaves it to
    zstd. Raises PackError for what a person must fix, NothingToPack when every
    instance was left out."""
    sources = list(sources)
    studies = {s.study_uid for s in sources}
    if not sources:
        raise PackError("nothing to pack: no DICOM instance found")
    if len(studies) > 1:
        raise PackError(
            f"{len(studies)} studies found ({', '.join(sorted(studies)[:3])}...): "
            "pack one study at a time"
        )
    transfer_id = transfer_id or uuid.uuid4().hex
    coder = BoundedCoder(coder_seconds)
    held: list[Held] = []
    while sources:
        packer = Packer(
            box_id=box_id,
            study_uid=sources[0].study_uid,
            transfer_id=transfer_id,
            priority=priority,
            chunk_size=chunk_size,
            level=level,
            pixel_effort=pixel_effort,
            follow_up_of=follow_up_of,
            extra=extra,
            image_coder=coder,
        )
        try:
            manifest = _write(packer, sources, out)
        except _Unreadable as exc:
            # rare (a damaged card, a file removed by hand): start again without it
            held.append(Held(exc.source, exc.reason))
            sources = [s for s in sources if s is not exc.source]
            continue
        return PackResult(manifest, held)
    raise NothingToPack(
        f"nothing to pack: none of the {len(held)} instances can be read ({held[0].reason})",
        held,
    )


def _write(packer: Packer, sources: list[Source], out: Path) -> Manifest:
    body = out.with_name(out.name + ".chunks.part")
    try:
        with open(body, "wb") as chunks_out:
            for s in sources:
                if _add_rest(packer, s):
                    for c in packer.chunks():
                        chunks_out.write(c)
                    continue
                try:
                    size = s.path.stat().st_size
                    f = open(s.path, "rb")  # noqa: SIM115 - closed below
                except FileNotFoundError as exc:
                    raise _Unreadable(s, f"file {s.path.name} is missing") from exc
                except OSError as exc:
                    raise _Unreadable(s, f"file {s.path.name} cannot be opened: {exc}") from exc
                with f:
                    packer.begin_instance(s.sop_instance_uid, size=size)
                    while True:
                        try:
                            block = f.read(BLOCK)
                        except OSError as exc:
                            raise _Unreadable(
                                s, f"file {s.path.name} cannot be read: {exc}"
                            ) from exc
                        if not block:
                            break
                        packer.feed(block)
                        for c in packer.chunks():
                            chunks_out.write(c)
                entry = packer.end_instance()
                if s.sha256 is not None and entry.sha256 != s.sha256:
                    raise _Unreadable(
                        s,
                        f"file {s.path.name} is damaged: its SHA-256 is {entry.sha256[:12]}, "
                        f"it was {s.sha256[:12]} when kept",
                    )
            manifest, last = packer.finish()
            for c in last:
                chunks_out.write(c)
        tmp = out.with_name(out.name + ".part")
        with open(tmp, "wb") as f, open(body, "rb") as chunks_in:
            f.write(header(manifest))
            while block := chunks_in.read(BLOCK):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        body.unlink(missing_ok=True)
    return manifest


def rest_name(key: int, record: bytes) -> str:
    """The name a ``dicom-j2k-rest`` record is kept under: the instance's row and the
    record's own hash, so that one cut short by a power failure is known."""
    return f"{key}.{hashlib.sha256(record).hexdigest()[:16]}.rest"


def rests_in(folder: Path) -> dict[int, Path]:
    """The records kept in ``folder`` under ``rest_name``, by their instance's row, from
    one listing of it (none when it is not there)."""
    try:
        names = list(folder.iterdir())
    except FileNotFoundError:
        return {}
    out = {}
    for p in names:
        key, _, tail = p.name.partition(".")
        if key.isdigit() and tail.endswith(".rest"):
            out[int(key)] = p
    return out


def _add_rest(packer: Packer, s: Source) -> bool:
    """Send the instance as the record that completes its preview; False (the file
    goes whole) when it has none, the record or the file is gone, or the record is
    not what was written (its name says)."""
    if s.rest is None or s.sha256 is None or s.key is None:
        return False
    try:
        size = s.path.stat().st_size
        record = s.rest.read_bytes()
    except OSError:
        return False
    if rest_name(s.key, record) != s.rest.name:
        log.warning("instance %s goes whole: its preview's rest is damaged", s.sop_instance_uid)
        return False
    packer.add_record(s.sop_instance_uid, "dicom-j2k-rest", record, size, s.sha256)
    return True


def unpack(pack_file: Path, out_dir: Path) -> tuple[Manifest, list[Path]]:
    """Verify and unpack; raises RemoteProtocolError naming the chunk or instance that
    does not match. Nothing unverified is left in ``out_dir``, and no file is
    overwritten by other bytes: a second version of an instance (same SOP Instance
    UID, other bytes) is written as ``UID.<sha256 prefix>.dcm`` beside ``UID.dcm``.
    Returns the files written, one per instance."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with open(pack_file, "rb") as f:
        prefix = f.read(len(MAGIC) + 4)
        manifest = read_manifest(prefix + f.read(header_length(prefix) - len(prefix)))
        unpacker = Unpacker(manifest)
        current = None
        for i in range(manifest.chunk_count):
            data = f.read(manifest.chunk_length(i))
            got = hashlib.sha256(data).hexdigest()
            if got != manifest.chunk_sha256[i]:
                raise RemoteProtocolError(
                    f"{manifest.study_uid} chunk {i}: sha256 mismatch (expected "
                    f"{manifest.chunk_sha256[i][:12]}, got {got[:12]}): the file is damaged"
                )
            try:
                for ev in unpacker.feed_chunk(i, data):
                    if isinstance(ev, InstanceBytes):
                        if current is None:
                            current = open(out_dir / f".{ev.sop_instance_uid}.part", "wb")  # noqa: SIM115
                        current.write(ev.data)
                    elif isinstance(ev, InstanceVerified):
                        uid = ev.entry.sop_instance_uid
                        tmp = out_dir / f".{uid}.part"
                        if current is None:
                            current = open(tmp, "wb")  # noqa: SIM115 - an empty instance
                        current.flush()
                        os.fsync(current.fileno())
                        current.close()
                        current = None
                        final = _free_name(out_dir, uid, ev.entry.sha256, written)
                        os.replace(tmp, final)
                        written.append(final)
            except RemoteProtocolError:
                if current is not None:
                    current.close()
                    Path(current.name).unlink(missing_ok=True)
                raise
        if f.read(1):
            raise RemoteProtocolError(f"{pack_file}: bytes after the last chunk")
    if written:
        fsync_dir(out_dir)
    return manifest, written


def _free_name(out_dir: Path, uid: str, sha256: str, taken: list[Path]) -> Path:
    """``UID.dcm`` unless another version holds that name (written now, or there
    before with other bytes): then ``UID.<first 16 of its SHA-256>.dcm``."""
    plain = out_dir / f"{uid}.dcm"
    if plain not in taken and (not plain.exists() or _file_sha256(plain) == sha256):
        return plain
    return out_dir / f"{uid}.{sha256[:16]}.dcm"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def measure_profiles(sample: bytes, efforts: tuple[int, ...] = (3, 8)) -> list[Profile]:
    """Ratio and encode speed of each candidate coder on one real instance, on this
    machine now: what ``wire.adaptive.choose`` needs."""

    profiles = []
    t = time.perf_counter()
    z = zstandard.ZstdCompressor(level=3).compress(sample)
    dt = max(time.perf_counter() - t, 1e-6)
    profiles.append(Profile("zstd-3", len(sample) / len(z), len(sample) / dt))
    for effort in efforts:
        t = time.perf_counter()
        rec = pixels.encode(sample, effort)
        dt = max(time.perf_counter() - t, 1e-6)
        if rec is not None:
            profiles.append(
                Profile(
                    f"dicom-jxl effort {effort}",
                    len(sample) / len(rec),
                    len(sample) / dt,
                    pixel_effort=effort,
                )
            )
    return profiles


def pick_for_link(sources: list[Source], link_bytes_per_s: float) -> tuple[Profile, str]:
    """Choose the coder for this link from a trial on the study's largest instance;
    returns the pick and a sentence that says why."""
    sample_src = max(sources, key=lambda s: s.path.stat().st_size)
    sample = sample_src.path.read_bytes()
    payload = sum(s.path.stat().st_size for s in sources)
    profiles = measure_profiles(sample)
    best = choose(profiles, payload, link_bytes_per_s, len(sample))
    times = ", ".join(
        f"{p.name} {delivery_seconds(p, payload, link_bytes_per_s, len(sample)):.0f} s "
        f"({p.ratio:.2f}:1 at {p.encode_bytes_per_s / 1e6:.0f} MB/s)"
        for p in profiles
    )
    return best, (
        f"link {link_bytes_per_s * 8 / 1000:.0f} kbit/s: picked {best.name} "
        f"(modelled delivery: {times})"
    )
