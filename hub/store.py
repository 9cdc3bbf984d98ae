"""The hub's storage, behind a small interface so that PostgreSQL and an S3-compatible
object store can replace the defaults (SQLite + a folder tree) without touching ingest.

Every piece of reassembly state lives here, never in a worker's memory: with shared
subscriptions any worker may receive any chunk of any transfer.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import sqlite_utils
from sqlite_utils import Migrations

from common.clock import utcnow
from common.db import Database, create_audit_table
from common.durable import fsync_dir, write_durably
from common.sessions import create_session_tables

migrations = Migrations("radsetu.hub.store")


@migrations()
def m001_hub(db: sqlite_utils.Database) -> None:
    db.execute("""
        CREATE TABLE transfers (
            transfer_id TEXT PRIMARY KEY, box_id TEXT NOT NULL, study_uid TEXT NOT NULL,
            priority TEXT NOT NULL, state TEXT NOT NULL, reception TEXT NOT NULL,
            chunk_count INTEGER NOT NULL, chunks_held INTEGER NOT NULL,
            payload_bytes INTEGER NOT NULL, source TEXT NOT NULL,
            first_seen TEXT NOT NULL, updated TEXT NOT NULL, verified_at TEXT
        )""")
    db.execute("""
        CREATE TABLE instances (
            sop_instance_uid TEXT NOT NULL, sha256 TEXT NOT NULL,
            study_uid TEXT NOT NULL, box_id TEXT NOT NULL, transfer_id TEXT NOT NULL,
            size INTEGER NOT NULL, path TEXT NOT NULL, stored_at TEXT NOT NULL,
            PRIMARY KEY (sop_instance_uid, sha256)
        )""")
    db.execute("CREATE INDEX hub_instances_study ON instances(study_uid)")


@migrations()
def m002_manifest_apart(db: sqlite_utils.Database) -> None:
    """The manifest never changes: keep it apart from the state that changes with every
    chunk, so a chunk's update does not rewrite (nor re-read) every chunk hash."""
    db.execute("ALTER TABLE transfers ADD COLUMN manifest TEXT")
    for tid, raw in db.execute("SELECT transfer_id, reception FROM transfers").fetchall():
        d = json.loads(raw)
        manifest = d.pop("manifest", None)
        db.execute(
            "UPDATE transfers SET manifest=?, reception=? WHERE transfer_id=?",
            [json.dumps(manifest), json.dumps(d), tid],
        )


@migrations()
def m003_boxes_and_counts(db: sqlite_utils.Database) -> None:
    """Each box's last status, and per-transfer counts of what arrived twice."""
    db.execute("""
        CREATE TABLE boxes (
            box_id TEXT PRIMARY KEY, online INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT '{}', status_at TEXT,
            first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
            rejected INTEGER NOT NULL DEFAULT 0, last_rejection TEXT
        )""")
    for col in ("chunks_received", "duplicates", "resent_held"):
        db.execute(f"ALTER TABLE transfers ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0")


@migrations()
def m004_reports(db: sqlite_utils.Database) -> None:
    """Reports (a signed one never changes; an addendum is a new version) and their
    delivery to the box, retried until the box acknowledges."""
    db.execute("""
        CREATE TABLE reports (
            report_id TEXT NOT NULL, version INTEGER NOT NULL,
            study_uid TEXT NOT NULL, box_id TEXT NOT NULL,
            state TEXT NOT NULL,            -- draft | signed
            findings TEXT NOT NULL, impression TEXT NOT NULL,
            radiologist TEXT NOT NULL, critical INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL, signed_at TEXT, pdf_path TEXT,
            PRIMARY KEY (report_id, version)
        )""")
    db.execute("CREATE INDEX reports_study ON reports(study_uid)")
    db.execute("""
        CREATE TABLE deliveries (
            report_id TEXT NOT NULL, version INTEGER NOT NULL, box_id TEXT NOT NULL,
            state TEXT NOT NULL,            -- pending | acked
            attempts INTEGER NOT NULL DEFAULT 0, last_sent_at REAL,
            created_at TEXT NOT NULL, acked_at TEXT,
            PRIMARY KEY (report_id, version)
        )""")


@migrations()
def m005_reading(db: sqlite_utils.Database) -> None:
    """What the reading room needs of a study, and the times its turnaround is made of
    (the hub's clock, except ``acquired_at`` from the DICOM dates and
    ``received_at_box`` from the box's clock)."""
    db.execute("""
        CREATE TABLE hub_studies (
            study_uid TEXT PRIMARY KEY, box_id TEXT NOT NULL,
            patient_name TEXT NOT NULL, patient_id TEXT NOT NULL,
            modality TEXT NOT NULL, description TEXT NOT NULL,
            priority TEXT NOT NULL, priority_reason TEXT NOT NULL DEFAULT '',
            subspecialty TEXT NOT NULL DEFAULT '',
            claimed_by TEXT, assigned_to TEXT,
            acquired_at TEXT, received_at_box TEXT, verified_at TEXT NOT NULL,
            claimed_at TEXT, signed_at TEXT, report_at_box_at TEXT, printed_at TEXT
        )""")
    db.execute("CREATE INDEX hub_studies_order ON hub_studies(priority, verified_at)")


@migrations()
def m006_users(db: sqlite_utils.Database) -> None:
    """People who log in to the hub's pages."""
    db.execute("""
        CREATE TABLE users (
            username TEXT PRIMARY KEY, role TEXT NOT NULL,
            password_hash TEXT NOT NULL, created_at TEXT NOT NULL
        )""")


@migrations()
def m007_access_and_fleet(db: sqlite_utils.Database) -> None:
    """API tokens for scripts, the append-only audit log, and each box's history (its
    status over time, and the bytes that reached the hub per minute) for the
    operators' charts and alerts."""
    db.execute("""
        CREATE TABLE api_tokens (
            token_sha256 TEXT PRIMARY KEY, username TEXT NOT NULL, label TEXT NOT NULL,
            created_at TEXT NOT NULL, last_used_at TEXT
        )""")
    create_audit_table(db, "role TEXT NOT NULL")
    db.execute("""
        CREATE TABLE box_history (
            box_id TEXT NOT NULL, at REAL NOT NULL, online INTEGER NOT NULL,
            backlog_studies INTEGER, backlog_bytes INTEGER, disk_free INTEGER
        )""")
    db.execute("CREATE INDEX box_history_box ON box_history(box_id, at)")
    db.execute("""
        CREATE TABLE box_traffic (
            box_id TEXT NOT NULL, minute INTEGER NOT NULL, bytes INTEGER NOT NULL,
            PRIMARY KEY (box_id, minute)
        )""")


@migrations()
def m008_clinic_word(db: sqlite_utils.Database) -> None:
    """The clinic's clinical note on a study (and STAT or a note that came before the
    study did), and the hub's word back to the box (a radiologist is reading it)."""
    db.execute("ALTER TABLE hub_studies ADD COLUMN clinical_note TEXT NOT NULL DEFAULT ''")
    db.execute("""
        CREATE TABLE study_hints (
            study_uid TEXT PRIMARY KEY, box_id TEXT NOT NULL, priority TEXT NOT NULL,
            clinical_note TEXT NOT NULL, at TEXT NOT NULL
        )""")
    db.execute("""
        CREATE TABLE notices (
            id INTEGER PRIMARY KEY AUTOINCREMENT, box_id TEXT NOT NULL,
            study_uid TEXT NOT NULL, state TEXT NOT NULL, created_at TEXT NOT NULL,
            sent_at TEXT
        )""")


@migrations()
def m009_sessions(db: sqlite_utils.Database) -> None:
    """Sessions kept at the hub (a cookie is worth nothing after logout or a change of
    role), failed-login counters, disabled accounts, and API tokens that expire."""
    create_session_tables(db)
    # NULL: a token made before tokens expired; it lasts 90 days from its making
    db.execute("ALTER TABLE api_tokens ADD COLUMN expires REAL")


class InstanceFile:
    """An instance being written, piece by piece, to the hub's temp folder and hashed
    on the way: the hub never holds a whole instance in memory."""

    def __init__(self, tmp_dir: Path):
        self.path = tmp_dir / f"{uuid.uuid4().hex}.part"
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed by keep or discard
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha.update(data)
        self.size += len(data)

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class HubStore(Protocol):
    """What ingest needs from storage. Every write is durable when the call returns."""

    def put_chunk(self, transfer_id: str, index: int, data: bytes) -> None: ...
    def get_chunk(self, transfer_id: str, index: int) -> bytes: ...
    def drop_chunks(self, transfer_id: str) -> None: ...
    def load_transfer(self, transfer_id: str) -> tuple[str, str] | None: ...
    def save_transfer(
        self, transfer_id: str, manifest_json: str, state_json: str, row: dict[str, Any]
    ) -> None: ...
    def put_instance(self, row: dict[str, Any], data: bytes) -> None: ...
    def new_instance(self) -> InstanceFile: ...
    def keep_instance(self, row: dict[str, Any], part: InstanceFile) -> None: ...
    def has_instance(self, sop_instance_uid: str, sha256: str) -> bool: ...
    def put_box_status(self, box_id: str, status: dict[str, Any], online: bool) -> bool: ...
    def touch_box(self, box_id: str, rejection: str | None = None) -> None: ...
    def count_traffic(self, box_id: str, nbytes: int) -> None: ...


class FileHubStore:
    """The default: chunks and instances as files under ``root``, the index in SQLite."""

    def __init__(self, root: Path, prepare: bool = True):
        """``prepare``: make the folders and apply the migrations (once per process;
        the web app's per-request connections skip it)."""
        self.root = Path(root)
        self.chunks = self.root / "chunks"
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        if prepare:
            for d in (self.root, self.chunks, self.objects, self.tmp):
                d.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.root / "hub.db", timeout=30, isolation_level=None, check_same_thread=False
        )
        self.db = Database(conn)  # transactions take the write lock at BEGIN
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        if prepare:
            migrations.apply(self.db)

    def close(self) -> None:
        self.db.conn.close()

    def write_file(self, final: Path, data: bytes) -> None:
        """Write a file of the hub's durably (temp, fsync, rename, fsync of its folder)."""
        write_durably(final, data, self.tmp)

    def put_chunk(self, transfer_id: str, index: int, data: bytes) -> None:
        self.write_file(self.chunks / transfer_id / f"{index:08d}", data)

    def get_chunk(self, transfer_id: str, index: int) -> bytes:
        return (self.chunks / transfer_id / f"{index:08d}").read_bytes()

    def drop_chunks(self, transfer_id: str) -> None:
        folder = self.chunks / transfer_id
        if folder.exists():
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()

    def load_transfer(self, transfer_id: str) -> tuple[str, str] | None:
        """(manifest JSON, reception state JSON) of a known transfer, else None."""
        row = self.db.execute(
            "SELECT manifest, reception FROM transfers WHERE transfer_id=?", [transfer_id]
        ).fetchone()
        return (row[0], row[1]) if row else None

    def save_transfer(
        self, transfer_id: str, manifest_json: str, state_json: str, row: dict[str, Any]
    ) -> None:
        now = utcnow()
        self.db.execute(
            """INSERT INTO transfers(transfer_id, box_id, study_uid, priority, state,
                   manifest, reception, chunk_count, chunks_held, payload_bytes, source,
                   first_seen, updated, verified_at)
               VALUES (:transfer_id, :box_id, :study_uid, :priority, :state, :manifest,
                   :reception, :chunk_count, :chunks_held, :payload_bytes, :source, :now,
                   :now, CASE WHEN :state = 'verified' THEN :now END)
               ON CONFLICT(transfer_id) DO UPDATE SET state=excluded.state,
                   reception=excluded.reception, chunks_held=excluded.chunks_held,
                   updated=excluded.updated,
                   chunks_received=transfers.chunks_received + :received,
                   duplicates=transfers.duplicates + :duplicate,
                   resent_held=transfers.resent_held + :resent_held,
                   verified_at=coalesce(transfers.verified_at, excluded.verified_at)""",
            {
                "received": 0,
                "duplicate": 0,
                "resent_held": 0,
                **row,
                "transfer_id": transfer_id,
                "manifest": manifest_json,
                "reception": state_json,
                "now": now,
            },
        )

    def put_box_status(self, box_id: str, status: dict[str, Any], online: bool) -> bool:
        """A box's retained status (or its last will); the hub stamps its own time.
        Returns whether the box was online before. The status and its history row are
        one transaction: the dashboard never shows one without the other."""
        with self.db.atomic():
            return self._put_box_status(box_id, status, online)

    def _put_box_status(self, box_id: str, status: dict[str, Any], online: bool) -> bool:
        now = utcnow()
        before = self.db.execute(
            "SELECT online, status FROM boxes WHERE box_id=?", [box_id]
        ).fetchone()
        if not online and before is not None:
            # a last will says little: keep the last figures the box gave (its backlog
            # is still there) under what the will says
            status = {**json.loads(before[1] or "{}"), **status}
        self.db.execute(
            """INSERT INTO boxes(box_id, online, status, status_at, first_seen, last_seen)
               VALUES (?,?,?,?,?,?)
               ON CONFLICT(box_id) DO UPDATE SET online=excluded.online,
                   status=excluded.status, status_at=excluded.status_at,
                   last_seen=excluded.last_seen""",
            [box_id, int(online), json.dumps(status), now, now, now],
        )
        self.db.execute(
            "INSERT INTO box_history(box_id, at, online, backlog_studies, backlog_bytes, "
            "disk_free) VALUES (?,?,?,?,?,?)",
            [
                box_id,
                time.time(),
                int(online),
                status.get("backlog_studies"),
                status.get("backlog_bytes"),
                status.get("disk_free"),
            ],
        )
        return bool(before and before[0])

    def count_traffic(self, box_id: str, nbytes: int) -> None:
        """Bytes of chunks that reached the hub from a box, per minute (throughput)."""
        self.db.execute(
            "INSERT INTO box_traffic(box_id, minute, bytes) VALUES (?,?,?) "
            "ON CONFLICT(box_id, minute) DO UPDATE SET bytes = bytes + excluded.bytes",
            [box_id, int(time.time() // 60), nbytes],
        )

    def touch_box(self, box_id: str, rejection: str | None = None) -> None:
        """The box was heard from (and, with ``rejection``, sent something refused)."""
        now = utcnow()
        self.db.execute(
            """INSERT INTO boxes(box_id, first_seen, last_seen, rejected, last_rejection)
               VALUES (?,?,?,?,?)
               ON CONFLICT(box_id) DO UPDATE SET last_seen=excluded.last_seen,
                   rejected=boxes.rejected + excluded.rejected,
                   last_rejection=coalesce(excluded.last_rejection, boxes.last_rejection)""",
            [box_id, now, now, 1 if rejection else 0, rejection],
        )

    def boxes(self) -> list[dict[str, Any]]:
        out = []
        for row in self.db.query("SELECT * FROM boxes ORDER BY box_id"):
            row = dict(row)
            row["online"] = bool(row["online"])
            row["status"] = json.loads(row["status"])
            out.append(row)
        return out

    def has_instance(self, sop_instance_uid: str, sha256: str) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid=? AND sha256=?",
                [sop_instance_uid, sha256],
            ).fetchone()
            is not None
        )

    def put_instance(self, row: dict[str, Any], data: bytes) -> None:
        part = self.new_instance()
        part.write(data)
        self.keep_instance(row, part)

    def new_instance(self) -> InstanceFile:
        return InstanceFile(self.tmp)

    def keep_instance(self, row: dict[str, Any], part: InstanceFile) -> None:
        """Keep a written instance durably under its SHA-256 (file fsynced, renamed,
        folder fsynced) and index it; the same instance again changes nothing."""
        if part.sha.hexdigest() != row["sha256"]:
            part.discard()
            raise ValueError(f"{row['sop_instance_uid']}: bytes do not match their SHA-256")
        if self.has_instance(row["sop_instance_uid"], row["sha256"]):
            part.discard()
            return
        final = self.objects / row["sha256"][:2] / f"{row['sha256']}.dcm"
        part.file.flush()
        os.fsync(part.file.fileno())
        part.file.close()
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part.path, final)
        fsync_dir(final.parent)
        self.db.execute(
            """INSERT INTO instances(sop_instance_uid, sha256, study_uid, box_id, transfer_id,
                   size, path, stored_at) VALUES (?,?,?,?,?,?,?,?)
               ON CONFLICT DO NOTHING""",
            [
                row["sop_instance_uid"],
                row["sha256"],
                row["study_uid"],
                row["box_id"],
                row["transfer_id"],
                part.size,
                str(final.relative_to(self.root)),
                utcnow(),
            ],
        )

    def studies(self) -> Iterator[dict[str, Any]]:
        yield from self.db.query(
            """SELECT study_uid, box_id, count(*) AS instances, sum(size) AS bytes,
                      max(stored_at) AS last_stored
               FROM instances GROUP BY study_uid, box_id ORDER BY last_stored DESC"""
        )

    def study(self, study_uid: str) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "SELECT sop_instance_uid, sha256, size, box_id, transfer_id, stored_at "
                "FROM instances WHERE study_uid=? ORDER BY sop_instance_uid",
                [study_uid],
            )
        )

    def transfers(self, box_id: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        where, args = ("WHERE box_id=?", [box_id]) if box_id else ("", [])
        return list(
            self.db.query(
                "SELECT transfer_id, box_id, study_uid, priority, state, chunk_count, "
                "chunks_held, payload_bytes, source, first_seen, updated, verified_at, "
                "chunks_received, duplicates, resent_held, "
                "coalesce(json_extract(manifest, '$.extra.coder_fallbacks'), 0) "
                f"AS coder_fallbacks FROM transfers {where} "
                "ORDER BY updated DESC LIMIT ?",
                [*args, limit],
            )
        )
