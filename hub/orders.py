"""The clinics' orders at the hub (``up/order``, wire/messages.py): what is coming to the
reading room before its images, STAT first. An order is expected until a study of its
clinic arrives with its Study UID or its accession number, or the clinic cancels it;
one not met within ``EXPECTED_HOURS`` is no longer listed (it stays in the table).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from common.clock import iso_ago, utcnow
from hub.store import FileHubStore
from wire.messages import OrderNotice

log = logging.getLogger("radsetu.hub.orders")
EXPECTED_HOURS = 48
# a message that comes late never takes an order back to an earlier state
_RANK = {"scheduled": 0, "in_progress": 1, "completed": 2, "discontinued": 2, "cancelled": 2}


def take(store: FileHubStore, box_id: str, notice: OrderNotice) -> bool:
    """Keep the box's order as it is now; False when what is kept is already later."""
    referrer = json.dumps(notice.referrer) if notice.referrer else None
    with store.db.atomic():
        row = store.db.execute(
            "SELECT state FROM clinic_orders WHERE box_id=? AND accession=?",
            [box_id, notice.accession],
        ).fetchone()
        if row is not None and _RANK.get(str(row[0]), 0) > _RANK[notice.state]:
            return False
        store.db.execute(
            """INSERT INTO clinic_orders(box_id, accession, study_uid, state, priority,
                   modality, body_part, question, patient_name, patient_id, referrer,
                   ordered_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT(box_id, accession) DO UPDATE SET study_uid=excluded.study_uid,
                   state=excluded.state, priority=excluded.priority,
                   modality=excluded.modality, body_part=excluded.body_part,
                   question=excluded.question, patient_name=excluded.patient_name,
                   patient_id=excluded.patient_id, referrer=excluded.referrer,
                   ordered_at=excluded.ordered_at, updated_at=excluded.updated_at""",
            [box_id, notice.accession, notice.study_uid, notice.state, notice.priority,
             notice.modality, notice.body_part, notice.question, notice.patient_name,
             notice.patient_id, referrer, notice.ordered_at, utcnow()],
        )  # fmt: skip
    log.info("box %s: order %s (%s, %s) is %s", box_id, notice.accession, notice.modality,
             notice.priority, notice.state)  # fmt: skip
    return True


def expected(store: FileHubStore, limit: int = 200) -> list[dict[str, Any]]:
    """Orders whose images are not in yet: STAT first, then the oldest order first."""
    rows = store.db.query(
        """SELECT * FROM clinic_orders o WHERE o.state <> 'cancelled' AND o.ordered_at >= ?
           AND NOT EXISTS (SELECT 1 FROM hub_studies s WHERE s.box_id = o.box_id
               AND s.study_uid IN (o.study_uid, o.study_uid || '~' || o.box_id))
           AND NOT EXISTS (SELECT 1 FROM hub_studies s WHERE s.box_id = o.box_id
               AND s.accession = o.accession)
           ORDER BY o.priority = 'stat' DESC, o.ordered_at LIMIT ?""",
        [iso_ago(EXPECTED_HOURS * 3600), limit],
    )
    out = []
    for r in rows:
        row = dict(r)
        row["referrer"] = json.loads(row["referrer"]) if row["referrer"] else None
        out.append(row)
    return out
