"""The reading room's data: each verified study's summary, the worklist, claims,
subspecialty hand-offs and turnaround times."""

from __future__ import annotations

import json
import logging
import statistics
from datetime import datetime
from typing import Any

from common.clock import utcnow
from common.dicomfile import index_existing
from hub.errors import HubError
from hub.store import FileHubStore, through_broker
from wire.contact import parse_contact
from wire.errors import RemoteProtocolError
from wire.manifest import Manifest

log = logging.getLogger("radsetu.hub")

SUBSPECIALTIES = ("general", "neuro", "msk", "chest", "breast", "cardiac", "paediatric", "abdomen")

# the turnaround's steps: (name, from, to)
INTERVALS = (
    ("ordered_to_acquired", "ordered_at", "acquired_at"),
    ("box_to_hub", "received_at_box", "verified_at"),
    ("waiting_to_claim", "verified_at", "claimed_at"),
    ("claim_to_sign", "claimed_at", "signed_at"),
    ("hub_to_signed", "verified_at", "signed_at"),
    ("signed_to_box", "signed_at", "report_at_box_at"),
    ("box_to_printed", "report_at_box_at", "printed_at"),
    ("acquired_to_printed", "acquired_at", "printed_at"),
    ("ordered_to_printed", "ordered_at", "printed_at"),
    ("signed_to_critical_confirmed", "signed_at", "critical_confirmed_at"),
)


def _acquired(date: str, time: str) -> str | None:
    """DICOM StudyDate/StudyTime (the clinic's local time) as ISO, if they parse."""
    try:
        d = datetime.strptime(date.strip(), "%Y%m%d")
    except ValueError:
        return None
    t = time.strip().split(".")[0].ljust(6, "0")[:6]
    try:
        return d.replace(hour=int(t[0:2]), minute=int(t[2:4]), second=int(t[4:6])).isoformat()
    except ValueError:
        return d.isoformat()


def study_verified(store: FileHubStore, m: Manifest, key: str | None = None) -> None:
    """A transfer of the study was verified: note the study for the reading room (the
    first verification starts its waiting time; STAT from any transfer wins). ``key``:
    the hub's key for the study (hub/studykeys.py), its UID unless another box has it."""
    key = key or m.study_uid
    row = store.db.execute(
        "SELECT path FROM shown_instances WHERE study_uid=? ORDER BY stored_at LIMIT 1", [key]
    ).fetchone()
    with store.blobs.local(row[0]) as path:
        info, _ = index_existing(path)
    extra = m.extra if isinstance(m.extra, dict) else {}
    received = extra.get("first_received")
    reason = extra.get("priority_reason")
    store.db.execute(
        """INSERT INTO hub_studies(study_uid, box_id, patient_name, patient_id, modality,
               description, priority, priority_reason, acquired_at, received_at_box,
               verified_at)
           VALUES (:uid, :box, :name, :pid, :modality, :description, :priority, :reason,
               :acquired, :received, :now)
           ON CONFLICT(study_uid) DO UPDATE SET
               priority=CASE WHEN excluded.priority='stat' THEN 'stat'
                             ELSE hub_studies.priority END,
               priority_reason=CASE WHEN excluded.priority_reason != ''
                             THEN excluded.priority_reason ELSE hub_studies.priority_reason END""",
        {
            "uid": key,
            "box": m.box_id,
            "name": info.patient_name,
            "pid": info.patient_id,
            "modality": info.modality,
            "description": info.study_description or info.series_description,
            "priority": m.priority.value,
            "reason": reason if isinstance(reason, str) else "",
            "acquired": _acquired(info.study_date, info.study_time),
            "received": received if isinstance(received, str) else None,
            "now": utcnow(),
        },
    )
    _what_the_clinic_sent(store, key, m.box_id, extra, info.birth_date)
    _preview_state(store, key, m)
    hint = store.db.execute(
        "SELECT priority, clinical_note, referrer FROM study_hints WHERE study_uid=? AND box_id=?",
        [key, m.box_id],
    ).fetchone()
    if hint is not None:  # the clinic's word came before the study did
        clinic_update(store, m.box_id, key, hint[0], hint[1], json.loads(hint[2] or "null"))
        store.db.execute("DELETE FROM study_hints WHERE study_uid=?", [key])


def _preview_state(store: FileHubStore, key: str, m: Manifest) -> None:
    """The study is shown from a lossy preview while any instance shown is one."""
    lossy = store.db.execute(
        "SELECT count(*) FROM shown_instances WHERE study_uid=? AND lossy=1", [key]
    ).fetchone()[0]
    if not lossy:
        store.db.execute("UPDATE hub_studies SET preview_ratio=NULL WHERE study_uid=?", [key])
    elif m.preview is not None:
        ratio = m.preview.get("ratio")
        ratio = float(ratio) if isinstance(ratio, int | float) and 1 <= ratio <= 1000 else 0.0
        store.db.execute("UPDATE hub_studies SET preview_ratio=? WHERE study_uid=?", [ratio, key])


def preview_of(store: FileHubStore, study_uid: str) -> str | None:
    """ "JPEG 2000, up to 12:1" while the study is shown from its lossy preview."""
    row = store.db.execute(
        "SELECT preview_ratio FROM hub_studies WHERE study_uid=?", [study_uid]
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return f"JPEG 2000, up to {row[0]:.0f}:1" if row[0] else "JPEG 2000"


def _what_the_clinic_sent(
    store: FileHubStore, key: str, box_id: str, extra: dict[str, Any], birth_date: str
) -> None:
    """A verified study's details beside its images: the referring doctor, the birth
    date, the order it met, the clinical note (kept when the clinic wrote one first)."""
    referrer = _referrer(extra.get("referrer"), box_id, key)
    if referrer:
        store.db.execute("UPDATE hub_studies SET referrer=? WHERE study_uid=?", [referrer, key])
    if birth_date:
        store.db.execute(
            "UPDATE hub_studies SET patient_birth_date=? WHERE study_uid=?", [birth_date[:8], key]
        )
    order = _order(extra.get("order"))
    if order:
        store.db.execute(
            "UPDATE hub_studies SET accession=?, ordered_at=? WHERE study_uid=?",
            [order[0], order[1], key],
        )
    note = extra.get("clinical_note")
    if isinstance(note, str) and note:
        store.db.execute(
            "UPDATE hub_studies SET clinical_note=? WHERE study_uid=? AND clinical_note=''",
            [note[:1000], key],
        )


def clinic_update(
    store: FileHubStore,
    box_id: str,
    study_uid: str,
    priority: str,
    note: str,
    referrer: dict[str, str] | None = None,
) -> bool:
    """The clinic marked the study STAT, wrote its clinical note or named its referring
    doctor (``up/study``, checked by wire/messages.py). A study not here yet keeps the
    word until it comes. Returns whether the study is here."""
    if priority not in ("stat", "routine"):
        raise ValueError(f"priority {priority!r}")
    who = json.dumps(referrer, ensure_ascii=False) if referrer else ""
    cur = store.db.execute(
        "UPDATE hub_studies SET clinical_note=?, referrer=?, "
        "priority=CASE WHEN ?='stat' THEN 'stat' ELSE priority END, "
        "priority_reason=CASE WHEN ?='stat' AND priority!='stat' THEN 'marked by the clinic' "
        "ELSE priority_reason END WHERE study_uid=? AND box_id=?",
        [note[:1000], who, priority, priority, study_uid, box_id],
    )
    if cur.rowcount:
        return True
    store.db.execute(
        "INSERT INTO study_hints(study_uid, box_id, priority, clinical_note, referrer, at) "
        "VALUES (?,?,?,?,?,?) ON CONFLICT(study_uid) DO UPDATE SET priority=excluded.priority, "
        "clinical_note=excluded.clinical_note, referrer=excluded.referrer, at=excluded.at",
        [study_uid, box_id, priority, note[:1000], who, utcnow()],
    )
    return False


def _order(value: Any) -> tuple[str, str] | None:
    """(accession number, ordered at) of a manifest's ``extra.order``; None when it is
    missing or not a sane one (logged neither: an old box sends none)."""
    if not isinstance(value, dict):
        return None
    acc, at = value.get("accession"), value.get("ordered_at")
    if not isinstance(acc, str) or not isinstance(at, str) or len(acc) > 16 or len(at) > 40:
        return None
    try:
        datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return acc, at


def _referrer(value: Any, box_id: str, study_uid: str) -> str:
    """The manifest's referring doctor as JSON, or '' (none, or one that fails the
    check: logged, and the study goes on without it)."""
    try:
        contact = parse_contact(value, "manifest: referrer")
    except RemoteProtocolError as exc:
        log.warning("box %s, study %s: %s (the study goes on without it)", box_id, study_uid, exc)
        return ""
    return json.dumps(contact, ensure_ascii=False) if contact else ""


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    try:
        ta = datetime.fromisoformat(a.replace("Z", "+00:00"))
        tb = datetime.fromisoformat(b.replace("Z", "+00:00"))
    except ValueError:
        return None
    if (ta.tzinfo is None) != (tb.tzinfo is None):  # local DICOM time against UTC
        ta, tb = ta.replace(tzinfo=None), tb.replace(tzinfo=None)
    return (tb - ta).total_seconds()


def worklist(
    store: FileHubStore,
    modality: str = "",
    clinic: str = "",
    subspecialty: str = "",
    include_reported: bool = False,
) -> list[dict[str, Any]]:
    """Studies to read: STAT first, then the longest waiting first."""
    where, args = [], []
    if not include_reported:
        where.append("signed_at IS NULL")
    for col, value in (("modality", modality), ("box_id", clinic), ("subspecialty", subspecialty)):
        if value:
            where.append(f"{col} = ?")
            args.append(value)
    q = "SELECT * FROM hub_studies"
    if where:
        q += " WHERE " + " AND ".join(where)
    q += " ORDER BY priority='stat' DESC, verified_at"
    now = utcnow()
    out = []
    for row in store.db.query(q, args):
        row = _parsed(dict(row))
        row["waiting_seconds"] = _seconds(row["verified_at"], now)
        reason = row.pop("priority_reason") if row["priority"] == "stat" else ""
        row["clinical_note"] = row["clinical_note"] or reason
        out.append(row)
    return out


def reading_study(store: FileHubStore, study_uid: str) -> dict[str, Any]:
    rows = list(store.db.query("SELECT * FROM hub_studies WHERE study_uid=?", [study_uid]))
    if not rows:
        raise HubError(f"study {study_uid} is not in the reading room", 404)
    return _parsed(dict(rows[0]))


def _parsed(row: dict[str, Any]) -> dict[str, Any]:
    """A hub_studies row for the API and the pages: the referring doctor as an object."""
    row["referrer"] = json.loads(row["referrer"]) if row.get("referrer") else None
    return row


def claim(store: FileHubStore, study_uid: str, radiologist: str) -> dict[str, Any]:
    if not radiologist.strip():
        raise HubError("a claim needs the radiologist's name")
    cur = store.db.execute(
        "UPDATE hub_studies SET claimed_by=?, claimed_at=coalesce(claimed_at, ?) "
        "WHERE study_uid=? AND (claimed_by IS NULL OR claimed_by=?)",
        [radiologist, utcnow(), study_uid, radiologist],
    )
    if not cur.rowcount:
        s = reading_study(store, study_uid)
        raise HubError(f"{s['claimed_by']} is reading this study", 409)
    s = reading_study(store, study_uid)
    store.db.execute(  # the clinic's page shows "being read"
        "INSERT INTO notices(box_id, study_uid, state, created_at) VALUES (?,?,?,?)",
        [s["box_id"], study_uid, "being read", utcnow()],
    )
    return s


def release(store: FileHubStore, study_uid: str, radiologist: str) -> dict[str, Any]:
    s = reading_study(store, study_uid)
    if s["claimed_by"] not in (None, radiologist):
        raise HubError(f"only {s['claimed_by']} can release this study", 409)
    store.db.execute("UPDATE hub_studies SET claimed_by=NULL WHERE study_uid=?", [study_uid])
    return reading_study(store, study_uid)


def assign(
    store: FileHubStore, study_uid: str, subspecialty: str, radiologist: str = ""
) -> dict[str, Any]:
    """Pass a study on (for a second opinion, or to a subspecialty): the claim goes."""
    if subspecialty not in SUBSPECIALTIES:
        raise HubError(f"subspecialty must be one of {', '.join(SUBSPECIALTIES)}")
    reading_study(store, study_uid)
    store.db.execute(
        "UPDATE hub_studies SET subspecialty=?, assigned_to=?, claimed_by=NULL WHERE study_uid=?",
        [subspecialty, radiologist or None, study_uid],
    )
    return reading_study(store, study_uid)


def mark(store: FileHubStore, study_uid: str, column: str) -> None:
    """Record the first time a study reached a turnaround step."""
    assert column in {"signed_at", "report_at_box_at", "printed_at", "critical_confirmed_at"}
    store.db.execute(
        f"UPDATE hub_studies SET {column}=coalesce({column}, ?) WHERE study_uid=?",
        [utcnow(), study_uid],
    )


def turnaround(store: FileHubStore, study_uid: str) -> dict[str, Any]:
    s = reading_study(store, study_uid)
    return {
        "study_uid": study_uid,
        "times": {
            k: s[k]
            for k in (
                "ordered_at",
                "acquired_at",
                "received_at_box",
                "verified_at",
                "claimed_at",
                "signed_at",
                "report_at_box_at",
                "printed_at",
                "critical_confirmed_at",
            )
        },
        "seconds": {name: _seconds(s[a], s[b]) for name, a, b in INTERVALS},
    }


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def turnaround_summary(store: FileHubStore) -> list[dict[str, Any]]:
    """Per clinic and priority: count, median and 90th percentile of each step."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in store.db.query("SELECT * FROM hub_studies"):
        groups.setdefault((row["box_id"], row["priority"]), []).append(dict(row))
    out = []
    for (clinic, priority), rows in sorted(groups.items()):
        steps = {}
        for name, a, b in INTERVALS:
            vals = [v for r in rows if (v := _seconds(r[a], r[b])) is not None]
            steps[name] = (
                {"n": len(vals), "median": statistics.median(vals), "p90": _percentile(vals, 0.9)}
                if vals
                else {"n": 0, "median": None, "p90": None}
            )
        out.append({"clinic": clinic, "priority": priority, "studies": len(rows), "seconds": steps})
    return out


def unsent_notices(
    store: FileHubStore, limit: int = 100, broker: str | None = None, primary: bool = True
) -> list[tuple[int, str, str, str]]:
    """(id, box, study, state) of the notices not yet handed to the broker, for the
    boxes on ``broker`` (store.through_broker)."""
    on_broker, args = through_broker(broker, primary)
    rows = store.db.execute(
        "SELECT n.id, n.box_id, n.study_uid, n.state FROM notices n "
        f"LEFT JOIN boxes b ON b.box_id = n.box_id WHERE n.sent_at IS NULL{on_broker} "
        "ORDER BY n.id LIMIT ?",
        [*args, limit],
    ).fetchall()
    return [tuple(r) for r in rows]


def notice_sent(store: FileHubStore, notice_id: int) -> bool:
    """Mark a notice sent; False when another hub process marked it first (then this
    one does not send it)."""
    cur = store.db.execute(
        "UPDATE notices SET sent_at=? WHERE id=? AND sent_at IS NULL", [utcnow(), notice_id]
    )
    return bool(cur.rowcount == 1)
