"""What the box kept but cannot send, and when it tries again.

An instance whose file is gone or no longer hashes to what was kept (``instance_id``
its row), or a study whose packing failed as a whole (``instance_id`` 0), is *held*:
the rest goes, and the held one is tried again after a growing back-off. The clinic's
page, the box's status (and so the fleet dashboard) and ``radsetu edge held`` show
them (docs/field-engineer.md, "Held instances")."""

from __future__ import annotations

import logging
import time
from typing import Any

from common.clock import utcnow
from edge import studies

log = logging.getLogger("radsetu.outbox")

HOLD_FIRST_SECONDS = 60.0
HOLD_MAX_SECONDS = 6 * 3600.0


def hold_delay(tries: int) -> float:
    """How long a held instance or study waits before the next try: 1 min, 2, 4... 6 h."""
    return min(HOLD_MAX_SECONDS, HOLD_FIRST_SECONDS * 2 ** max(0, tries - 1))


class Holds:
    """The ``held`` table's one writer."""

    def __init__(self, store: Any):
        """``store``: the box's Store (its connection and write lock)."""
        self.store = store
        self.db = store.db

    def hold(self, study_uid: str, instance_id: int, sop_instance_uid: str, reason: str) -> float:
        """Note that an instance (``instance_id`` 0: the whole study) could not be
        packed; returns the seconds until it is tried again (a growing back-off)."""
        now = utcnow()
        with self.store.write_lock, self.db.atomic():
            row = self.db.execute(
                "SELECT tries FROM held WHERE study_uid=? AND instance_id=?",
                [study_uid, instance_id],
            ).fetchone()
            tries = (row[0] if row else 0) + 1
            delay = hold_delay(tries)
            self.db.execute(
                """INSERT INTO held(study_uid, instance_id, sop_instance_uid, reason, first_at,
                       last_at, tries, next_try_ts) VALUES (?,?,?,?,?,?,?,?)
                   ON CONFLICT(study_uid, instance_id) DO UPDATE SET reason=excluded.reason,
                       last_at=excluded.last_at, tries=excluded.tries,
                       next_try_ts=excluded.next_try_ts""",
                [
                    study_uid,
                    instance_id,
                    sop_instance_uid,
                    reason[:500],
                    now,
                    now,
                    tries,
                    time.time() + delay,
                ],
            )
        return delay

    def release(self, study_uid: str, instance_ids: list[int]) -> None:
        with self.store.write_lock, self.db.atomic():
            self.db.conn.executemany(
                "DELETE FROM held WHERE study_uid=? AND instance_id=?",
                [(study_uid, i) for i in instance_ids],
            )

    def retry_due(self, now_ts: float | None = None) -> list[str]:
        """Studies whose held instances are due for another try go back to ready."""
        now_ts = time.time() if now_ts is None else now_ts
        with self.store.write_lock, self.db.atomic():
            uids = [
                r[0]
                for r in self.db.execute(
                    "SELECT DISTINCT h.study_uid FROM held h JOIN studies s "
                    "ON s.study_uid = h.study_uid WHERE h.instance_id != 0 "
                    "AND h.next_try_ts <= ? AND s.state = 'sending'",
                    [now_ts],
                ).fetchall()
            ]
            for uid in uids:
                studies.move(self.db, uid, "ready", ("sending",))
        return uids

    def hold_all(self, study_uid: str, held: list[Any]) -> None:
        """Hold each ``edge.sneakernet.Held`` of a pack (its source and reason)."""
        for h in held:
            delay = self.hold(study_uid, h.source.key or 0, h.source.sop_instance_uid, h.reason)
            log.error(
                "study %s instance %s cannot be sent: %s; the rest of the study goes, "
                "this one is tried again in %.0f min (docs/field-engineer.md: held instances)",
                study_uid,
                h.source.sop_instance_uid,
                h.reason,
                delay / 60,
            )


MAX_LISTED_HELD = 10


def held_summary(db: Any) -> dict[str, Any]:
    """What cannot be sent and why, for the box's status and its page: counts, and the
    first few held instances (or studies) with their reasons."""
    rows = db.execute(
        "SELECT study_uid, sop_instance_uid, reason, tries, first_at, instance_id FROM held "
        "ORDER BY first_at LIMIT ?",
        [MAX_LISTED_HELD],
    ).fetchall()
    counts = db.execute(
        "SELECT count(*), count(DISTINCT study_uid), coalesce(sum(instance_id != 0), 0) FROM held"
    ).fetchone()
    return {
        "held_studies": counts[1],
        "held_instances": counts[2],
        "held": [
            {
                "study_uid": r[0],
                "sop_instance_uid": r[1],
                "reason": r[2],
                "tries": r[3],
                "since": r[4],
            }
            for r in rows
        ],
    }


def due_now(db: Any, instance_id: int | None = None) -> None:
    """Try a held instance (every one, without ``instance_id``) at the next round."""
    if instance_id is None:
        db.execute("UPDATE held SET next_try_ts=0")
    else:
        db.execute("UPDATE held SET next_try_ts=0 WHERE instance_id=?", [instance_id])
