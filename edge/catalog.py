"""Read-side queries over the box's index: what the API and the clinic's page show."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import sqlite_utils

_UID = re.compile(r"^[0-9.]{1,64}$")

_STUDY_SELECT = """
    SELECT s.study_uid, p.name AS patient_name, p.patient_id, s.study_date, s.study_time,
           s.description, s.accession_number, s.state, s.priority,
           s.first_received, s.last_received, s.ready_at, s.delivered_at, s.priority_reason,
           s.clinical_note, s.hub_state, s.referring_physician, s.referrer_id,
           (SELECT group_concat(DISTINCT modality) FROM series WHERE study_uid=s.study_uid)
               AS modalities,
           (SELECT count(*) FROM instances WHERE study_uid=s.study_uid) AS instances,
           (SELECT coalesce(sum(size), 0) FROM instances WHERE study_uid=s.study_uid) AS bytes,
           (SELECT count(*) FROM instances WHERE study_uid=s.study_uid AND flagged IS NOT NULL)
               AS flagged
    FROM studies s JOIN patients p ON p.key = s.patient_key
"""


def _study(row: dict[str, Any]) -> dict[str, Any]:
    mods = row.pop("modalities") or ""
    row["modalities"] = sorted(m for m in mods.split(",") if m)
    row["modality"] = "/".join(row["modalities"])
    row["received"] = row["last_received"]
    row["instance_count"] = row["instances"]
    return row


def list_studies(
    db: sqlite_utils.Database, limit: int = 500, since: str = ""
) -> list[dict[str, Any]]:
    """Studies newest first (received at ``since`` or later), with patient, modality,
    counts, bytes and state."""
    cur = db.execute(
        _STUDY_SELECT + " WHERE s.last_received >= ? ORDER BY s.last_received DESC LIMIT ?",
        [since, limit],
    )
    cols = [c[0] for c in cur.description]
    return [_study(dict(zip(cols, r, strict=True))) for r in cur.fetchall()]


def get_study(db: sqlite_utils.Database, study_uid: str) -> dict[str, Any] | None:
    """One study with each instance's identity, hash, size and transfer syntax."""
    cur = db.execute(_STUDY_SELECT + " WHERE s.study_uid = ?", [study_uid])
    cols = [c[0] for c in cur.description]
    row = cur.fetchone()
    if row is None:
        return None
    study = _study(dict(zip(cols, row, strict=True)))
    study["instances_list"] = [
        dict(r)
        for r in db.query(
            """SELECT i.sop_instance_uid, i.version, i.flagged, i.series_uid,
                      se.modality, i.sop_class_uid, i.transfer_syntax, i.instance_number,
                      i.sha256, i.size, i.source, i.received_at, h.reason AS held_reason
               FROM instances i JOIN series se ON se.series_uid = i.series_uid
               LEFT JOIN held h ON h.instance_id = i.id
               WHERE i.study_uid = ? ORDER BY i.series_uid, i.instance_number, i.id""",
            [study_uid],
        )
    ]
    # what cannot be sent and why (instance_id 0: the study as a whole)
    study["held"] = [
        dict(r)
        for r in db.query(
            "SELECT sop_instance_uid, reason, tries, first_at, last_at FROM held "
            "WHERE study_uid = ? ORDER BY instance_id",
            [study_uid],
        )
    ]
    return study


def transfers(
    db: sqlite_utils.Database, study_uid: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Transfers newest first: what each carries, how far the hub has acknowledged it."""
    where, args = ("WHERE study_uid = ?", [study_uid]) if study_uid else ("", [])
    rows = []
    for r in db.query(
        f"""SELECT transfer_id, study_uid, follow_up_of, state, chunk_count, chunk_size,
                   stream_bytes, payload_bytes, instance_count, acked, chunks_sent,
                   chunks_resent, created_at, first_sent_at, verified_at, coder_fallbacks,
                   coder_fallback_reasons, kind
            FROM transfers {where} ORDER BY seq DESC LIMIT ?""",
        [*args, limit],
    ):
        r = dict(r)
        # instances that went without the pixel coder, and why (uid -> reason)
        r["coder_fallback_reasons"] = json.loads(r["coder_fallback_reasons"] or "{}")
        ranges = json.loads(r.pop("acked"))
        r["chunks_acked"] = sum(e - s for s, e in ranges)
        rows.append(r)
    return rows


def purges(db: sqlite_utils.Database, limit: int = 200) -> list[dict[str, Any]]:
    """Studies deleted from the box after the hub verified them, and why."""
    return list(db.query("SELECT * FROM purges ORDER BY id DESC LIMIT ?", [limit]))


def repairs(db: sqlite_utils.Database, limit: int = 100) -> list[dict[str, Any]]:
    return list(db.query("SELECT * FROM repairs ORDER BY id DESC LIMIT ?", [limit]))


def valid_uid(uid: str) -> bool:
    return bool(_UID.match(uid))


def iso_ts(text: str | None) -> float | None:
    """Seconds since the epoch for one of the store's UTC timestamps."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
