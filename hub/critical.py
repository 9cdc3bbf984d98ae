"""A critical result: the finding a radiologist flags critical must reach a person, who
confirms it. When such a report is signed (or an addendum flags it), a row in
``critical_results`` opens, with an SMS and an e-mail to the study's referring doctor
queued in ``notifications`` (sent by hub/notify.py; the clinic's on-call contact when the
clinic named no doctor). The doctor confirms by replying to the SMS with its code or by
following the link in the message; either closes the result, and both the hand-off and
the confirmation are in the audit log."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from common.clock import iso_ago, utcnow
from hub import notify, reading
from hub.access import audit
from hub.store import FileHubStore

CODE_DIGITS = 4


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _on_call(store: FileHubStore, box_id: str) -> dict[str, str] | None:
    """The clinic's on-call contact, from the box's last status (wire/contact.py)."""
    status = store.db.execute("SELECT status FROM boxes WHERE box_id=?", [box_id]).fetchone()
    on_call = json.loads(status[0] or "{}").get("on_call") if status else None
    return on_call if isinstance(on_call, dict) else None


def _contacts(store: FileHubStore, study_uid: str, box_id: str) -> list[tuple[str, dict[str, str]]]:
    """(role, contact) to tell: the study's referring doctor, else the clinic's on-call."""
    row = store.db.execute(
        "SELECT referrer FROM hub_studies WHERE study_uid=?", [study_uid]
    ).fetchone()
    if row and row[0]:
        return [("referrer", json.loads(row[0]))]
    on_call = _on_call(store, box_id)
    return [("on_call", on_call)] if on_call else []


def open_result(store: FileHubStore, report: dict[str, Any]) -> str | None:
    """In the signing transaction: open the report's critical result (once per report)
    and queue its messages; returns the confirmation link's token (the result keeps only
    its hash; a message holds it until it is sent)."""
    rid, study, box = report["report_id"], report["study_uid"], report["box_id"]
    if store.db.execute("SELECT 1 FROM critical_results WHERE report_id=?", [rid]).fetchone():
        return None
    token = secrets.token_urlsafe(24)
    code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
    now = utcnow()
    store.db.execute(
        "INSERT INTO critical_results(report_id, study_uid, box_id, code, token_sha256, "
        "state, opened_at) VALUES (?,?,?,?,?,'open',?)",
        [rid, study, box, code, _digest(token), now],
    )
    for role, contact in _contacts(store, study, box):
        notify.queue(store, rid, role, contact, token)
    return token


def find(store: FileHubStore, token: str) -> dict[str, Any] | None:
    """The open or closed result a link's token names, with its study's summary."""
    rows = list(
        store.db.query(
            "SELECT c.*, s.patient_name, s.modality, s.description, r.impression "
            "FROM critical_results c JOIN hub_studies s ON s.study_uid = c.study_uid "
            "JOIN reports r ON r.report_id = c.report_id AND r.version = 1 "
            "WHERE c.token_sha256=?",
            [_digest(token)],
        )
    )
    return dict(rows[0]) if rows else None


def confirm(store: FileHubStore, report_id: str, by: str, how: str, address: str = "") -> bool:
    """Close the result (the first confirmation counts); audited either way."""
    cur = store.db.execute(
        "UPDATE critical_results SET state='confirmed', confirmed_at=?, confirmed_by=?, "
        "confirmed_how=? WHERE report_id=? AND state='open'",
        [utcnow(), by[:100], how, report_id],
    )
    row = store.db.execute(
        "SELECT study_uid FROM critical_results WHERE report_id=?", [report_id]
    ).fetchone()
    if cur.rowcount and row:
        reading.mark(store, row[0], "critical_confirmed_at")
    action = "critical_confirmed" if cur.rowcount else "critical_confirmed_again"
    audit(store, action, row[0] if row else "", f"report {report_id}: {how}",
          user=by[:100] or "?", role="doctor", address=address)  # fmt: skip
    return bool(cur.rowcount)


def confirm_by_sms(store: FileHubStore, sender: str, text: str) -> str | None:
    """A reply "YES 1234" from a number a result's SMS went to: its report id, or None."""
    words = text.upper().replace(",", " ").split()
    codes = [w for w in words if w.isdigit() and len(w) == CODE_DIGITS]
    if not codes:
        return None
    row = store.db.execute(
        "SELECT c.report_id, n.name FROM critical_results c JOIN notifications n "
        "ON n.report_id = c.report_id AND n.channel='sms' AND n.recipient=? "
        "WHERE c.code=? AND c.state='open' ORDER BY c.opened_at DESC LIMIT 1",
        [sender, codes[0]],
    ).fetchone()
    if row is None:
        return None
    confirm(store, row[0], row[1] or sender, "sms reply", sender)
    return str(row[0])


def of_study(store: FileHubStore, study_uid: str) -> list[dict[str, Any]]:
    """The study's critical results with their messages' outcomes, for the reading page."""
    out = []
    for c in store.db.query(
        "SELECT report_id, state, opened_at, escalated_at, operators_at, confirmed_at, "
        "confirmed_by, confirmed_how FROM critical_results WHERE study_uid=? ORDER BY opened_at",
        [study_uid],
    ):
        c = dict(c)
        c["messages"] = [
            dict(n)
            for n in store.db.query(
                "SELECT channel, recipient, name, role, state, attempts, last_error, sent_at "
                "FROM notifications WHERE report_id=? ORDER BY id",
                [c["report_id"]],
            )
        ]
        out.append(c)
    return out


def escalate_due(store: FileHubStore, confirm_minutes: float) -> int:
    """Results still open, in two steps of ``confirm_minutes`` each: first the clinic's
    on-call contact gets the message too (with the code to reply; the link stays the
    doctor's), then the operators (an alert on the dashboard and in /metrics,
    hub/fleet.py); straight to the operators when there is no one else to tell. Each
    step is taken once, claimed by the update that marks it. Returns how many steps."""
    wait = iso_ago(confirm_minutes * 60)
    done = 0
    for rid, study, box in store.db.execute(
        "SELECT report_id, study_uid, box_id FROM critical_results "
        "WHERE state='open' AND escalated_at IS NULL AND opened_at < ?",
        [wait],
    ).fetchall():
        if _claim(store, rid, "escalated_at"):
            done += 1
            if not _to_on_call(store, rid, study, box, confirm_minutes):
                done += _to_operators(store, rid, study, "there is no one else to tell")
    for rid, study in store.db.execute(
        "SELECT report_id, study_uid FROM critical_results WHERE state='open' "
        "AND escalated_at < ? AND operators_at IS NULL",
        [wait],
    ).fetchall():
        done += _to_operators(store, rid, study, "the on-call contact did not confirm either")
    return done


def _claim(store: FileHubStore, report_id: str, column: str) -> bool:
    assert column in ("escalated_at", "operators_at")
    return bool(
        store.db.execute(
            f"UPDATE critical_results SET {column}=? WHERE report_id=? AND {column} IS NULL",
            [utcnow(), report_id],
        ).rowcount
    )


def _to_on_call(store: FileHubStore, rid: str, study: str, box: str, minutes: float) -> bool:
    """Queue the message for the on-call contact; False when there is none to tell (none
    named, or the one already told)."""
    contact = _on_call(store, box)
    told = {r[0] for r in store.db.execute(
        "SELECT recipient FROM notifications WHERE report_id=?", [rid]).fetchall()}  # fmt: skip
    if not contact or {contact.get("mobile"), contact.get("email")} & told:
        return False
    notify.queue(store, rid, "on_call", contact, "")
    audit(store, "critical_escalated", study,
          f"report {rid}: not confirmed in {minutes:g} min; to {contact['name']}")  # fmt: skip
    return True


def _to_operators(store: FileHubStore, rid: str, study: str, why: str) -> int:
    if not _claim(store, rid, "operators_at"):
        return 0
    audit(store, "critical_to_operators", study, f"report {rid}: not confirmed; {why}")
    return 1


def unconfirmed(store: FileHubStore, box_id: str) -> list[tuple[str, str, str]]:
    """(report, study, opened at) of the box's open results the operators must see."""
    rows = store.db.execute(
        "SELECT report_id, study_uid, opened_at FROM critical_results "
        "WHERE box_id=? AND state='open' AND operators_at IS NOT NULL ORDER BY opened_at",
        [box_id],
    ).fetchall()
    return [tuple(r) for r in rows]
