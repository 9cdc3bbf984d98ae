"""The clinic's referring doctors and its on-call contact, kept by the box's admin: a
name, a mobile number, an e-mail address and the language their messages go in.

A study's referring doctor is the one chosen on its page, else the one whose name
matches the DICOM Referring Physician's Name (0008,0090) the modality wrote: the same
words in any order and case, titles ("Dr") and punctuation aside, and only when one
doctor matches (two doctors of one name: nobody is guessed, the page asks). The doctor
travels with the study to the hub (`referrer`), where a critical finding goes to them.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

from common.clock import utcnow
from wire.contact import LANGUAGES, MAX_NAME, parse_contact
from wire.errors import RemoteProtocolError

TITLES = {"dr", "doctor", "prof", "mr", "mrs", "ms", "smt", "shri", "sri"}


class DoctorError(ValueError):
    """What the admin must fix in the form; the message says what."""


@dataclass(frozen=True)
class Doctor:
    id: int
    name: str
    mobile: str
    email: str
    language: str
    on_call: bool

    def contact(self) -> dict[str, str]:
        """What travels to the hub (wire/messages.py checks it there)."""
        return {
            k: v for k, v in asdict(self).items() if k in ("name", "mobile", "email", "language")
        }


def normalise_mobile(text: str) -> str:
    """A mobile number as E.164: spaces and dashes go; ten digits are an Indian number
    (+91); a leading 0 of a national number goes."""
    digits = re.sub(r"[\s().-]", "", text or "")
    if re.fullmatch(r"0?[6-9][0-9]{9}", digits):
        digits = "+91" + digits[-10:]
    return digits


def check(name: str, mobile: str, email: str, language: str) -> dict[str, str]:
    """The form's values, cleaned and checked as the hub will check them, or DoctorError
    saying what is wrong."""
    contact = {
        "name": " ".join((name or "").split()),
        "mobile": normalise_mobile(mobile),
        "email": (email or "").strip(),
        "language": language if language in LANGUAGES else "",
    }
    try:
        checked = parse_contact(contact, "the doctor")
    except RemoteProtocolError as exc:
        raise DoctorError(FORM_ERRORS.get(str(exc).split(": ", 1)[1].split()[0], str(exc))) from exc
    assert checked is not None
    return checked


# what the form says for each field the check refuses
FORM_ERRORS = {
    "name": f"the name must be 1 to {MAX_NAME} characters, without < or >",
    "mobile": "the mobile number must be like +91 98450 12345 (country code first)",
    "email": "the e-mail address is not one (name@example.in)",
    "neither": "give a mobile number or an e-mail address: a doctor must be reachable",
    "language": f"the language must be one of {', '.join(LANGUAGES)}",
}


def _row(r: Any) -> Doctor:
    return Doctor(r[0], r[1], r[2], r[3], r[4], bool(r[5]))


_COLUMNS = "id, name, mobile, email, language, on_call"


def listing(db: Any) -> list[Doctor]:
    """The doctors in use, the on-call contact first, then by name."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM doctors WHERE active=1 ORDER BY on_call DESC, name"
    ).fetchall()
    return [_row(r) for r in rows]


def get(db: Any, doctor_id: int) -> Doctor | None:
    r = db.execute(f"SELECT {_COLUMNS} FROM doctors WHERE id=?", [doctor_id]).fetchone()
    return _row(r) if r else None


def save(db: Any, form: dict[str, str], doctor_id: int | None = None) -> Doctor:
    """Add a doctor, or change one; ``on_call`` makes them the clinic's on-call contact
    (there is one: the previous one stops being it)."""
    c = check(form.get("name", ""), form.get("mobile", ""), form.get("email", ""),
              form.get("language", "en"))  # fmt: skip
    name, mobile, email, language = c["name"], c["mobile"], c["email"], c["language"]
    on_call = form.get("on_call") in ("on", "1", "true")
    with db.atomic():
        if on_call:
            db.execute("UPDATE doctors SET on_call=0 WHERE on_call=1")
        if doctor_id is None:
            cur = db.execute(
                "INSERT INTO doctors(name, mobile, email, language, on_call, active, created_at) "
                "VALUES (?,?,?,?,?,1,?)",
                [name, mobile, email, language, int(on_call), utcnow()],
            )
            doctor_id = int(cur.lastrowid)
        elif not db.execute(
            "UPDATE doctors SET name=?, mobile=?, email=?, language=?, on_call=? "
            "WHERE id=? AND active=1",
            [name, mobile, email, language, int(on_call), doctor_id],
        ).rowcount:
            raise DoctorError("no such doctor")
    found = get(db, doctor_id)
    assert found is not None
    return found


def remove(db: Any, doctor_id: int) -> bool:
    """Take a doctor off the list; studies that named them keep the name they had."""
    with db.atomic():
        return bool(
            db.execute(
                "UPDATE doctors SET active=0, on_call=0 WHERE id=? AND active=1", [doctor_id]
            ).rowcount
        )


def on_call(db: Any) -> Doctor | None:
    r = db.execute(f"SELECT {_COLUMNS} FROM doctors WHERE on_call=1 AND active=1").fetchone()
    return _row(r) if r else None


def _words(name: str) -> tuple[str, ...]:
    """A person's name as a sorted tuple of words: DICOM's ^ and any punctuation are
    spaces, case and titles do not count."""
    words = re.sub(r"[\^,.;:_'\"()-]", " ", name or "").casefold().split()
    return tuple(sorted(w for w in words if w not in TITLES))


def match(db: Any, dicom_name: str) -> Doctor | None:
    """The one doctor whose name is the DICOM name's, or None (none, or more than one)."""
    want = _words(dicom_name)
    if not want:
        return None
    found = [d for d in listing(db) if _words(d.name) == want]
    return found[0] if len(found) == 1 else None


def for_study(db: Any, chosen_id: int | None, dicom_name: str) -> Doctor | None:
    """The study's referring doctor: the one chosen on its page, else the DICOM match."""
    if chosen_id:
        try:
            chosen = get(db, int(chosen_id))
        except (ValueError, sqlite3.Error):
            chosen = None
        if chosen is not None:
            return chosen
    return match(db, dicom_name)
