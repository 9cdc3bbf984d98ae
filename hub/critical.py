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

from common.clock import utcnow
from hub import notify
from hub.access import audit
from hub.store import FileHubStore

CODE_DIGITS = 4


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _contacts(store: FileHubStore, study_uid: str, box_id: str) -> list[tuple[str, dict[str, str]]]:
    """(role, contact) to tell: the study's referring doctor, else the clinic's on-call."""
    row = store.db.execute(
        "SELECT referrer FROM hub_studies WHERE study_uid=?", [study_uid]
    ).fetchone()
    if row and row[0]:
        return [("referrer", json.loads(row[0]))]
    status = store.db.execute("SELECT status FROM boxes WHERE box_id=?", [box_id]).fetchone()
    on_call = json.loads(status[0] or "{}").get("on_call") if status else None
    return [("on_call", on_call)] if isinstance(on_call, dict) else []


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
        "SELECT report_id, state, opened_at, confirmed_at, confirmed_by, confirmed_how "
        "FROM critical_results WHERE study_uid=? ORDER BY opened_at",
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
