"""The box's outbox: ready studies packed into transfers, and what the hub acknowledged.

A transfer is one pack file (``wire.packfile`` layout: manifest, then every chunk) in
``data_dir/outbox/`` plus a row in the index. The file is fsynced before its row is
committed; a pack file without a row (a crash in between) is removed at start-up.
Instances that reach a study after it was packed travel in a follow-up transfer.
No MQTT here: the sync agent (``edge.sync``) drives this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.clock import utcnow
from common.durable import fsync_dir
from edge import doctors, orders, studies
from edge.holds import Holds
from edge.sneakernet import NothingToPack, PackResult, Source, pack, rests_in
from edge.store import Store
from wire.manifest import Manifest, Priority
from wire.packfile import MAGIC, header_length, read_manifest
from wire.ranges import RangeSet

log = logging.getLogger("radsetu.outbox")


@dataclass(frozen=True)
class Packed:
    transfer_id: str
    study_uid: str
    seq: int
    priority: Priority


class Outbox:
    def __init__(self, store: Store, box_id: str, sync_cfg: dict[str, Any]):
        self.store = store
        self.db = store.db
        self.box_id = box_id
        self.cfg = sync_cfg
        self.folder = store.root / "outbox"
        self.folder.mkdir(exist_ok=True)
        self._files: dict[str, Any] = {}
        self._manifests: dict[str, Manifest] = {}
        self._heads: dict[str, int] = {}
        self._lock = threading.Lock()
        self.holds = Holds(store)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    # -- start-up -----------------------------------------------------------------

    def clean(self) -> None:
        """Remove pack files that have no row, or whose transfer is verified, and what
        transfers carried of instances retention has since deleted."""
        with self.store.write_lock, self.db.atomic():
            self.db.execute(
                "DELETE FROM transfer_instances WHERE instance_id NOT IN (SELECT id FROM instances)"
            )
            self.db.execute(
                "DELETE FROM previewed WHERE instance_id NOT IN (SELECT id FROM instances)"
            )
        live = {
            Path(r[0]).name
            for r in self.db.execute("SELECT pack_path FROM transfers WHERE state='sending'")
        } | {  # the rests of previews that went, for studies still to be packed
            self.rests_dir(uid).name
            for (uid,) in self.db.execute("SELECT study_uid FROM studies WHERE state!='delivered'")
        }
        for p in self.folder.iterdir():
            if p.name not in live:
                log.info("outbox: removing %s (no transfer needs it)", p.name)
                if p.is_dir():  # previews being coded when the box stopped
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        for tid, rel in self.db.execute(
            "SELECT transfer_id, pack_path FROM transfers WHERE state='sending'"
        ).fetchall():
            if not (self.store.root / rel).exists():  # gone (a damaged card?)
                self.abandon(tid, "its pack file is missing")

    # -- packing ------------------------------------------------------------------

    def next_ready(self) -> str | None:
        """The ready study to pack next: STAT first, then the longest waiting."""
        row = self.db.execute(
            "SELECT study_uid FROM studies s WHERE state='ready' AND NOT EXISTS "
            "(SELECT 1 FROM held h WHERE h.study_uid = s.study_uid AND h.instance_id = 0 "
            " AND h.next_try_ts > ?) "
            "ORDER BY priority='stat' DESC, ready_at, last_received_ts LIMIT 1",
            [time.time()],
        ).fetchone()
        return row[0] if row else None

    def pack_study(self, study_uid: str) -> Packed | None:
        """Pack the study's instances that no transfer carries yet. None when there were
        none (the study's state is settled instead). An instance whose file cannot be
        read as it was kept is held (``edge.holds``) and the rest goes; a study whose
        every instance is held makes no transfer."""
        rows = self.unsent(study_uid)
        study = self.study_row(study_uid)
        if not rows or study is None:
            self.settle(study_uid)
            return None
        tid = uuid.uuid4().hex
        out = self.folder / f"{tid}.pack"
        rests = self.rests_dir(study_uid)
        kept = rests_in(rests)
        sources = [
            Source(sop, study_uid, self.store.root / rel, sha256=sha, key=iid, rest=kept.get(iid))
            for iid, sop, rel, sha in rows
        ]
        try:
            result = self._pack(sources, out, tid, study)
            shutil.rmtree(rests, ignore_errors=True)  # packed: the previews' rests went in
        except NothingToPack as exc:
            self.holds.hold_all(study_uid, exc.held)
            self.settle(study_uid)
            return None
        self.holds.hold_all(study_uid, result.held)
        held_keys = {h.source.key for h in result.held}
        packed_ids = [iid for iid, *_ in rows if iid not in held_keys]
        self.holds.release(study_uid, [0, *packed_ids])  # 0: a whole-study failure before
        for fb in result.fallbacks:
            log.warning(
                "study %s instance %s went without the pixel coder: %s",
                study_uid,
                fb.sop_instance_uid,
                fb.reason,
            )
        seq = self.record(result, out, packed_ids)
        return Packed(tid, study_uid, seq, result.manifest.priority)

    def rests_dir(self, study_uid: str) -> Path:
        """Where a study's preview leaves the records that complete it, for its lossless
        transfer to send instead of those images (removed once that is packed; a box
        stopped between the two sends the images whole: ``clean``)."""
        return self.folder / f"{hashlib.sha256(study_uid.encode()).hexdigest()[:20]}.rests"

    def study_row(self, study_uid: str) -> Any:
        return self.db.execute(
            "SELECT priority, first_received, coalesce(priority_reason, ''), clinical_note, "
            "referrer_id, referring_physician FROM studies WHERE study_uid=?",
            [study_uid],
        ).fetchone()

    def unsent(self, study_uid: str) -> list[tuple[int, str, str, str]]:
        """(id, SOP Instance UID, path, SHA-256) of each instance no transfer carries,
        but those held and not yet due again."""
        rows = self.db.execute(
            """SELECT i.id, i.sop_instance_uid, i.path, i.sha256 FROM instances i
               WHERE i.study_uid=? AND NOT EXISTS
                   (SELECT 1 FROM transfer_instances ti WHERE ti.instance_id = i.id)
               AND NOT EXISTS (SELECT 1 FROM held h WHERE h.instance_id = i.id
                   AND h.next_try_ts > ?)
               ORDER BY i.id""",
            [study_uid, time.time()],
        ).fetchall()
        return [tuple(r) for r in rows]

    def earlier_transfer(self, study_uid: str) -> str | None:
        """The study's latest lossless transfer, which a new one follows up."""
        row = self.db.execute(
            "SELECT transfer_id FROM transfers WHERE study_uid=? AND state!='abandoned' "
            "AND kind='lossless' ORDER BY seq DESC LIMIT 1",
            [study_uid],
        ).fetchone()
        return row[0] if row else None

    def extra(self, study_uid: str, study: Any) -> dict[str, Any]:
        """What a transfer's manifest tells the hub beside the images (the box's clock,
        which may be wrong: the hub shows it as the box's)."""
        _priority, first_received, reason, note, referrer_id, dicom_name = study
        referrer = doctors.for_study(self.db, referrer_id, dicom_name)
        order = orders.of_study(self.db, study_uid)
        return {
            "first_received": first_received,
            "priority_reason": reason[:500],
            "clinical_note": note[:1000],
            **({"referrer": referrer.contact()} if referrer else {}),
            # the order the study met: the turnaround starts at its time
            **(
                {"order": {"accession": order["accession"], "ordered_at": order["created_at"]}}
                if order
                else {}
            ),
        }

    def _pack(self, sources: list[Source], out: Path, tid: str, study: Any) -> PackResult:
        study_uid = sources[0].study_uid
        return pack(
            sources,
            out,
            self.box_id,
            self.cfg["chunk_bytes"],
            self.cfg["level"],
            Priority(study[0]),
            pixel_effort=self.cfg["pixel_effort"] or None,
            follow_up_of=self.earlier_transfer(study_uid),
            transfer_id=tid,
            extra=self.extra(study_uid, study),
            coder_seconds=float(self.cfg["coder_seconds"]),
        )

    def record(
        self, result: PackResult, out: Path, packed_ids: list[int], kind: str = "lossless"
    ) -> int:
        """The transfer's row, after its pack file is durable; returns its queue place."""
        manifest, fallbacks = result.manifest, result.fallbacks
        fsync_dir(self.folder)
        with open(out, "rb") as f:
            prefix = f.read(len(MAGIC) + 4)
        with self.store.write_lock, self.db.atomic():
            cur = self.db.execute(
                """INSERT INTO transfers(transfer_id, study_uid, follow_up_of, state,
                       pack_path, header_bytes, chunk_size, chunk_count, stream_bytes,
                       payload_bytes, instance_count, created_at, coder_fallbacks,
                       coder_fallback_reasons, kind)
                   VALUES (?,?,?,'sending',?,?,?,?,?,?,?,?,?,?,?)""",
                [
                    manifest.transfer_id,
                    manifest.study_uid,
                    manifest.follow_up_of,
                    str(out.relative_to(self.store.root)),
                    header_length(prefix),
                    manifest.chunk_size,
                    manifest.chunk_count,
                    manifest.stream_size,
                    manifest.payload_bytes,
                    len(manifest.instances),
                    utcnow(),
                    len(fallbacks),
                    json.dumps({f.sop_instance_uid: f.reason for f in fallbacks})
                    if fallbacks
                    else None,
                    kind,
                ],
            )
            self.db.conn.executemany(
                "INSERT INTO transfer_instances(transfer_id, instance_id) VALUES (?,?)",
                [(manifest.transfer_id, iid) for iid in packed_ids],
            )
            if kind == "lossless":  # a preview alone leaves the study to be packed
                studies.move(self.db, manifest.study_uid, "sending", ("ready",))
        log.info(
            "study %s packed as %s transfer %s%s: %d instances, %d bytes -> %d bytes in %d "
            "chunks (%s)%s%s",
            manifest.study_uid,
            kind,
            manifest.transfer_id,
            f" (follow-up of {manifest.follow_up_of})" if manifest.follow_up_of else "",
            len(manifest.instances),
            manifest.payload_bytes,
            manifest.stream_size,
            manifest.chunk_count,
            manifest.priority.value,
            f"; {len(fallbacks)} without the pixel coder" if fallbacks else "",
            f"; {len(result.held)} held" if result.held else "",
        )
        return int(cur.lastrowid or 0)

    def settle(self, study_uid: str) -> None:
        """A study with nothing left to pack is delivered once every transfer of it
        is verified, else it is still sending."""
        with self.store.write_lock, self.db.atomic():
            open_ = self.db.execute(
                "SELECT count(*) FROM transfers WHERE study_uid=? AND state='sending'",
                [study_uid],
            ).fetchone()[0]
            unsent = self.db.execute(
                """SELECT count(*) FROM instances i WHERE i.study_uid=? AND NOT EXISTS
                   (SELECT 1 FROM transfer_instances ti WHERE ti.instance_id = i.id)""",
                [study_uid],
            ).fetchone()[0]
            if open_ == 0 and unsent == 0:
                if studies.move(self.db, study_uid, "delivered", ("ready", "sending")):
                    log.info("study %s delivered: the hub verified every instance", study_uid)
            elif self.db.execute(
                "SELECT 1 FROM transfers WHERE study_uid=? AND state='sending' AND kind='lossless'",
                [study_uid],
            ).fetchone():  # not for a preview alone: the study is still to be packed
                studies.move(self.db, study_uid, "sending", ("ready",))

    # -- sending ------------------------------------------------------------------

    def unfinished(self) -> list[dict[str, Any]]:
        cur = self.db.execute(
            """SELECT t.seq, t.transfer_id, t.study_uid, t.acked, t.chunk_count, s.priority
               FROM transfers t JOIN studies s ON s.study_uid = t.study_uid
               WHERE t.state='sending' ORDER BY t.seq"""
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def priorities(self) -> dict[str, Priority]:
        """The current priority of every unfinished transfer (people may change it)."""
        return {
            tid: Priority(p)
            for tid, p in self.db.execute(
                "SELECT t.transfer_id, s.priority FROM transfers t "
                "JOIN studies s ON s.study_uid = t.study_uid WHERE t.state='sending'"
            ).fetchall()
        }

    def _file(self, transfer_id: str) -> Any:
        f = self._files.get(transfer_id)
        if f is None:
            rel, head = self.db.execute(
                "SELECT pack_path, header_bytes FROM transfers WHERE transfer_id=?",
                [transfer_id],
            ).fetchone()
            f = self._files[transfer_id] = open(self.store.root / rel, "rb")  # noqa: SIM115
            self._heads[transfer_id] = head
        return f

    def manifest(self, transfer_id: str) -> Manifest:
        m = self._manifests.get(transfer_id)
        if m is None:
            f = self._file(transfer_id)
            f.seek(0)
            prefix = f.read(len(MAGIC) + 4)
            m = read_manifest(prefix + f.read(header_length(prefix) - len(prefix)))
            self._manifests[transfer_id] = m
        return m

    def manifest_bytes(self, transfer_id: str) -> bytes:
        f = self._file(transfer_id)
        f.seek(0)
        prefix = f.read(len(MAGIC) + 4)
        return f.read(header_length(prefix) - len(prefix))

    def chunk(self, transfer_id: str, index: int) -> bytes:
        m = self.manifest(transfer_id)
        f = self._file(transfer_id)
        f.seek(self._heads[transfer_id] + index * m.chunk_size)
        return bytes(f.read(m.chunk_length(index)))

    def record_sent(self, counts: dict[str, tuple[int, int]]) -> None:
        """Add (chunks sent, of which resent) per transfer."""
        with self.store.write_lock, self.db.atomic():
            for tid, (sent, resent) in counts.items():
                self.db.execute(
                    "UPDATE transfers SET chunks_sent=chunks_sent+?, "
                    "chunks_resent=chunks_resent+?, first_sent_at=coalesce(first_sent_at, ?) "
                    "WHERE transfer_id=?",
                    [sent, resent, utcnow(), tid],
                )

    def record_acked(self, acked: dict[str, RangeSet]) -> None:
        with self.store.write_lock, self.db.atomic():
            for tid, ranges in acked.items():
                self.db.execute(
                    "UPDATE transfers SET acked=? WHERE transfer_id=? AND state='sending'",
                    [json.dumps(ranges.to_json()), tid],
                )

    def carries_rests(self, transfer_id: str) -> bool:
        """Whether the transfer sends records that complete previews (which the hub
        can decode only with those previews)."""
        return any(e.codec == "dicom-j2k-rest" for e in self.manifest(transfer_id).instances)

    def abandon(self, transfer_id: str, why: str) -> None:
        """Give up a transfer still sending: its instances are packed again in a new
        transfer (whole: the records that complete previews go once), and its pack
        file goes. Nothing is lost: the instances stay in the store until delivered."""
        row = self.db.execute(
            "SELECT study_uid, pack_path FROM transfers WHERE transfer_id=? AND state='sending'",
            [transfer_id],
        ).fetchone()
        if row is None:
            return
        with self.store.write_lock, self.db.atomic():
            self.db.execute("DELETE FROM transfer_instances WHERE transfer_id=?", [transfer_id])
            self.db.execute(
                "UPDATE transfers SET state='abandoned' WHERE transfer_id=?", [transfer_id]
            )
            studies.move(self.db, row[0], "ready", ("sending",))
        if (f := self._files.pop(transfer_id, None)) is not None:
            f.close()
        self._manifests.pop(transfer_id, None)
        (self.store.root / row[1]).unlink(missing_ok=True)
        log.warning("outbox: transfer %s of study %s given up (%s); its instances are packed "
                    "again", transfer_id, row[0], why)  # fmt: skip

    def verified(self, transfer_id: str, acked: RangeSet) -> None:
        """The hub verified every instance of the transfer: its pack file goes, and the
        study is delivered if nothing else of it is pending."""
        row = self.db.execute(
            "SELECT study_uid, pack_path FROM transfers WHERE transfer_id=?", [transfer_id]
        ).fetchone()
        if row is None:
            return
        with self.store.write_lock, self.db.atomic():
            self.db.execute(
                "UPDATE transfers SET state='verified', verified_at=?, acked=? "
                "WHERE transfer_id=? AND state='sending'",
                [utcnow(), json.dumps(acked.to_json()), transfer_id],
            )
        f = self._files.pop(transfer_id, None)
        if f is not None:
            f.close()
        self._manifests.pop(transfer_id, None)
        try:
            os.unlink(self.store.root / row[1])
        except FileNotFoundError:
            pass
        log.info("transfer %s of study %s verified at the hub", transfer_id, row[0])
        self.settle(row[0])


def forget_carried(db: Any, study_uid: str) -> None:
    """Every instance of the study unsent again (``edge.resend``); its transfers stay."""
    db.execute(
        "DELETE FROM transfer_instances WHERE instance_id IN "
        "(SELECT id FROM instances WHERE study_uid=?)",
        [study_uid],
    )


def backlog(db: Any) -> dict[str, Any]:
    """Studies not yet delivered, their bytes, and the oldest one's arrival."""
    row = db.execute(
        """SELECT count(*), min(first_received) FROM studies
           WHERE state IN ('receiving', 'ready', 'sending')"""
    ).fetchone()
    pending_bytes = db.execute(
        """SELECT coalesce(sum(i.size), 0) FROM instances i WHERE NOT EXISTS
               (SELECT 1 FROM transfer_instances ti JOIN transfers t
                    ON t.transfer_id = ti.transfer_id
                WHERE ti.instance_id = i.id AND t.state = 'verified')"""
    ).fetchone()[0]
    return {
        "backlog_studies": row[0],
        "backlog_bytes": pending_bytes,
        "oldest_pending": row[1],
    }
