"""The hub's storage, behind a small interface so that PostgreSQL and an S3-compatible
object store can replace the defaults (SQLite + a folder tree) without touching ingest.

Every piece of reassembly state lives here, never in a worker's memory: with shared
subscriptions any worker may receive any chunk of any transfer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from common.clock import utcnow
from common.db import Database
from common.dicomfile import SERIES_FACTS, series_facts
from hub.objects import S3Objects, object_store
from hub.schema import migrations

if TYPE_CHECKING:
    from common.config import Config


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
    def has_lossless(self, study_uid: str, sop_instance_uid: str) -> bool: ...
    def drop_replaced_previews(self, study_uid: str) -> int: ...
    def preview_file(self, study_uid: str, sop_instance_uid: str) -> bytes | None: ...
    def previews_held(self, study_uid: str) -> set[str]: ...
    def waiting_transfers(self, box_id: str, study_uid: str) -> list[str]: ...
    def put_box_status(self, box_id: str, status: dict[str, Any], online: bool) -> bool: ...
    def touch_box(self, box_id: str, rejection: str | None = None, broker: str = "") -> None: ...
    def count_traffic(self, box_id: str, nbytes: int) -> None: ...
    def bytes_in_progress(self, box_id: str) -> int: ...
    def transaction(self, key: str = "") -> AbstractContextManager[Any]: ...


class FileHubStore:
    """The default: chunks and instances as files under ``root``, the index in SQLite."""

    def __init__(
        self,
        root: Path,
        prepare: bool = True,
        objects: dict[str, Any] | None = None,
        index_url: str | None = None,
        pool_size: int = 4,
    ):
        """``prepare``: make the folders and apply the migrations (once per process;
        the web app's per-request connections skip it). ``objects``: the ``[objects]``
        config; with a ``url`` the large things go to that S3-compatible store, else
        under ``root``. ``index_url``: a PostgreSQL index (hub/pgindex.py), else
        SQLite in ``root``; None: ``RADSETU_HUB_INDEX_URL`` (the variable that sets
        ``index.url`` in the config) when set. ``pool_size``: the most connections to
        PostgreSQL that this process's per-request stores hold at once."""
        self.root = Path(root)
        self.chunks = self.root / "chunks"
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.blobs = object_store(objects or {}, self.root, self.tmp)
        if prepare:
            for d in (self.root, self.chunks, self.objects, self.tmp):
                d.mkdir(parents=True, exist_ok=True)
            if isinstance(self.blobs, S3Objects):
                self.blobs.ensure_bucket()
        if index_url is None:
            index_url = os.environ.get("RADSETU_HUB_INDEX_URL", "")
        if index_url:
            from hub.pgindex import PgDatabase

            # the web's per-request stores (prepare=False) borrow from a pool
            self.db: Any = PgDatabase(index_url, pool_size=0 if prepare else pool_size)
            if prepare:
                self.db.migrate(migrations)
            return
        conn = sqlite3.connect(
            self.root / "hub.db", timeout=30, isolation_level=None, check_same_thread=False
        )
        self.db = Database(conn)  # transactions take the write lock at BEGIN
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        if prepare:
            migrations.apply(self.db)

    def close(self) -> None:
        if isinstance(self.db, Database):
            self.db.conn.close()
        else:
            self.db.close()

    def transaction(self, key: str = "") -> AbstractContextManager[Any]:
        """With PostgreSQL, one transaction that no other process's ``transaction(key)``
        interleaves with (an advisory lock on ``key``: hub processes on several machines
        take a transfer's chunks one at a time, and different transfers at once). With
        SQLite, nothing more than each statement's own: a SQLite hub runs one ingest
        process (docs/scale.md); holding the write lock for a whole chunk was seen to
        slow a STAT study behind routine chunks."""
        if isinstance(self.db, Database):
            return contextlib.nullcontext()
        return self.db.atomic(key)  # type: ignore[no-any-return]

    def put_chunk(self, transfer_id: str, index: int, data: bytes) -> None:
        self.blobs.put_bytes(f"chunks/{transfer_id}/{index:08d}", data)

    def get_chunk(self, transfer_id: str, index: int) -> bytes:
        return self.blobs.get(f"chunks/{transfer_id}/{index:08d}")

    def drop_chunks(self, transfer_id: str) -> None:
        self.blobs.delete_prefix(f"chunks/{transfer_id}/")

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

    def prune_history(self, before: float) -> int:
        """Drop every box's history rows from before ``before``; how many went."""
        return int(self.db.execute("DELETE FROM box_history WHERE at < ?", [before]).rowcount)

    def bytes_in_progress(self, box_id: str) -> int:
        """What a box's transfers that are not verified yet may still put on the hub's
        disk (their declared payload)."""
        row = self.db.execute(
            "SELECT coalesce(sum(payload_bytes), 0) FROM transfers "
            "WHERE box_id=? AND state != 'verified'",
            [box_id],
        ).fetchone()
        return int(row[0])

    def count_traffic(self, box_id: str, nbytes: int) -> None:
        """Bytes of chunks that reached the hub from a box, per minute (throughput)."""
        self.db.execute(
            "INSERT INTO box_traffic(box_id, minute, bytes) VALUES (?,?,?) "
            "ON CONFLICT(box_id, minute) DO UPDATE SET bytes = box_traffic.bytes + excluded.bytes",
            [box_id, int(time.time() // 60), nbytes],
        )

    def touch_box(self, box_id: str, rejection: str | None = None, broker: str = "") -> None:
        """The box was heard from (on ``broker``, when given; and, with ``rejection``,
        sent something refused)."""
        now = utcnow()
        self.db.execute(
            """INSERT INTO boxes(box_id, first_seen, last_seen, rejected, last_rejection,
                   broker)
               VALUES (?,?,?,?,?,?)
               ON CONFLICT(box_id) DO UPDATE SET last_seen=excluded.last_seen,
                   rejected=boxes.rejected + excluded.rejected,
                   last_rejection=coalesce(excluded.last_rejection, boxes.last_rejection),
                   broker=CASE WHEN excluded.broker = '' THEN boxes.broker
                               ELSE excluded.broker END""",
            [box_id, now, now, 1 if rejection else 0, rejection, broker],
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
        key = f"objects/{row['sha256'][:2]}/{row['sha256']}.dcm"
        part.file.flush()
        os.fsync(part.file.fileno())
        part.file.close()
        facts = series_facts(part.path)
        try:
            self.blobs.put_file(key, part.path)  # stored before it is indexed
        finally:
            part.path.unlink(missing_ok=True)
        self.db.execute(
            """INSERT INTO instances(sop_instance_uid, sha256, study_uid, box_id, transfer_id,
                   size, path, stored_at, lossy, series_uid, modality, series_number,
                   instance_number) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT DO NOTHING""",
            [
                row["sop_instance_uid"],
                row["sha256"],
                row["study_uid"],
                row["box_id"],
                row["transfer_id"],
                part.size,
                key,
                utcnow(),
                int(bool(row.get("lossy"))),
                *(facts[k] for k in SERIES_FACTS),
            ],
        )

    def describe_instances(self, kept: list[tuple[str, str, str]]) -> None:
        """Read and write down, in one transaction, the series facts of instances (SOP
        Instance UID, SHA-256, object key) kept before the index had them (m022)."""
        facts = []
        for sop, sha, path in kept:
            with self.blobs.local(path) as local:
                facts.append({**series_facts(local), "sop": sop, "sha": sha})
        with self.db.atomic():
            for values in facts:
                self.db.execute(
                    """UPDATE instances SET series_uid=:series_uid, modality=:modality,
                           series_number=:series_number, instance_number=:instance_number
                       WHERE sop_instance_uid=:sop AND sha256=:sha""",
                    values,
                )

    def has_lossless(self, study_uid: str, sop_instance_uid: str) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM instances WHERE study_uid=? AND sop_instance_uid=? AND lossy=0",
                [study_uid, sop_instance_uid],
            ).fetchone()
            is not None
        )

    def preview_file(self, study_uid: str, sop_instance_uid: str) -> bytes | None:
        """The lossy preview of an instance, as its file, while the hub holds one."""
        row = self.db.execute(
            "SELECT path FROM instances WHERE study_uid=? AND sop_instance_uid=? AND lossy=1",
            [study_uid, sop_instance_uid],
        ).fetchone()
        return self.blobs.get(row[0]) if row else None

    def previews_held(self, study_uid: str) -> set[str]:
        """The SOP Instance UIDs of the study whose lossy preview the hub holds."""
        rows = self.db.execute(
            "SELECT sop_instance_uid FROM instances WHERE study_uid=? AND lossy=1", [study_uid]
        ).fetchall()
        return {sop for (sop,) in rows}

    def waiting_transfers(self, box_id: str, study_uid: str) -> list[str]:
        """The box's transfers of the study whose every chunk is in but which are not
        verified: those waiting for the previews their records complete."""
        rows = self.db.execute(
            "SELECT transfer_id FROM transfers WHERE box_id=? AND study_uid=? "
            "AND state='complete' ORDER BY first_seen",
            [box_id, study_uid],
        ).fetchall()
        return [r[0] for r in rows]

    def drop_replaced_previews(self, study_uid: str) -> int:
        """Forget the study's lossy previews whose lossless instance is in (their rows,
        then their files); returns how many went."""
        rows = self.db.execute(
            """SELECT sop_instance_uid, sha256, path FROM instances p
               WHERE p.study_uid=? AND p.lossy=1 AND EXISTS (SELECT 1 FROM instances l
                   WHERE l.study_uid=p.study_uid AND l.sop_instance_uid=p.sop_instance_uid
                   AND l.lossy=0)""",
            [study_uid],
        ).fetchall()
        for sop, sha, path in rows:
            self.db.execute(
                "DELETE FROM instances WHERE sop_instance_uid=? AND sha256=? AND lossy=1",
                [sop, sha],
            )
            if not self.db.execute("SELECT 1 FROM instances WHERE path=?", [path]).fetchone():
                self.blobs.delete(path)  # a crash before this leaves a file, never a row
        return len(rows)

    def studies(self) -> Iterator[dict[str, Any]]:
        yield from self.db.query(
            """SELECT study_uid, box_id, count(*) AS instances, sum(size) AS bytes,
                      max(stored_at) AS last_stored
               FROM instances WHERE lossy=0 GROUP BY study_uid, box_id ORDER BY last_stored DESC"""
        )

    def study(self, study_uid: str) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "SELECT sop_instance_uid, sha256, size, box_id, transfer_id, stored_at "
                "FROM instances WHERE study_uid=? AND lossy=0 ORDER BY sop_instance_uid",
                [study_uid],
            )
        )

    def transfers(self, box_id: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        where, args = ("WHERE box_id=?", [box_id]) if box_id else ("", [])
        bound, more = (" LIMIT ?", [limit]) if limit >= 0 else ("", [])
        return list(
            self.db.query(
                "SELECT transfer_id, box_id, study_uid, priority, state, chunk_count, "
                "chunks_held, payload_bytes, source, first_seen, updated, verified_at, "
                "chunks_received, duplicates, resent_held, "
                "coalesce(json_extract(manifest, '$.extra.coder_fallbacks'), 0) "
                "AS coder_fallbacks, CASE WHEN json_extract(manifest, '$.extra.preview.of') "
                "IS NULL THEN 'lossless' ELSE 'preview' END AS kind "
                f"FROM transfers {where} ORDER BY updated DESC{bound}",
                [*args, *more],
            )
        )


def through_broker(broker: str | None, primary: bool = True) -> tuple[str, list[Any]]:
    """SQL (on ``boxes b``) keeping to the boxes reached through ``broker``: those last
    heard on it, and, for the ``primary`` broker, those never heard on any. ``None``:
    every box (one broker)."""
    if broker is None:
        return "", []
    return (
        " AND (coalesce(b.broker, '') = ? OR (coalesce(b.broker, '') = '' AND ? = 1))",
        [broker, 1 if primary else 0],
    )


def open_store(config: Config, prepare: bool = True) -> FileHubStore:
    """The hub's store as its config says (data folder, index, object store)."""
    return FileHubStore(
        config.data_dir,
        prepare=prepare,
        objects=config["objects"],
        index_url=config["index"]["url"] or None,
        pool_size=config["index"]["pool_size"],
    )
