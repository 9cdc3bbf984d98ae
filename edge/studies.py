"""The one writer of the ``studies`` table (and the ``patients`` and ``series`` rows a
study hangs from): its rows as instances arrive, its way through the states
(receiving -> ready -> sending -> delivered -> purged), what people change (STAT, the
clinical note) and what the hub says of it. Callers pass the connection and hold the
store's write lock where they already do."""

from __future__ import annotations

import time
from typing import Any

import sqlite_utils

from common.clock import utcnow
from common.dicomfile import InstanceInfo

STATES = ("receiving", "ready", "sending", "delivered", "purged")


def upsert(db: sqlite_utils.Database, info: InstanceInfo, stat: bool, now: str) -> None:
    """The patient, study and series rows an instance belongs to: made on its first
    instance, the study's arrival times and priority updated on each."""
    now_ts = time.time()
    patient_key = "|".join((info.patient_id, info.patient_name, info.birth_date))
    db.execute(
        "INSERT INTO patients(key, patient_id, name, birth_date, sex) "
        "VALUES (?,?,?,?,?) ON CONFLICT(key) DO NOTHING",
        [patient_key, info.patient_id, info.patient_name, info.birth_date, info.sex],
    )
    db.execute(
        """INSERT INTO studies(study_uid, patient_key, study_date, study_time,
               description, accession_number, state, priority, first_received,
               last_received, last_received_ts, referring_physician)
           VALUES (?,?,?,?,?,?,'receiving',?,?,?,?,?)
           ON CONFLICT(study_uid) DO UPDATE SET
               state='receiving', ready_at=NULL,
               referring_physician=CASE WHEN studies.referring_physician = ''
                   THEN excluded.referring_physician ELSE studies.referring_physician END,
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
            info.referring_physician,
        ],
    )
    db.execute(
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


def mark_ready(db: sqlite_utils.Database, quiet_since_ts: float) -> None:
    """Studies receiving nothing since ``quiet_since_ts`` become ready to send."""
    db.execute(
        "UPDATE studies SET state='ready', ready_at=? WHERE state='receiving' "
        "AND last_received_ts <= ?",
        [utcnow(), quiet_since_ts],
    )


def move(db: sqlite_utils.Database, study_uid: str, to: str, only_from: tuple[str, ...]) -> int:
    """Move a study to state ``to`` if it is in one of ``only_from``; the rows changed."""
    assert to in STATES and all(s in STATES for s in only_from)
    marks = ",".join("?" * len(only_from))
    extra = ", delivered_at=?" if to == "delivered" else ""
    args: list[Any] = [to, *([utcnow()] if to == "delivered" else []), study_uid, *only_from]
    cur = db.execute(
        f"UPDATE studies SET state=?{extra} WHERE study_uid=? AND state IN ({marks})", args
    )
    return int(cur.rowcount)


def send_again(db: sqlite_utils.Database, study_uid: str) -> int:
    """A delivered study back to ``ready`` (``edge.resend``), behind those ready now."""
    cur = db.execute(
        "UPDATE studies SET state='ready', ready_at=? WHERE study_uid=? AND state='delivered'",
        [utcnow(), study_uid],
    )
    return int(cur.rowcount)


def set_priority(db: sqlite_utils.Database, study_uid: str, priority: str, reason: str) -> bool:
    cur = db.execute(
        "UPDATE studies SET priority=?, priority_reason=?, update_pending=1 WHERE study_uid=?",
        [priority, reason, study_uid],
    )
    return bool(cur.rowcount)


def set_clinical(
    db: sqlite_utils.Database, study_uid: str, priority: str | None, note: str
) -> dict[str, bool]:
    """Mark a study STAT (``priority``; None leaves it) and set its clinical note; the
    change is queued for the hub (``update_pending``). Says what changed."""
    row = db.execute(
        "SELECT priority, clinical_note FROM studies WHERE study_uid=?", [study_uid]
    ).fetchone()
    if row is None:
        return {}
    changed = {"priority": bool(priority) and priority != row[0], "note": note != row[1]}
    if changed["priority"] or changed["note"]:
        db.execute(
            "UPDATE studies SET priority=coalesce(?, priority), "
            "priority_reason=CASE WHEN ? IS NOT NULL THEN 'marked by the clinic' "
            "ELSE priority_reason END, clinical_note=?, update_pending=1 WHERE study_uid=?",
            [priority, priority, note, study_uid],
        )
    return changed


def set_referrer(db: sqlite_utils.Database, study_uid: str, doctor_id: int | None) -> None:
    """The study's referring doctor as chosen on its page (None: the one its DICOM name
    matches); queued for the hub like a note."""
    db.execute(
        "UPDATE studies SET referrer_id=?, update_pending=1 WHERE study_uid=?",
        [doctor_id, study_uid],
    )


def apply_order(db: sqlite_utils.Database, study_uid: str, order: dict[str, Any]) -> None:
    """What the study's order says: STAT, the clinical question (unless the clinic
    wrote a note already) and the referring doctor (unless one was chosen)."""
    db.execute(
        "UPDATE studies SET priority=CASE WHEN ? THEN 'stat' ELSE priority END, "
        "priority_reason=CASE WHEN ? THEN 'STAT on the order' ELSE priority_reason END, "
        "clinical_note=CASE WHEN clinical_note = '' THEN ? ELSE clinical_note END, "
        "referrer_id=coalesce(referrer_id, ?), update_pending=1 WHERE study_uid=?",
        [order["stat"], order["stat"], order["question"], order["referrer_id"], study_uid],
    )


def update_sent(
    db: sqlite_utils.Database, study_uid: str, priority: str, note: str, referrer_id: int
) -> None:
    """The broker has the study's update: nothing is pending unless it changed since."""
    db.execute(
        "UPDATE studies SET update_pending=0 WHERE study_uid=? AND priority=? AND clinical_note=? "
        "AND coalesce(referrer_id, 0)=?",
        [study_uid, priority, note, referrer_id],
    )


def set_hub_state(db: sqlite_utils.Database, study_uid: str, state: str) -> None:
    """What the hub said of the study (a radiologist is reading it)."""
    db.execute(
        "UPDATE studies SET hub_state=?, hub_state_at=? WHERE study_uid=?",
        [state, utcnow(), study_uid],
    )
