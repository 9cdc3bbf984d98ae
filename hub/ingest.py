"""Hub ingest: manifests and chunks in, verified instances out, acks back.

The same functions serve MQTT messages and `radsetu hub import` (a pack file is fed
through them as if it had come over the wire). Each call is idempotent and durable:
a chunk is on disk before it counts as held, and a transfer is verified only once
every instance's SHA-256 matched and the instance is stored.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from common.preview import held_of
from hub import reading
from hub.store import HubStore, InstanceFile
from hub.studykeys import study_key
from wire import layered
from wire.codec import InstanceBytes, InstanceVerified, Unpacker
from wire.errors import PreviewMissing, RemoteProtocolError
from wire.manifest import Manifest
from wire.packfile import MAGIC, header_length
from wire.transfer import ChunkAccepted, ChunkRejected, Reception, State, TransferComplete

log = logging.getLogger("radsetu.hub.ingest")
_lock = threading.Lock()  # one writer per process; across processes, store.transaction


# a manifest never changes: parse and validate each one once per process (keyed by its
# text, so two stores that reuse a transfer id can never be confused)
_manifests: dict[str, Manifest] = {}
_MANIFEST_CACHE = 256


def _load(store: HubStore, transfer_id: str) -> Reception | None:
    found = store.load_transfer(transfer_id)
    if found is None:
        return None
    manifest_json, state_json = found
    manifest = _manifests.get(manifest_json)
    if manifest is None:
        if len(_manifests) >= _MANIFEST_CACHE:
            _manifests.clear()
        manifest = _manifests[manifest_json] = Manifest.from_json(manifest_json)
    return Reception.from_state(manifest, state_json)


def _save(store: HubStore, r: Reception, source: str, **counts: int) -> None:
    m = r.manifest
    store.save_transfer(
        m.transfer_id,
        m.to_json().decode(),
        r.state_json(),
        {
            "box_id": m.box_id,
            "study_uid": m.study_uid,
            "priority": m.priority.value,
            "state": r.state.value,
            "chunk_count": m.chunk_count,
            "chunks_held": len(r.held),
            "payload_bytes": m.payload_bytes,
            "source": source,
            **counts,
        },
    )


def take_manifest(
    store: HubStore,
    raw: bytes,
    source: str,
    box_id: str | None = None,
    quota_bytes: int | None = None,
) -> dict[str, Any]:
    """Register a transfer (again: no change) and return the ack to send. ``box_id``:
    the box the message came from, which must be the manifest's. ``quota_bytes``: what
    one box's transfers in progress may hold at the hub; a new transfer past it is
    refused for now (RemoteProtocolError): the box announces it again later, once its
    other transfers are verified."""
    manifest = Manifest.from_json(raw)
    if box_id is not None and manifest.box_id != box_id:
        raise RemoteProtocolError(
            f"box {box_id} sent a manifest that names box {manifest.box_id!r}"
        )
    with _lock, store.transaction(manifest.transfer_id):
        known = _load(store, manifest.transfer_id)
        if known is not None:
            if known.state is State.COMPLETE:  # waiting for a preview: is it in now?
                _finish(store, known)
                if known.state is not State.COMPLETE:  # else its stall stays visible
                    _save(store, known, source)
            return known.ack()
        if quota_bytes is not None:
            held = store.bytes_in_progress(manifest.box_id)
            size = max(manifest.payload_bytes, manifest.stream_size)
            if held + size > quota_bytes:
                raise RemoteProtocolError(
                    f"transfer {manifest.transfer_id} ({size} bytes) would "
                    f"take the box's transfers in progress past its quota of {quota_bytes} "
                    f"bytes ({held} held): refused for now"
                )
        r = Reception(manifest)
        _save(store, r, source)
    log.info(
        "box %s: transfer %s of study %s announced (%d chunks, %s)",
        manifest.box_id,
        manifest.transfer_id,
        manifest.study_uid,
        manifest.chunk_count,
        manifest.priority.value,
    )
    return r.ack()


def finished_with(store: HubStore, ack: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """After ``take_chunk``'s ``ack``: when it verified a transfer, the acks of the box's
    transfers of that study that were waiting for a preview and are verified now (the
    preview is in, or the box sent their images whole instead)."""
    if not ack.get("verified") or ack.get("unknown"):
        return []
    r = _load(store, ack["transfer_id"])
    if r is None:
        return []
    return _retry_waiting(store, r.manifest.box_id, r.manifest.study_uid, source)


def _retry_waiting(store: HubStore, box_id: str, study_uid: str, source: str) -> list[Any]:
    acks = []
    for tid in store.waiting_transfers(box_id, study_uid):
        with _lock, store.transaction(tid):
            r = _load(store, tid)
            if r is None or r.state is not State.COMPLETE:
                continue
            _finish(store, r)
            if r.state is not State.COMPLETE:
                _save(store, r, source)
                acks.append(r.ack())
    return acks


def take_chunk(
    store: HubStore,
    transfer_id: str,
    index: int,
    data: bytes | memoryview,
    source: str,
    box_id: str | None = None,
    attempt: int = 0,
) -> dict[str, Any]:
    """Keep one chunk if it matches its manifest; finish the transfer when it is the
    last one. Returns the ack to send (``unknown`` when the manifest has not come).
    ``attempt`` > 0 marks the box's own resend; a held chunk resent so is counted."""
    with _lock, store.transaction(transfer_id):  # load, count and save: one at a time
        r = _load(store, transfer_id)
        if r is None:
            return {"transfer_id": transfer_id, "held": [], "verified": False, "unknown": True}
        if box_id is not None and r.manifest.box_id != box_id:
            raise RemoteProtocolError(
                f"box {box_id} sent a chunk of transfer {transfer_id}, which is box "
                f"{r.manifest.box_id}'s"
            )
        held_before = 0 <= index < r.manifest.chunk_count and index in r.held
        counts = {
            "received": 1,
            "duplicate": int(held_before),
            "resent_held": int(held_before and attempt > 0),
        }
        if held_before and attempt > 0:
            log.warning(
                "box %s resent chunk %d of transfer %s, which the hub holds (attempt %d)",
                r.manifest.box_id,
                index,
                transfer_id,
                attempt,
            )
        if r.state is State.VERIFIED:
            _save(store, r, source, **counts)
            return r.ack()
        data = bytes(data)
        store.count_traffic(r.manifest.box_id, len(data))
        events = r.receive(index, data)  # checks length and hash; raises out of range
        if any(isinstance(ev, ChunkAccepted) for ev in events):
            # durable before the reception that counts it as held is saved
            store.put_chunk(transfer_id, index, data)
        for ev in events:
            if isinstance(ev, ChunkRejected):
                log.warning("box %s: %s", r.manifest.box_id, ev.reason)
        if any(isinstance(ev, TransferComplete) for ev in events):
            _finish(store, r)
        _save(store, r, source, **counts)
        return r.ack()


def _chunks_of(m: Manifest, offset: int, size: int) -> list[int]:
    first = offset // m.chunk_size
    last = max(offset + size - 1, offset) // m.chunk_size
    return list(range(first, min(last, m.chunk_count - 1) + 1))


def _keep_all(store: HubStore, m: Manifest, key: str, unpacker: Unpacker) -> None:
    """Unpack the transfer's chunks and keep each instance as its SHA-256 verifies."""
    current: dict[str, InstanceFile] = {}  # written to disk piece by piece
    lossy = m.preview is not None  # a STAT study's preview: kept until its lossless
    try:
        for i in range(m.chunk_count):
            for ev in unpacker.feed_chunk(i, store.get_chunk(m.transfer_id, i)):
                if isinstance(ev, InstanceBytes):
                    if ev.sop_instance_uid not in current:
                        current[ev.sop_instance_uid] = store.new_instance()
                    current[ev.sop_instance_uid].write(ev.data)
                elif isinstance(ev, InstanceVerified):
                    e = ev.entry
                    part = current.pop(e.sop_instance_uid, None) or store.new_instance()
                    if lossy and store.has_lossless(key, e.sop_instance_uid):
                        part.discard()  # the preview came after its lossless instance
                        continue
                    row = {"sop_instance_uid": e.sop_instance_uid, "sha256": e.sha256,
                           "study_uid": key, "box_id": m.box_id,
                           "transfer_id": m.transfer_id, "lossy": lossy}  # fmt: skip
                    store.keep_instance(row, part)
    finally:
        for part in current.values():  # what a failure left half written
            part.discard()


def _finish(store: HubStore, r: Reception) -> None:
    m = r.manifest
    key = study_key(store, m.box_id, m.study_uid)
    lossy = m.preview is not None
    unpacker = Unpacker(m, previews=lambda sop: _held_preview(store, key, sop))
    try:
        _previews_in(store, m, key)
        _keep_all(store, m, key, unpacker)
    except PreviewMissing as exc:
        if all(store.has_lossless(key, e.sop_instance_uid) for e in m.instances):
            # the box gave up waiting and sent these images whole, in another transfer
            log.info("box %s transfer %s: its images came whole in another transfer; done",
                     m.box_id, m.transfer_id)  # fmt: skip
            r.verified()
            store.drop_chunks(m.transfer_id)
            return
        # its previews are on their way (they go first) or in a transfer not verified
        # yet: it stays complete, and is finished when one of them is verified
        log.warning("box %s transfer %s waits for its preview: %s", m.box_id, m.transfer_id, exc)
        return
    except RemoteProtocolError as exc:
        bad = unpacker.current_entry
        chunks = _chunks_of(m, bad.offset, bad.encoded_size) if bad else []
        log.error(
            "box %s transfer %s: %s; asking again for chunks %s",
            m.box_id,
            m.transfer_id,
            exc,
            chunks,
        )
        r.failed(chunks)
        return
    r.verified()
    store.drop_chunks(m.transfer_id)
    if not lossy and (dropped := store.drop_replaced_previews(key)):
        log.info("study %s: %d preview instances replaced by lossless ones", key, dropped)
    try:
        reading.study_verified(store, m, key)
    except Exception:  # the study is safe; the reading room's summary can be rebuilt
        log.exception("study %s: could not update the reading room's summary", m.study_uid)
    log.info(
        "box %s: study %s verified (%d instances, transfer %s)",
        m.box_id,
        m.study_uid,
        len(m.instances),
        m.transfer_id,
    )


def _previews_in(store: HubStore, m: Manifest, key: str) -> None:
    """PreviewMissing, before anything is decoded, when a record of the transfer completes
    a preview the hub does not hold: a transfer waiting for its previews is looked at
    again each time its manifest comes (every minute while held whole), and would
    decode every rest before the missing one each time."""
    rests = [e.sop_instance_uid for e in m.instances if e.codec == "dicom-j2k-rest"]
    if not rests:
        return
    held = store.previews_held(key)
    missing = [sop for sop in rests if sop not in held]
    if missing:
        raise PreviewMissing(
            f"{len(missing)} of its {len(rests)} previews not held, {missing[0]} the first"
        )


def _held_preview(store: HubStore, key: str, sop_instance_uid: str) -> layered.Held | None:
    data = store.preview_file(key, sop_instance_uid)
    if data is None:
        return None
    try:
        return held_of(data)
    except ValueError as exc:
        log.error("study %s instance %s: the preview held does not read: %s", key,
                  sop_instance_uid, exc)  # fmt: skip
        return None


def import_pack(store: HubStore, pack_file: str) -> dict[str, Any]:
    """Ingest a `radsetu pack` file exactly as if its messages had come over MQTT."""

    source = f"import:{pack_file}"
    with open(pack_file, "rb") as f:
        prefix = f.read(len(MAGIC) + 4)
        head = prefix + f.read(header_length(prefix) - len(prefix))
        manifest = Manifest.from_json(head[len(MAGIC) + 4 :])
        ack = take_manifest(store, head[len(MAGIC) + 4 :], source)
        for i in range(manifest.chunk_count):
            ack = take_chunk(
                store, manifest.transfer_id, i, f.read(manifest.chunk_length(i)), source
            )
    return ack
