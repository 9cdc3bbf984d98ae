"""The box's durable store: content files named by their SHA-256, and an SQLite index.

Write order for every instance (docs/architecture.md): the bytes go to a temp
file in ``tmp/``, which is fsynced, renamed into ``objects/``, the folder fsynced, and
only then is the index row committed. The caller acknowledges the sender after
``keep`` returns. A crash at any point leaves either a temp file (removed at the next
start) or a whole, correctly named file (indexed at the next start if its row was
never committed).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import sqlite_utils

from common.clock import utcnow
from common.db import open_db
from common.dicomfile import InstanceInfo
from common.durable import fsync_dir
from edge import holds, orders, repair, studies
from edge.repair import CheckReport
from edge.schema import migrations
from edge.tempfiles import TempFile

log = logging.getLogger("radsetu.store")


@dataclass(frozen=True)
class StatRules:
    """What makes a study STAT without a person: ``[stat]`` in the config."""

    modalities: tuple[str, ...] = ()
    description_words: tuple[str, ...] = ()

    def match(self, info: InstanceInfo) -> str | None:
        """Why this instance makes its study STAT, or None."""
        if info.modality and info.modality.upper() in {m.upper() for m in self.modalities}:
            return f"modality {info.modality}"
        text = f"{info.study_description} {info.series_description}".lower()
        for word in self.description_words:
            if word.lower() in text:
                return f"description holds {word!r}"
        return None


class Outcome(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing changed
    NEW_VERSION = "new_version"  # same SOP Instance UID, other bytes: kept and flagged


class StoreFull(Exception):
    """Keeping this instance would take the disk below its reserve."""


_DISK_FULL_CODES = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR}


class Store:
    """One box's store under ``data_dir``. Thread-safe: writers take one lock."""

    def __init__(
        self,
        data_dir: Path,
        reserve_bytes: int = 0,
        quiet_seconds: float = 60,
        stat_rules: StatRules | None = None,
    ):
        self.root = Path(data_dir)
        self.reserve_bytes = reserve_bytes
        self.quiet_seconds = quiet_seconds
        self.stat_rules = stat_rules or StatRules()
        self.tmp = self.root / "tmp"
        self.objects = self.root / "objects"
        self.quarantine = self.root / "quarantine"
        self.db_path = self.root / "index.db"
        self.write_lock = threading.Lock()  # every writer of the index takes it
        for folder in (self.root, self.tmp, self.objects, self.quarantine):
            folder.mkdir(parents=True, exist_ok=True)
        created = False
        for i in range(256):
            sub = self.objects / f"{i:02x}"
            if not sub.exists():
                sub.mkdir()
                created = True
        if created:
            fsync_dir(self.objects)
            fsync_dir(self.root)
        self.db = open_db(self.db_path)
        migrations.apply(self.db)

    def close(self) -> None:
        self.db.conn.close()

    # -- intake -----------------------------------------------------------------

    def temp(self, dataset_offset: int | None = None) -> TempFile:
        return TempFile(self.tmp / f"{uuid.uuid4().hex}.part", dataset_offset)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def ensure_room(self, nbytes: int) -> None:
        """Raise StoreFull if writing ``nbytes`` more would go below the reserve, after
        purging studies the hub has verified (oldest first) to make room."""
        free = self.free_bytes()
        if free - nbytes < self.reserve_bytes:
            self.purge_for_space(self.reserve_bytes + nbytes - free)
            free = self.free_bytes()
        if free - nbytes < self.reserve_bytes:
            raise StoreFull(
                f"Disk almost full: {free / 1e6:.1f} MB free, {self.reserve_bytes / 1e6:.1f} MB "
                f"reserve, instance needs {nbytes / 1e6:.1f} MB. Free space on the box "
                "(sent studies can be deleted) or add storage."
            )

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / f"{sha256}.dcm"

    def keep(self, temp: TempFile, info: InstanceInfo, source: str, stat: bool = False) -> Outcome:
        """Make a closed (fsynced) temp file part of the store and commit its row.

        Idempotent: the same dataset again is a DUPLICATE and changes nothing. Returns
        only once the file and its row are durable; raises StoreFull (after removing
        the temp file) when the index cannot be written for lack of space.
        """
        if not stat:
            reason = self.stat_rules.match(info)
            stat = reason is not None
        with self.write_lock:
            dup = self.db.execute(
                "SELECT id FROM instances WHERE sop_instance_uid=? AND transfer_syntax=? "
                "AND dataset_sha256=?",
                [info.sop_instance_uid, info.transfer_syntax, temp.dataset_sha256],
            ).fetchone()
            if dup:
                self._restore_held(dup[0], temp)
                temp.discard()
                return Outcome.DUPLICATE
            final = self.object_path(temp.sha256)
            os.replace(temp.path, final)
            fsync_dir(final.parent)
            try:
                outcome = self.index_kept(
                    info, temp.sha256, temp.dataset_sha256, temp.size, final, source, stat
                )
            except sqlite3.OperationalError as exc:
                # a full disk shows as SQLITE_FULL, or as an I/O error when the journal
                # cannot grow (primary result code in the low byte of the extended one)
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _DISK_FULL_CODES:
                    self._unlink_unindexed(final, temp.sha256)
                    raise StoreFull(f"Disk full while writing the index: {exc}") from exc
                raise
            return outcome

    def _restore_held(self, instance_id: int, temp: TempFile) -> None:
        """The same instance again while the kept copy could not be packed (gone or
        damaged): the new bytes replace the file if they are the very bytes that were
        kept, and the packer tries it at once. Called with the lock held."""
        row = self.db.execute(
            "SELECT i.sha256, i.path FROM held h JOIN instances i ON i.id = h.instance_id "
            "WHERE h.instance_id=?",
            [instance_id],
        ).fetchone()
        if row is None or row[0] != temp.sha256:
            return
        final = self.root / row[1]
        final.parent.mkdir(parents=True, exist_ok=True)
        os.link(temp.path, final.with_suffix(".restored"))
        os.replace(final.with_suffix(".restored"), final)
        fsync_dir(final.parent)
        with self.db.atomic():
            holds.due_now(self.db, instance_id)
            self.log_repair("restored", f"{row[1]}: the instance was sent again; file restored")

    def _unlink_unindexed(self, final: Path, sha256: str) -> None:
        # another row may share the file (same bytes, other identity is impossible,
        # but be careful): remove it only when nothing refers to it
        if not self.db.execute("SELECT 1 FROM instances WHERE sha256=?", [sha256]).fetchone():
            final.unlink(missing_ok=True)

    def index_kept(
        self,
        info: InstanceInfo,
        sha256: str,
        dataset_sha256: str,
        size: int,
        final: Path,
        source: str,
        stat: bool,
    ) -> Outcome:
        """Commit the row of a file already in ``objects/`` (and its patient, study and
        series rows): the last step of keeping an instance. The caller holds the write
        lock."""
        now = utcnow()
        with self.db.atomic():
            prior = self.db.execute(
                "SELECT count(*) FROM instances WHERE sop_instance_uid=?",
                [info.sop_instance_uid],
            ).fetchone()[0]
            studies.upsert(self.db, info, stat, now)
            order = orders.for_instance(self.db, info.study_uid, info.accession_number)
            if order is not None and orders.link(self.db, order["accession"], info.study_uid):
                studies.apply_order(self.db, info.study_uid, order)
                log.info("study %s: the order %s", info.study_uid, order["accession"])
            flagged = None
            if prior:
                flagged = (
                    f"SOP Instance UID {info.sop_instance_uid} arrived again with different "
                    f"bytes; kept as version {prior + 1}"
                )
                log.warning("study %s: %s", info.study_uid, flagged)
            self.db.execute(
                """INSERT INTO instances(sop_instance_uid, version, flagged, series_uid,
                       study_uid, sop_class_uid, transfer_syntax, instance_number, sha256,
                       dataset_sha256, size, path, source, received_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                [
                    info.sop_instance_uid,
                    prior + 1,
                    flagged,
                    info.series_uid,
                    info.study_uid,
                    info.sop_class_uid,
                    info.transfer_syntax,
                    info.instance_number,
                    sha256,
                    dataset_sha256,
                    size,
                    str(final.relative_to(self.root)),
                    source,
                    now,
                ],
            )
        return Outcome.NEW_VERSION if prior else Outcome.STORED

    # -- readiness ----------------------------------------------------------------

    def mark_ready(self, now_ts: float | None = None) -> list[str]:
        """Studies quiet for ``quiet_seconds`` become ready to send; returns their UIDs."""
        now_ts = time.time() if now_ts is None else now_ts
        with self.write_lock, self.db.atomic():
            rows = self.db.execute(
                "SELECT study_uid FROM studies WHERE state='receiving' AND last_received_ts <= ?",
                [now_ts - self.quiet_seconds],
            ).fetchall()
            uids = [r[0] for r in rows]
            if uids:
                studies.mark_ready(self.db, now_ts - self.quiet_seconds)
        for uid in uids:
            log.info("study %s: quiet for %ss, ready to send", uid, self.quiet_seconds)
        return uids

    # -- retention ----------------------------------------------------------------

    def purge_for_space(self, need_bytes: int) -> int:
        """Delete delivered studies, oldest delivery first, until ``need_bytes`` are
        freed or none is left. Never touches a study the hub has not verified."""
        freed = 0
        for (uid,) in self.db.execute(
            "SELECT study_uid FROM studies WHERE state='delivered' ORDER BY delivered_at"
        ).fetchall():
            if freed >= need_bytes:
                break
            freed += self.purge_study(uid, "disk below its reserve")
        if freed < need_bytes:
            log.warning(
                "disk below its reserve: freed %d bytes of %d; nothing more is delivered, "
                "so new scans are refused until studies reach the hub",
                freed,
                need_bytes,
            )
        return freed

    def purge_expired(self, retention_days: float, now: datetime | None = None) -> int:
        """Delete studies delivered more than ``retention_days`` ago; 0 keeps them."""
        if retention_days <= 0:
            return 0
        now = now or datetime.now(UTC)
        cutoff = (now - timedelta(days=retention_days)).isoformat(timespec="milliseconds")
        cutoff = cutoff.replace("+00:00", "Z")
        freed = 0
        for (uid,) in self.db.execute(
            "SELECT study_uid FROM studies WHERE state='delivered' AND delivered_at < ? "
            "ORDER BY delivered_at",
            [cutoff],
        ).fetchall():
            freed += self.purge_study(uid, f"delivered more than {retention_days:g} days ago")
        return freed

    def purge_study(self, study_uid: str, reason: str) -> int:
        """Delete a delivered study's files and rows, keep the study row as ``purged``
        and record why. Returns the bytes freed (0 if it was not deliverd)."""
        with self.write_lock:
            with self.db.atomic():
                # in the transaction: a study another process sends again
                # (``radsetu edge resend``) is no longer delivered, and stays
                if not studies.move(self.db, study_uid, "purged", ("delivered",)):
                    return 0
                files = self.db.execute(
                    "SELECT id, sha256, path, size FROM instances WHERE study_uid=?", [study_uid]
                ).fetchall()
                # what the transfers carried of it is forgotten by the outbox (clean)
                self.db.execute("DELETE FROM instances WHERE study_uid=?", [study_uid])
                self.db.execute(
                    "INSERT INTO purges(at, study_uid, reason, instances, bytes) "
                    "VALUES (?,?,?,?,?)",
                    [utcnow(), study_uid, reason, len(files), sum(f[3] for f in files)],
                )
            freed = 0
            for _iid, sha, rel, size in files:
                # the rows are gone first: a crash here leaves files without rows,
                # which the start-up check indexes again (nothing is lost)
                if not self.db.execute("SELECT 1 FROM instances WHERE sha256=?", [sha]).fetchone():
                    (self.root / rel).unlink(missing_ok=True)
                    freed += size
        log.info(
            "study %s purged (%s): %d instances, %d bytes", study_uid, reason, len(files), freed
        )
        return freed

    # -- self-check ---------------------------------------------------------------

    def check(self, index_file: Any) -> CheckReport:
        """Repair the store after a crash (``edge.repair``); ``index_file(path)`` parses
        one file into its InstanceInfo and dataset offset."""
        return repair.check(self, index_file)

    def drop_instance_row(self, instance_id: int) -> None:
        """Forget an instance whose file is gone (the self-check); the caller holds the
        write lock and logs the repair."""
        self.db.execute("DELETE FROM instances WHERE id=?", [instance_id])

    def log_repair(self, kind: str, detail: str) -> None:
        log.warning("store repair (%s): %s", kind, detail)
        self.db.execute(
            "INSERT INTO repairs(at, kind, detail) VALUES (?,?,?)", [utcnow(), kind, detail]
        )


@contextmanager
def reader(data_dir: Path) -> Iterator[sqlite_utils.Database]:
    """A short-lived read connection (one per web request)."""
    db = open_db(Path(data_dir) / "index.db")
    try:
        yield db
    finally:
        db.conn.close()
