"""`radsetu pack` and `radsetu unpack`: a study as one file on a USB stick, and back.

Packing reads instances from a folder or from the box's store; unpacking verifies every
chunk hash and every instance's SHA-256 before a file is written (each one written to
a temp name, fsynced, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge.dicomfile import MAX_META_BYTES, InvalidInstance, read_meta
from edge.intake import verify
from wire.adaptive import Profile, choose, delivery_seconds
from wire.codec import InstanceBytes, InstanceVerified, Packer, Unpacker
from wire.errors import RemoteProtocolError
from wire.manifest import Manifest, Priority
from wire.packfile import MAGIC, header, header_length, read_manifest

BLOCK = 1 << 20


class PackError(Exception):
    """Something a person must fix (wrong path, mixed studies...); the message says what."""


@dataclass(frozen=True)
class Source:
    sop_instance_uid: str
    study_uid: str
    path: Path


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
    from edge.store import reader

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
    extra: dict[str, str] | None = None,
) -> Manifest:
    """Write one pack file; the chunks go to a temp file first, since the manifest
    (with every chunk's hash) is known only at the end."""
    sources = list(sources)
    studies = {s.study_uid for s in sources}
    if not sources:
        raise PackError("nothing to pack: no DICOM instance found")
    if len(studies) > 1:
        raise PackError(
            f"{len(studies)} studies found ({', '.join(sorted(studies)[:3])}...): "
            "pack one study at a time"
        )
    packer = Packer(
        box_id=box_id,
        study_uid=studies.pop(),
        transfer_id=transfer_id or uuid.uuid4().hex,
        priority=priority,
        chunk_size=chunk_size,
        level=level,
        pixel_effort=pixel_effort,
        follow_up_of=follow_up_of,
        extra=extra,
    )
    body = out.with_name(out.name + ".chunks.part")
    try:
        with open(body, "wb") as chunks_out:
            for s in sources:
                packer.begin_instance(s.sop_instance_uid, size=s.path.stat().st_size)
                with open(s.path, "rb") as f:
                    while block := f.read(BLOCK):
                        packer.feed(block)
                        for c in packer.chunks():
                            chunks_out.write(c)
                packer.end_instance()
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


def unpack(pack_file: Path, out_dir: Path) -> tuple[Manifest, list[Path]]:
    """Verify and unpack; raises RemoteProtocolError naming the chunk or instance that
    does not match. Nothing unverified is left in ``out_dir``."""
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
                        final = out_dir / f"{uid}.dcm"
                        os.replace(tmp, final)
                        written.append(final)
            except RemoteProtocolError:
                if current is not None:
                    current.close()
                    Path(current.name).unlink(missing_ok=True)
                raise
        if f.read(1):
            raise RemoteProtocolError(f"{pack_file}: bytes after the last chunk")
    return manifest, written


def measure_profiles(sample: bytes, efforts: tuple[int, ...] = (3, 8)) -> list[Profile]:
    """Ratio and encode speed of each candidate coder on one real instance, on this
    machine now: what ``wire.adaptive.choose`` needs."""
    import time

    import zstandard

    from wire import pixels

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
