"""Orders: what reception registers before a patient goes to the modality, and the one
writer of the ``orders`` table.

An order names the patient (the name in Latin letters, and in the local script when
reception types it), the exam (modality, body part), the referring doctor, the clinical
question, and STAT. The box gives it an accession number and a Study Instance UID; the
modality fetches both from the box's worklist (edge/worklist.py) and writes them into
the images, so the study that arrives is found by its UID (or, when the modality kept
its own UID, by the accession number) and linked to its order: never by a name or a
guess. A study that matches no order can be linked to one by hand on its page.

An order's state: scheduled -> in progress (its first image is in, or the modality's
MPPS says it began: edge/mpps.py) -> done or stopped at the machine (MPPS) -> and then
the study's own way (received, at the hub, reported), read from the study it is linked
to.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydicom.uid import generate_uid

from common.clock import iso_ago, utcnow

MODALITIES = ("CR", "DX", "CT", "MR", "US", "MG", "XA", "NM", "PT", "OT")
SEXES = ("M", "F", "O")
MAX_NAME = 64  # a DICOM PN component group
MAX_QUESTION = 400
MAX_ID = 64
LATIN = re.compile(r"[A-Za-z][A-Za-z .'-]*")


class OrderError(ValueError):
    """What reception must fix in the form; the message says what."""


FORM_ERRORS = {
    "name_latin": f"the name in Latin letters is needed (1 to {MAX_NAME} letters, spaces, . ' -)",
    "name_local": f"the name in the local script must be at most {MAX_NAME} characters, "
    "without < > ^ = \\",
    "patient_id": f"the patient ID is needed (1 to {MAX_ID} letters, digits or - / .)",
    "sex": "choose the sex (M, F or O)",
    "birth": "give the birth date (YYYY-MM-DD) or the age in years (0 to 130), not a date "
    "in the future",
    "modality": "choose the modality",
    "body_part": "the body part must be letters and spaces (at most 16)",
    "question": f"the clinical question must be at most {MAX_QUESTION} characters",
    "referrer": "choose a doctor from the clinic's list",
}


def _clean(text: str) -> str:
    return " ".join((text or "").split())


def _birth(form: dict[str, str], today: dt.date) -> tuple[str, str]:
    """(DICOM birth date YYYYMMDD, DICOM age nnnY) from a date or an age."""
    raw, age = (form.get("birth_date") or "").strip(), (form.get("age") or "").strip()
    if raw:
        try:
            born = dt.date.fromisoformat(raw)
        except ValueError:
            raise OrderError(FORM_ERRORS["birth"]) from None
        if born > today or born.year < today.year - 130:
            raise OrderError(FORM_ERRORS["birth"])
        years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
        return born.strftime("%Y%m%d"), f"{years:03d}Y"
    if age.isdigit() and 0 <= int(age) <= 130:
        return "", f"{int(age):03d}Y"
    raise OrderError(FORM_ERRORS["birth"])


def check(
    form: dict[str, str], doctor_ids: set[int], today: dt.date, exams: list[str] | None = None
) -> dict[str, Any]:
    """The form's values, cleaned and checked, or OrderError saying what is wrong. An
    ``exam`` from the clinic's list (``exams``) stands for its modality and body part."""
    if form.get("exam"):
        if form["exam"] not in (exams or []):
            raise OrderError(FORM_ERRORS["modality"])
        modality, _, body = form["exam"].partition(" ")
        form = {**form, "modality": modality, "body_part": body}
    latin, local = _clean(form.get("name_latin", "")), _clean(form.get("name_local", ""))
    if not LATIN.fullmatch(latin) or len(latin) > MAX_NAME:
        raise OrderError(FORM_ERRORS["name_latin"])
    if len(local) > MAX_NAME or re.search(r"[<>^=\\]", local):
        raise OrderError(FORM_ERRORS["name_local"])
    pid = (form.get("patient_id") or "").strip()
    if not re.fullmatch(r"[A-Za-z0-9/.-]{1,64}", pid):
        raise OrderError(FORM_ERRORS["patient_id"])
    sex = form.get("sex", "")
    if sex not in SEXES:
        raise OrderError(FORM_ERRORS["sex"])
    birth, age = _birth(form, today)
    modality = form.get("modality", "")
    if modality not in MODALITIES:
        raise OrderError(FORM_ERRORS["modality"])
    body = _clean(form.get("body_part", "")).upper()
    if not re.fullmatch(r"[A-Z ]{0,16}", body):
        raise OrderError(FORM_ERRORS["body_part"])
    question = " ".join((form.get("question") or "").split())
    if len(question) > MAX_QUESTION:
        raise OrderError(FORM_ERRORS["question"])
    referrer: int | None = None
    if form.get("referrer"):
        try:
            referrer = int(form["referrer"])
        except ValueError:
            raise OrderError(FORM_ERRORS["referrer"]) from None
        if referrer not in doctor_ids:
            raise OrderError(FORM_ERRORS["referrer"])
    return {
        "name_latin": latin, "name_local": local, "patient_id": pid, "sex": sex,
        "birth_date": birth, "age": age, "modality": modality, "body_part": body,
        "question": question, "referrer_id": referrer,
        "stat": form.get("stat") in ("on", "1", "true"),
    }  # fmt: skip


def _accession(db: Any, today: dt.date) -> str:
    """``YYMMDD`` and a number of the day: 10 to 12 characters, under DICOM's 16."""
    day = today.strftime("%y%m%d")
    n = db.execute("SELECT count(*) FROM orders WHERE accession LIKE ?", [day + "%"]).fetchone()[0]
    return f"{day}{n + 1:04d}"


def create(db: Any, form: dict[str, str], doctor_ids: set[int], station_ae: str,
           user: str, now: dt.datetime | None = None,
           exams: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Register an order for today; returns it with its accession number and UID."""
    now = now or dt.datetime.now()
    v = check(form, doctor_ids, now.date(), exams)
    with db.atomic():
        acc = _accession(db, now.date())
        db.execute(
            """INSERT INTO orders(accession, study_uid, patient_id, name_latin, name_local,
                   sex, birth_date, age, modality, body_part, question, referrer_id, stat,
                   station_ae, scheduled_date, scheduled_time, state, created_by, created_at,
                   hub_pending)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'scheduled',?,?,1)""",
            [acc, generate_uid(), v["patient_id"], v["name_latin"], v["name_local"],
             v["sex"], v["birth_date"], v["age"], v["modality"], v["body_part"],
             v["question"], v["referrer_id"], int(v["stat"]), station_ae,
             now.strftime("%Y%m%d"), now.strftime("%H%M%S"), user, utcnow()],
        )  # fmt: skip
    found = get(db, acc)
    assert found is not None
    return found


def _rows(db: Any, where: str, args: list[Any]) -> list[dict[str, Any]]:
    cur = db.execute(f"SELECT * FROM orders WHERE {where}", args)
    names = [c[0] for c in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def get(db: Any, accession: str) -> dict[str, Any] | None:
    found = _rows(db, "accession=?", [accession])
    return found[0] if found else None


def scheduled(db: Any, date_from: str = "", date_to: str = "") -> list[dict[str, Any]]:
    """Orders still waiting for their study, scheduled between two DICOM dates (either
    may be open): what the worklist offers."""
    where, args = ["state = 'scheduled'"], []
    if date_from:
        where.append("scheduled_date >= ?")
        args.append(date_from)
    if date_to:
        where.append("scheduled_date <= ?")
        args.append(date_to)
    return _rows(db, " AND ".join(where) + " ORDER BY scheduled_date, scheduled_time", args)


def of_day(db: Any, day: dt.date) -> list[dict[str, Any]]:
    """A day's orders with the state of the study each is linked to, newest first."""
    cur = db.execute(
        """SELECT o.*, s.state AS study_state, s.hub_state AS hub_state,
                  (SELECT count(*) FROM reports r WHERE r.study_uid = o.linked_study)
                    AS reports
           FROM orders o LEFT JOIN studies s ON s.study_uid = o.linked_study
           WHERE o.scheduled_date = ? ORDER BY o.created_at DESC""",
        [day.strftime("%Y%m%d")],
    )
    names = [c[0] for c in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


PROGRESS = ("scheduled", "in progress", "done at the machine", "stopped at the machine",
            "received", "at the hub", "reported", "cancelled")  # fmt: skip


def progress(order: dict[str, Any]) -> str:
    """scheduled, in progress, received, at the hub, reported."""
    if order.get("reports"):
        return "reported"
    if order.get("study_state") == "delivered" or order.get("study_state") == "purged":
        return "at the hub"
    if order.get("study_state") in ("ready", "sending"):
        return "received"
    if order.get("state") == "cancelled":
        return "cancelled"
    if order.get("state") == "completed":
        return "done at the machine"
    if order.get("state") == "discontinued":
        return "stopped at the machine"
    if order.get("linked_study") or order.get("state") == "in_progress":
        return "in progress"
    return "scheduled"


def for_instance(db: Any, study_uid: str, accession: str) -> dict[str, Any] | None:
    """The order an arriving instance belongs to: by its Study UID, else by its
    accession number (a modality that kept its own UID), never by anything softer."""
    found = _rows(db, "study_uid=? OR linked_study=?", [study_uid, study_uid])
    if not found and accession:
        found = _rows(db, "accession=? AND linked_study IS NULL", [accession])
    return found[0] if found else None


def of_study(db: Any, study_uid: str) -> dict[str, Any] | None:
    """The order a study is linked to, if any."""
    found = _rows(db, "linked_study=?", [study_uid])
    return found[0] if found else None


def link(db: Any, accession: str, study_uid: str) -> bool:
    """Tie an order to the study that arrived for it (its first image, or by hand);
    True when it was tied now. An order tied to a study stays tied to it."""
    return bool(
        db.execute(
            "UPDATE orders SET linked_study=?, hub_pending=1, state=CASE WHEN "
            "state='scheduled' THEN 'in_progress' ELSE state END WHERE accession=? AND "
            "linked_study IS NULL AND state != 'cancelled'",
            [study_uid, accession],
        ).rowcount
    )


def performed(db: Any, accession: str, step_uid: str, state: str) -> bool:
    """What the modality's performed procedure step says of an order (MPPS): the step
    begins (in_progress), or ends (completed, discontinued). A step other than the
    order's own changes nothing."""
    return bool(
        db.execute(
            "UPDATE orders SET mpps_uid=?, state=?, hub_pending=1 WHERE accession=? AND "
            "(mpps_uid IS NULL OR mpps_uid=?) AND state != 'cancelled'",
            [step_uid, state, accession, step_uid],
        ).rowcount
    )


def cancel(db: Any, accession: str) -> bool:
    """Take a scheduled order off the worklist (the patient left, a wrong entry); an
    order that met its study cannot be cancelled."""
    return bool(
        db.execute(
            "UPDATE orders SET state='cancelled', hub_pending=1 WHERE accession=? "
            "AND state='scheduled' "
            "AND linked_study IS NULL",
            [accession],
        ).rowcount
    )


def of_step(db: Any, step_uid: str) -> dict[str, Any] | None:
    found = _rows(db, "mpps_uid=?", [step_uid])
    return found[0] if found else None


def unmatched_candidates(db: Any, day: dt.date) -> list[dict[str, Any]]:
    """Orders of a day no study has met yet, for linking by hand."""
    return _rows(
        db,
        "linked_study IS NULL AND state='scheduled' AND scheduled_date=? ORDER BY created_at",
        [day.strftime("%Y%m%d")],
    )


HUB_HOURS = 48  # an order older than this is no longer sent (the hub lists it no more)


def for_hub(db: Any, limit: int = 50) -> list[dict[str, Any]]:
    """Orders the hub has not yet kept as they are now, the oldest first."""
    return _rows(db, "hub_pending=1 AND created_at >= ? ORDER BY created_at LIMIT ?",
                 [iso_ago(HUB_HOURS * 3600), limit])  # fmt: skip


def hub_told(db: Any, accession: str, state: str) -> None:
    """The hub keeps the order as it was in ``state``: cleared unless it changed since."""
    db.execute("UPDATE orders SET hub_pending=0 WHERE accession=? AND state=?", [accession, state])
