"""A STAT study's lossy preview, packed before its lossless transfer (``sync.preview``).

The preview is a transfer of its own (kind ``preview``): each image the clinic's ratio
table names, as JPEG 2000 at that ratio (common/preview.py), packed like any other
transfer. What completes each single-frame preview to its original file is left in the
outbox (``Outbox.rests_dir``) for the lossless transfer to send instead of the image.

A preview may fail or be skipped without loss: anything that goes wrong here is logged,
and the images it did not cover go whole in the lossless transfer.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import preview
from common.ratios import parse_ratios
from edge.outbox import Outbox, Packed
from edge.sneakernet import Source, pack
from wire.manifest import Priority

log = logging.getLogger("radsetu.sync")

MAX_FILE_BYTES = 64 * 1024 * 1024  # read whole to be coded: a bigger one goes lossless only
FIRST_BATCH_BYTES = 256 * 1024  # the first preview transfer: a few images, soon readable
BATCH_BYTES = 2 * 1024 * 1024  # the next ones


def wanted(outbox: Outbox, study_uid: str) -> bool:
    """A preview is due for a study never packed before whose priority the setting
    names (``stat``: STAT studies; ``all``: every study; ``off``: none)."""
    mode = outbox.cfg.get("preview", "off")
    if mode == "off" or outbox.earlier_transfer(study_uid) is not None:
        return False
    if outbox.db.execute(
        "SELECT 1 FROM transfers WHERE study_uid=? AND kind='preview'", [study_uid]
    ).fetchone():
        return False
    study = outbox.study_row(study_uid)
    return study is not None and (mode == "all" or study[0] == Priority.STAT.value)


def pack_preview(outbox: Outbox, study_uid: str, packed: Callable[[Packed], None]) -> int:
    """Pack the study's preview in batches, each its own transfer handed to ``packed``
    as soon as it is written: the first (about FIRST_BATCH_BYTES) can cross the link
    while the rest is still being coded. Returns how many transfers were made."""
    study = outbox.study_row(study_uid)
    rows = outbox.unsent(study_uid)
    if study is None or not rows:
        return 0
    table = parse_ratios(outbox.cfg.get("preview_ratios", []))
    work = outbox.folder / f"{uuid.uuid4().hex}.preview"
    rests = outbox.rests_dir(study_uid)
    made = 0
    try:
        work.mkdir()
        rests.mkdir(exist_ok=True)
        batch: list[tuple[Source, float]] = []
        size = 0  # bytes of the previews in the batch
        for n, row in enumerate(rows):
            one = _preview(outbox, study_uid, row, table, work)
            if one is not None:
                batch.append(one)
                size += one[0].path.stat().st_size
            if batch and (
                size >= (FIRST_BATCH_BYTES if not made else BATCH_BYTES) or n == len(rows) - 1
            ):
                packed(_pack(outbox, study_uid, study, batch, len(rows)))
                made += 1
                for s, _ in batch:  # its previews are on their way: their rests may go
                    s.path.unlink(missing_ok=True)
                    done = s.path.with_suffix(".rest")
                    if done.exists():
                        done.replace(rests / done.name)
                batch, size = [], 0
    except Exception:  # a preview never stops its study: the lossless transfer follows
        log.exception("study %s: preview stopped; the lossless transfer follows", study_uid)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not made:
        log.info("study %s: no instance has a preview; it goes lossless only", study_uid)
    return made


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
    _iid, sop, rel, sha = row
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
    target = work / f"{sop}.dcm"
    target.write_bytes(made.data)
    if made.rest is not None:  # not fsynced: a box stopped before packing sends the image
        target.with_suffix(".rest").write_bytes(made.rest)
    return Source(sop, study_uid, target, hashlib.sha256(made.data).hexdigest()), made.ratio
