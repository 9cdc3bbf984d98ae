"""The box's durable store: content files named by their SHA-256, and an SQLite index.

Write order for every instance (docs/architecture.md): the bytes go to a temp
file in ``tmp/``, which is fsynced, renamed into ``objects/``, the folder fsynced, and
only then is the index row committed. The caller acknowledges the sender after
``keep`` returns. A crash at any point leaves either a temp file (removed at the next
start) or a whole, correctly named file (indexed at the next start if its row was
never committed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

import sqlite_utils
from sqlite_utils import Migrations

from common.clock import utcnow
from common.db import create_audit_table, open_db
from common.dicomfile import InstanceInfo
from common.durable import fsync_dir

log = logging.getLogger("radsetu.store")

migrations = Migrations("radsetu.edge.store")


@migrations()
def m001_index(db: sqlite_utils.Database) -> None:
    db.execute("""
        CREATE TABLE patients (
            key TEXT PRIMARY KEY,
            patient_id TEXT NOT NULL, name TEXT NOT NULL,
            birth_date TEXT NOT NULL, sex TEXT NOT NULL
        )""")
    db.execute("""
        CREATE TABLE studies (
            study_uid TEXT PRIMARY KEY,
            patient_key TEXT NOT NULL REFERENCES patients(key),
            study_date TEXT NOT NULL, study_time TEXT NOT NULL,
            description TEXT NOT NULL, accession_number TEXT NOT NULL,
            state TEXT NOT NULL,            -- receiving | ready
            priority TEXT NOT NULL,         -- routine | stat
            first_received TEXT NOT NULL, last_received TEXT NOT NULL,
            last_received_ts REAL NOT NULL, -- seconds since the epoch, for the quiet check
            ready_at TEXT
        )""")
    db.execute("CREATE INDEX studies_state ON studies(state, last_received_ts)")
    db.execute("""
        CREATE TABLE series (
            series_uid TEXT PRIMARY KEY,
            study_uid TEXT NOT NULL REFERENCES studies(study_uid),
            modality TEXT NOT NULL, series_number INTEGER, description TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX series_study ON series(study_uid)")
    db.execute("""
        CREATE TABLE instances (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- doubles as the arrival sequence
            sop_instance_uid TEXT NOT NULL,
            version INTEGER NOT NULL,
            flagged TEXT,                   -- why a person should look, or NULL
            series_uid TEXT NOT NULL REFERENCES series(series_uid),
            study_uid TEXT NOT NULL REFERENCES studies(study_uid),
            sop_class_uid TEXT NOT NULL, transfer_syntax TEXT NOT NULL,
            instance_number INTEGER,
            sha256 TEXT NOT NULL,           -- of the stored file, which is named after it
            dataset_sha256 TEXT NOT NULL,   -- of the dataset bytes after the meta header
            size INTEGER NOT NULL, path TEXT NOT NULL,
            source TEXT NOT NULL, received_at TEXT NOT NULL
        )""")
    db.execute(
        "CREATE UNIQUE INDEX instances_identity "
        "ON instances(sop_instance_uid, transfer_syntax, dataset_sha256)"
    )
    db.execute("CREATE INDEX instances_study ON instances(study_uid)")
    db.execute("CREATE INDEX instances_sha ON instances(sha256)")
    db.execute("""
        CREATE TABLE repairs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL
        )""")


@migrations()
def m002_sync(db: sqlite_utils.Database) -> None:
    """What the sync agent and retention keep: transfers, what each carries, purges."""
    db.execute("ALTER TABLE studies ADD COLUMN delivered_at TEXT")
    db.execute("ALTER TABLE studies ADD COLUMN priority_reason TEXT")
    db.execute("""
        CREATE TABLE transfers (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order
            transfer_id TEXT NOT NULL UNIQUE,
            study_uid TEXT NOT NULL REFERENCES studies(study_uid),
            follow_up_of TEXT,
            state TEXT NOT NULL,            -- sending | verified
            pack_path TEXT NOT NULL,        -- relative to data_dir; gone once verified
            header_bytes INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
            chunk_count INTEGER NOT NULL, stream_bytes INTEGER NOT NULL,
            payload_bytes INTEGER NOT NULL, instance_count INTEGER NOT NULL,
            acked TEXT NOT NULL DEFAULT '[]',   -- ranges the hub holds
            chunks_sent INTEGER NOT NULL DEFAULT 0,
            chunks_resent INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL, first_sent_at TEXT, verified_at TEXT
        )""")
    db.execute("CREATE INDEX transfers_study ON transfers(study_uid)")
    db.execute("""
        CREATE TABLE transfer_instances (
            transfer_id TEXT NOT NULL REFERENCES transfers(transfer_id),
            instance_id INTEGER NOT NULL,
            PRIMARY KEY (transfer_id, instance_id)
        )""")
    db.execute("CREATE INDEX transfer_instances_instance ON transfer_instances(instance_id)")
    db.execute("""
        CREATE TABLE purges (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL, study_uid TEXT NOT NULL, reason TEXT NOT NULL,
            instances INTEGER NOT NULL, bytes INTEGER NOT NULL
        )""")


@migrations()
def m003_reports(db: sqlite_utils.Database) -> None:
    """Reports that came back from the hub, and their printing."""
    db.execute("""
        CREATE TABLE reports (
            report_id TEXT NOT NULL, version INTEGER NOT NULL,
            study_uid TEXT NOT NULL, critical INTEGER NOT NULL DEFAULT 0,
            body TEXT NOT NULL, pdf_path TEXT NOT NULL, received_at TEXT NOT NULL,
            printed_at TEXT, print_count INTEGER NOT NULL DEFAULT 0,
            print_error TEXT, reprint INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (report_id, version)
        )""")


@migrations()
def m004_clinic(db: sqlite_utils.Database) -> None:
    """The clinic's page: staff accounts, the append-only audit log, the clinical note,
    what the hub says of a study (being read), and note/priority changes for the hub."""
    db.execute("ALTER TABLE studies ADD COLUMN clinical_note TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE studies ADD COLUMN hub_state TEXT")
    db.execute("ALTER TABLE studies ADD COLUMN hub_state_at TEXT")
    db.execute("ALTER TABLE studies ADD COLUMN update_pending INTEGER NOT NULL DEFAULT 0")
    db.execute("""
        CREATE TABLE users (
            username TEXT PRIMARY KEY, role TEXT NOT NULL, language TEXT NOT NULL,
            password_hash TEXT NOT NULL, created_at TEXT NOT NULL
        )""")
    create_audit_table(db)


@migrations()
def m005_held(db: sqlite_utils.Database) -> None:
    """Instances (or whole studies, instance_id 0) that could not be packed for a
    reason that will not pass by itself, with a growing back-off; and how many
    instances of each transfer went without the pixel coder."""
    db.execute("""
        CREATE TABLE held (
            study_uid TEXT NOT NULL,
            instance_id INTEGER NOT NULL,   -- instances.id, or 0: the study as a whole
            sop_instance_uid TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL,
            first_at TEXT NOT NULL, last_at TEXT NOT NULL,
            tries INTEGER NOT NULL DEFAULT 1,
            next_try_ts REAL NOT NULL,      -- seconds since the epoch
            PRIMARY KEY (study_uid, instance_id)
        )""")
    db.execute("ALTER TABLE transfers ADD COLUMN coder_fallbacks INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE transfers ADD COLUMN coder_fallback_reasons TEXT")


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


# fsync releases the GIL: the disk flush runs while the caller hashes the same file
_FSYNC_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fsync")


class TempFile:
    """A file being written in the store's ``tmp/``: hashes as it goes, fsyncs on close.

    ``dataset_offset`` is where the dataset starts (after the file meta header); the
    dataset's own SHA-256 is taken from there on, so that the same dataset under two
    different meta headers is recognised as the same instance.
    """

    def __init__(self, path: Path, dataset_offset: int | None = None, create: bool = True):
        self.path = path
        self.size = 0
        self.dataset_offset = dataset_offset
        self._sha = hashlib.sha256()
        self._dsha = hashlib.sha256()
        self._f = open(path, "wb") if create else None  # noqa: SIM115 - closed in close()

    @classmethod
    def adopt(cls, path: Path, dataset_offset: int) -> TempFile:
        """Take over a complete file already written in the store's ``tmp/`` (by the
        DICOM receiver): hash it and fsync it, without copying it."""
        temp = cls(path, dataset_offset, create=False)
        with open(path, "rb") as f:
            # the disk flush and the hashing overlap: both release the GIL
            flushed = _FSYNC_POOL.submit(os.fsync, f.fileno())
            while block := f.read(1 << 20):
                temp._update(memoryview(block))
            flushed.result()
        return temp

    def write(self, data: bytes | memoryview) -> None:
        data = memoryview(data)  # slicing below must not copy
        assert self._f is not None, "write() on an adopted file"
        self._f.write(data)
        self._update(data)

    def _update(self, data: memoryview) -> None:
        self._sha.update(data)
        start, end = self.size, self.size + len(data)
        off = self.dataset_offset
        if off is not None and end > off:
            self._dsha.update(data[max(off - start, 0) :] if start < off else data)
        self.size = end

    def close(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def discard(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def dataset_sha256(self) -> str:
        return self._dsha.hexdigest()


@dataclass
class CheckReport:
    temp_files_removed: int = 0
    files_indexed: list[str] = field(default_factory=list)  # files that had no row
    rows_removed: list[str] = field(default_factory=list)  # rows whose file was gone
    quarantined: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.files_indexed or self.rows_removed or self.quarantined)


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
                outcome = self._index(
                    info, temp.sha256, temp.dataset_sha256, temp.size, final, source, stat
                )
            except sqlite3.OperationalError as exc:
                if "full" in str(exc).lower() or "disk" in str(exc).lower():
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
            self.db.execute("UPDATE held SET next_try_ts=0 WHERE instance_id=?", [instance_id])
            self._repair("restored", f"{row[1]}: the instance was sent again; file restored")

    def _unlink_unindexed(self, final: Path, sha256: str) -> None:
        # another row may share the file (same bytes, other identity is impossible,
        # but be careful): remove it only when nothing refers to it
        if not self.db.execute("SELECT 1 FROM instances WHERE sha256=?", [sha256]).fetchone():
            final.unlink(missing_ok=True)

    def _index(
        self,
        info: InstanceInfo,
        sha256: str,
        dataset_sha256: str,
        size: int,
        final: Path,
        source: str,
        stat: bool,
    ) -> Outcome:
        now = utcnow()
        now_ts = time.time()
        patient_key = "|".join((info.patient_id, info.patient_name, info.birth_date))
        with self.db.atomic():
            prior = self.db.execute(
                "SELECT count(*) FROM instances WHERE sop_instance_uid=?",
                [info.sop_instance_uid],
            ).fetchone()[0]
            self.db.execute(
                "INSERT INTO patients(key, patient_id, name, birth_date, sex) "
                "VALUES (?,?,?,?,?) ON CONFLICT(key) DO NOTHING",
                [patient_key, info.patient_id, info.patient_name, info.birth_date, info.sex],
            )
            self.db.execute(
                """INSERT INTO studies(study_uid, patient_key, study_date, study_time,
                       description, accession_number, state, priority, first_received,
                       last_received, last_received_ts)
                   VALUES (?,?,?,?,?,?,'receiving',?,?,?,?)
                   ON CONFLICT(study_uid) DO UPDATE SET
                       state='receiving', ready_at=NULL,
                       last_received=excluded.last_received,
                       last_received_ts=excluded.last_received_ts,
                       priority=CASE WHEN excluded.priority='stat' THEN 'stat'
                                     ELSE studies.priority END""",
                [
                    info.study_uid,
                    patient_key,
                    info.study_date,
                    info.study_time,
                    info.study_description,
                    info.accession_number,
                    "stat" if stat else "routine",
                    now,
                    now,
                    now_ts,
                ],
            )
            self.db.execute(
                "INSERT INTO series(series_uid, study_uid, modality, series_number, description) "
                "VALUES (?,?,?,?,?) ON CONFLICT(series_uid) DO NOTHING",
                [
                    info.series_uid,
                    info.study_uid,
                    info.modality,
                    info.series_number,
                    info.series_description,
                ],
            )
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
                self.db.execute(
                    "UPDATE studies SET state='ready', ready_at=? WHERE state='receiving' "
                    "AND last_received_ts <= ?",
                    [utcnow(), now_ts - self.quiet_seconds],
                )
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
            row = self.db.execute(
                "SELECT state FROM studies WHERE study_uid=?", [study_uid]
            ).fetchone()
            if row is None or row[0] != "delivered":
                return 0
            files = self.db.execute(
                "SELECT id, sha256, path, size FROM instances WHERE study_uid=?", [study_uid]
            ).fetchall()
            with self.db.atomic():
                self.db.execute(
                    "DELETE FROM transfer_instances WHERE instance_id IN "
                    "(SELECT id FROM instances WHERE study_uid=?)",
                    [study_uid],
                )
                self.db.execute("DELETE FROM instances WHERE study_uid=?", [study_uid])
                self.db.execute("UPDATE studies SET state='purged' WHERE study_uid=?", [study_uid])
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

    def check(self, index_file) -> CheckReport:  # type: ignore[no-untyped-def]
        """Repair the store after a crash: remove temp files, index files that have no
        row (``index_file(path)`` parses one into an InstanceInfo and its dataset
        offset), and drop rows whose file is gone. Every repair is logged and kept in
        the ``repairs`` table."""
        report = CheckReport()
        for p in self.tmp.iterdir():
            p.unlink(missing_ok=True)
            report.temp_files_removed += 1
        if report.temp_files_removed:
            log.info(
                "removed %d temp files left by an interrupted write", report.temp_files_removed
            )
        known = {r[0] for r in self.db.execute("SELECT DISTINCT sha256 FROM instances")}
        for sub in sorted(self.objects.iterdir()):
            for p in sub.iterdir():
                sha = p.name.removesuffix(".dcm")
                if sha in known:
                    continue
                self._recover(p, sha, index_file, report)
        rows = self.db.execute("SELECT id, sop_instance_uid, study_uid, path, size FROM instances")
        for iid, sop, study, rel, size in rows.fetchall():
            p = self.root / rel
            try:
                ok = p.stat().st_size == size
            except FileNotFoundError:
                ok = False
            if not ok:
                with self.write_lock, self.db.atomic():
                    self.db.execute("DELETE FROM instances WHERE id=?", [iid])
                    self._repair(
                        "row-without-file",
                        f"study {study} instance {sop}: file {rel} missing or wrong "
                        "size; row removed, send the instance again",
                    )
                report.rows_removed.append(sop)
        return report

    def _recover(self, p: Path, sha: str, index_file, report: CheckReport) -> None:  # type: ignore[no-untyped-def]
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        problem = None
        if h.hexdigest() != sha:
            problem = "content does not match its name (damaged file)"
        else:
            try:
                info, offset = index_file(p)
            except Exception as exc:  # anything unparseable goes to quarantine
                problem = f"cannot be indexed: {exc}"
        if problem:
            dest = self.quarantine / p.name
            os.replace(p, dest)
            self._repair("quarantined", f"{p.name}: {problem}")
            report.quarantined.append(p.name)
            return
        dsha = hashlib.sha256()
        with open(p, "rb") as f:
            f.seek(offset)
            for block in iter(lambda: f.read(1 << 20), b""):
                dsha.update(block)
        with self.write_lock:
            exists = self.db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid=? AND transfer_syntax=? "
                "AND dataset_sha256=?",
                [info.sop_instance_uid, info.transfer_syntax, dsha.hexdigest()],
            ).fetchone()
            if exists:  # an older copy of the same dataset is indexed: this one is spare
                p.unlink()
                self._repair("duplicate-file", f"{p.name}: same dataset already indexed")
                return
            self._index(info, sha, dsha.hexdigest(), p.stat().st_size, p, "recovered", stat=False)
            self._repair(
                "file-without-row",
                f"study {info.study_uid} instance {info.sop_instance_uid}: file had "
                "no row (interrupted before commit); indexed",
            )
        report.files_indexed.append(info.sop_instance_uid)

    def _repair(self, kind: str, detail: str) -> None:
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
