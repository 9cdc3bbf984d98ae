"""A STAT study's lossy preview, packed before its lossless transfer (``sync.preview``).

The preview is a transfer of its own (kind ``preview``): each image the clinic's ratio
table names, as JPEG 2000 at that ratio (common/preview.py), packed like any other
transfer. What completes each preview to its original file (every frame) is left in the
outbox (``Outbox.rests_dir``) for the lossless transfer to send instead of the image.

A preview may fail or be skipped without loss: anything that goes wrong here is logged,
and the images it did not cover go whole in the lossless transfer.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import preview
from common.ratios import parse_ratios
from edge.outbox import Outbox, Packed
from edge.sneakernet import Source, pack, rest_name, rests_in
from wire.manifest import Priority

log = logging.getLogger("radsetu.sync")

MAX_FILE_BYTES = 64 * 1024 * 1024  # read whole to be coded: a bigger one goes lossless only
FIRST_BATCH_BYTES = 256 * 1024  # the first preview transfer: a few images, soon readable
BATCH_BYTES = 2 * 1024 * 1024  # the next ones


LULL_SECONDS = 3.0  # a receiving study this long without an image: its batch goes


def wanted(outbox: Outbox, study_uid: str) -> bool:
    """A preview is due for a study whose priority the setting names (``stat``: STAT
    studies; ``all``: every study; ``off``: none), never packed lossless before, while
    it has an instance no preview has tried yet."""
    mode = outbox.cfg.get("preview", "off")
    if mode == "off" or outbox.earlier_transfer(study_uid) is not None:
        return False
    study = outbox.study_row(study_uid)
    if study is None or (mode != "all" and study[0] != Priority.STAT.value):
        return False
    return bool(untried(outbox, study_uid))


def receiving(outbox: Outbox) -> dict[str, bool]:
    """STAT studies still receiving images whose preview is due, each with whether it
    has had no image for LULL_SECONDS: their previews are coded and sent as the images
    arrive (``Stream``), before the study is quiet."""
    if outbox.cfg.get("preview", "off") == "off":
        return {}
    rows = outbox.db.execute(
        "SELECT study_uid, last_received_ts <= ? FROM studies "
        "WHERE state='receiving' AND priority=? ORDER BY first_received",
        [time.time() - LULL_SECONDS, Priority.STAT.value],
    ).fetchall()
    return {uid: bool(lull) for uid, lull in rows if wanted(outbox, uid)}


def untried(outbox: Outbox, study_uid: str) -> list[tuple[int, str, str, str]]:
    """The study's instances still to be sent that no preview has tried. An instance
    that came in two versions is left to the lossless transfer: the hub holds one
    preview for each SOP Instance UID."""
    tried = {
        iid
        for (iid,) in outbox.db.execute(
            "SELECT p.instance_id FROM previewed p JOIN instances i ON i.id = p.instance_id "
            "WHERE i.study_uid=?",
            [study_uid],
        )
    }
    twice = {
        sop
        for (sop,) in outbox.db.execute(
            "SELECT sop_instance_uid FROM instances WHERE study_uid=? "
            "GROUP BY sop_instance_uid HAVING count(*) > 1",
            [study_uid],
        )
    }
    return [r for r in outbox.unsent(study_uid) if r[0] not in tried and r[1] not in twice]


def _tried(outbox: Outbox, ids: list[int]) -> None:
    with outbox.store.write_lock, outbox.db.atomic():
        outbox.db.conn.executemany(
            "INSERT OR IGNORE INTO previewed(instance_id) VALUES (?)", [(i,) for i in ids]
        )


def pack_preview(outbox: Outbox, study_uid: str, packed: Callable[[Packed], None]) -> int:
    """Pack the preview of every instance of the study no preview has tried, in
    batches (``Stream``). Returns how many transfers were made."""
    stream = Stream(outbox, study_uid, packed)
    stream.finish()
    return stream.made


class Stream:
    """A study's preview in batches, each its own transfer handed to ``packed`` as soon
    as it is written: the first (about FIRST_BATCH_BYTES) can cross the link while the
    rest is still being coded, and a STAT study's images are coded as they arrive.

    ``feed`` codes the instances not tried yet and packs each full batch; with
    ``flush`` it packs what is left as well. An instance is marked tried once its
    preview is packed (or it has none), so it is coded once: a box stopped in between
    codes it again. Anything that goes wrong is logged and ends the stream: the images
    it did not cover go whole in the lossless transfer."""

    def __init__(self, outbox: Outbox, study_uid: str, packed: Callable[[Packed], None]):
        self.outbox, self.study_uid, self.packed = outbox, study_uid, packed
        self.table = parse_ratios(outbox.cfg.get("preview_ratios", []))
        self.work = outbox.folder / f"{uuid.uuid4().hex}.preview"
        self.batch: list[tuple[Source, float]] = []
        self.size = 0  # bytes of the previews in the batch
        self.made = 0
        self.stopped = False

    def feed(self, flush: bool = False) -> bool:
        """Code and pack what has arrived; True if there was anything to do."""
        if self.stopped:
            return False
        try:
            return self._feed(flush)
        except Exception:  # a preview never stops its study: the lossless transfer follows
            log.exception("study %s: preview stopped; the lossless transfer follows",
                          self.study_uid)  # fmt: skip
            self.stopped = True
            return False

    def finish(self) -> None:
        """The study is quiet: the last batch goes, and the coding folder."""
        self.feed(flush=True)
        self.stopped = True
        shutil.rmtree(self.work, ignore_errors=True)
        if not self.made:
            log.info("study %s: no instance has a preview; it goes lossless only",
                     self.study_uid)  # fmt: skip

    def _feed(self, flush: bool) -> bool:
        study = self.outbox.study_row(self.study_uid)
        waiting = {s.key for s, _ in self.batch}
        rows = [r for r in untried(self.outbox, self.study_uid) if r[0] not in waiting]
        if study is None or not (rows or (flush and self.batch)):
            return False
        self.work.mkdir(exist_ok=True)
        self.outbox.rests_dir(self.study_uid).mkdir(exist_ok=True)
        for row in rows:
            one = _preview(self.outbox, self.study_uid, row, self.table, self.work)
            if one is None:
                _tried(self.outbox, [row[0]])
                continue
            self.batch.append(one)
            self.size += one[0].path.stat().st_size
            if self.size >= (BATCH_BYTES if self.made else FIRST_BATCH_BYTES):
                self._send(study)
        if flush and self.batch:
            self._send(study)
        return True

    def _send(self, study: Any) -> None:
        of = len(self.outbox.unsent(self.study_uid))
        self.packed(_pack(self.outbox, self.study_uid, study, self.batch, of))
        self.made += 1
        _tried(self.outbox, [s.key for s, _ in self.batch if s.key is not None])
        rests, made = self.outbox.rests_dir(self.study_uid), rests_in(self.work)
        for s, _ in self.batch:  # its previews are on their way: their rests may go
            s.path.unlink(missing_ok=True)
            if s.key in made:
                made[s.key].replace(rests / made[s.key].name)
        self.batch, self.size = [], 0


def _pack(
    outbox: Outbox, study_uid: str, study: Any, batch: list[tuple[Source, float]], of: int
) -> Packed:
    tid = uuid.uuid4().hex
    out = outbox.folder / f"{tid}.pack"
    extra = outbox.extra(study_uid, study)
    extra["preview"] = {
        "method": preview.METHOD,
        "ratio": round(max(r for _, r in batch), 2),  # the most any instance was compressed
        "of": of,
    }
    try:
        result = pack(
            [s for s, _ in batch],
            out,
            outbox.box_id,
            outbox.cfg["chunk_bytes"],
            outbox.cfg["level"],
            Priority(study[0]),
            pixel_effort=None,  # JPEG 2000 gains nothing from a second coder
            transfer_id=tid,
            extra=extra,
        )
        seq = outbox.record(result, out, [], kind="preview")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    log.info(
        "study %s: preview of %d instances packed as transfer %s (%d bytes)",
        study_uid,
        len(batch),
        tid,
        result.manifest.stream_size,
    )
    return Packed(tid, study_uid, seq, result.manifest.priority)


def _preview(
    outbox: Outbox,
    study_uid: str,
    row: tuple[int, str, str, str],
    table: dict[str, float],
    work: Path,
) -> tuple[Source, float] | None:
    """One instance's preview, written under ``work`` with the record that completes
    it (if any), and its ratio; None without one."""
    iid, sop, rel, sha = row
    path = outbox.store.root / rel
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            log.warning("instance %s: no preview: its file no longer matches its SHA-256", sop)
            return None  # the lossless transfer holds it and says why
        made = preview.make(data, table, outbox.cfg["level"])
    except preview.NoPreview as exc:
        log.debug("instance %s: no preview: %s", sop, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - a preview never stops a study
        log.warning("instance %s: no preview: %s: %s", sop, type(exc).__name__, exc)
        return None
    target = work / f"{iid}.dcm"  # by its row: two versions of one instance may come
    target.write_bytes(made.data)
    if made.rest is not None:  # not fsynced: its name says whether it is whole
        (work / rest_name(iid, made.rest)).write_bytes(made.rest)
    source = Source(sop, study_uid, target, hashlib.sha256(made.data).hexdigest(), key=iid)
    return source, made.ratio
