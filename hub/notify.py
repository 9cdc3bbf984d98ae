"""Messages to people about a critical result (hub/critical.py queues them): an SMS
through an SMS gateway's HTTP interface (Kannel's ``sendsms``; ``[sms] url``) and an
e-mail over SMTP (``[smtp] host``), in the person's language, carrying no more of the
patient than ``critical.patient_data`` allows: ``none`` (the clinic and the modality
only), ``initials`` (the default: initials and the impression) or ``name``.

``send_due`` sends what is pending: each message is claimed by the UPDATE that counts
its attempt (another process never sends it too), sent, and marked sent, or tried again
later (30 s, doubling) up to ``MAX_ATTEMPTS``; each outcome is audited."""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.parse
import urllib.request
from email.message import EmailMessage
from typing import Any

from common.clock import utcnow
from hub.access import audit
from hub.store import FileHubStore

log = logging.getLogger("radsetu.hub")

MAX_ATTEMPTS = 5
RETRY_SECONDS = 30.0

WORDS = {
    "en": ("RadSetu CRITICAL finding: {what} at {clinic}{patient}.{finding} "
           "Reply YES {code} once you have acted on it{link}."),
    "hi": ("RadSetu गंभीर निष्कर्ष: {clinic} में {what}{patient}।{finding} "
           "कार्रवाई के बाद YES {code} लिखकर जवाब दें{link}।"),
    "kn": ("RadSetu ಗಂಭೀರ ಫಲಿತಾಂಶ: {clinic} ನಲ್ಲಿ {what}{patient}.{finding} "
           "ಕ್ರಮ ಕೈಗೊಂಡ ನಂತರ YES {code} ಎಂದು ಉತ್ತರಿಸಿ{link}."),
}  # fmt: skip
PATIENT = {"en": ", patient {}", "hi": ", रोगी {}", "kn": ", ರೋಗಿ {}"}
LINK = {"en": " or open {}", "hi": " या {} खोलें", "kn": " ಅಥವಾ {} ತೆರೆಯಿರಿ"}


class NotifyError(Exception):
    """A gateway or mail server refused or could not be reached; the message waits."""


def _initials(name: str) -> str:
    return "".join(f"{w[0]}." for w in name.replace("^", " ").split() if w)


def compose(n: dict[str, Any], facts: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The message for notification ``n`` about ``facts`` (the study and its result)."""
    lang = n["language"] if n["language"] in WORDS else "en"
    policy = facts["patient_data"] or cfg["critical"]["patient_data"]  # the clinic's, if set
    patient = ""
    if policy in ("initials", "name") and facts["patient_name"]:
        who = facts["patient_name"] if policy == "name" else _initials(facts["patient_name"])
        patient = PATIENT[lang].format(who)
    finding = f" {facts['impression'][:160]}" if policy != "none" and facts["impression"] else ""
    base = cfg["critical"]["public_url"].rstrip("/")
    link = LINK[lang].format(f"{base}/c/{n['token']}") if base and n["token"] else ""
    what = " ".join(x for x in (facts["modality"], facts["description"]) if x) or "a study"
    clinic = facts["clinic"] or facts["box_id"]
    return WORDS[lang].format(
        what=what, clinic=clinic, patient=patient, finding=finding, code=facts["code"], link=link
    )


def send_sms(sms: dict[str, Any], to: str, text: str) -> None:
    query = {"username": sms["username"], "password": sms["password"], "from": sms["sender"],
             "to": to, "text": text, "charset": "UTF-8"}  # fmt: skip
    if not text.isascii():
        query["coding"] = "2"  # UCS-2 on the air: Devanagari and Kannada
    url = f"{sms['url']}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - the configured gateway
            answer = r.read(500).decode(errors="replace")
    except OSError as exc:
        raise NotifyError(f"SMS gateway: {exc}") from exc
    if r.status not in (200, 202):
        raise NotifyError(f"SMS gateway answered {r.status}: {answer}")


def send_email(smtp: dict[str, Any], to: str, subject: str, text: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = smtp["sender"], to, subject
    msg.set_content(text)
    try:
        with smtplib.SMTP(smtp["host"], int(smtp["port"]), timeout=10) as s:
            if smtp["starttls"]:
                s.starttls()
            if smtp["username"]:
                s.login(smtp["username"], smtp["password"])
            s.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        raise NotifyError(f"mail server: {exc}") from exc


FACTS = ("code", "box_id", "study_uid", "patient_name", "modality", "description", "impression")


def _facts(store: FileHubStore, report_id: str) -> dict[str, Any]:
    row = store.db.execute(
        "SELECT c.code, c.box_id, c.study_uid, s.patient_name, s.modality, s.description, "
        "r.impression, b.status FROM critical_results c "
        "JOIN hub_studies s ON s.study_uid = c.study_uid "
        "JOIN reports r ON r.report_id = c.report_id AND r.version = 1 "
        "LEFT JOIN boxes b ON b.box_id = c.box_id WHERE c.report_id=?",
        [report_id],
    ).fetchone()
    facts = dict(zip(FACTS, row[:-1], strict=True))
    status = json.loads(row[-1] or "{}")
    facts["clinic"] = str(status.get("clinic") or "")
    facts["patient_data"] = str(status.get("patient_data") or "")  # checked by wire/
    return facts


def queue(
    store: FileHubStore, report_id: str, role: str, contact: dict[str, str], token: str
) -> None:
    """An SMS and an e-mail to ``contact`` (whichever they have), pending."""
    for channel, to in (("sms", contact.get("mobile")), ("email", contact.get("email"))):
        if to:
            store.db.execute(
                "INSERT INTO notifications(report_id, channel, recipient, name, language, "
                "role, token, state, attempts, created_at) VALUES (?,?,?,?,?,?,?,'pending',0,?)",
                [report_id, channel, to, contact.get("name", ""),
                 contact.get("language", "en"), role, token, utcnow()],
            )  # fmt: skip


def due(store: FileHubStore, now: float) -> list[dict[str, Any]]:
    rows = store.db.query(
        "SELECT * FROM notifications WHERE state='pending' AND attempts < ? "
        "AND (next_try IS NULL OR next_try <= ?) ORDER BY id LIMIT 50",
        [MAX_ATTEMPTS, now],
    )
    return [dict(r) for r in rows]


def send_due(store: FileHubStore, cfg: dict[str, Any], now: float) -> int:
    """Send each pending message once (claimed first); returns how many went."""
    sent = 0
    for n in due(store, now):
        wait = RETRY_SECONDS * 2 ** n["attempts"]
        if not store.db.execute(
            "UPDATE notifications SET attempts=attempts+1, next_try=? "
            "WHERE id=? AND state='pending' AND attempts=?",
            [now + wait, n["id"], n["attempts"]],
        ).rowcount:
            continue  # another process has it
        sent += _send_one(store, cfg, n)
    return sent


def _send_one(store: FileHubStore, cfg: dict[str, Any], n: dict[str, Any]) -> int:
    facts = _facts(store, n["report_id"])
    text = compose(n, facts, cfg)
    to, what = n["recipient"], f"{n['channel']} to {n['name']} ({n['role']}) {n['recipient']}"
    try:
        if n["channel"] == "sms":
            if not cfg["sms"]["url"]:
                raise NotifyError("no SMS gateway configured ([sms] url)")
            send_sms(cfg["sms"], to, text)
        else:
            if not cfg["smtp"]["host"]:
                raise NotifyError("no mail server configured ([smtp] host)")
            send_email(cfg["smtp"], to, f"RadSetu: critical finding ({facts['modality']})", text)
    except NotifyError as exc:
        last = n["attempts"] + 1 >= MAX_ATTEMPTS
        store.db.execute(
            "UPDATE notifications SET last_error=?, state=? WHERE id=?",
            [str(exc)[:300], "failed" if last else "pending", n["id"]],
        )
        log.warning("critical result of report %s: %s failed: %s", n["report_id"], what, exc)
        detail = f"report {n['report_id']}: {what}: {exc}"
        audit(store, "critical_failed", facts["study_uid"], detail[:500])
        return 0
    store.db.execute(
        "UPDATE notifications SET state='sent', sent_at=?, last_error=NULL, token='' WHERE id=?",
        [utcnow(), n["id"]],
    )
    log.info("critical result of report %s: %s sent", n["report_id"], what)
    audit(store, "critical_sent", facts["study_uid"], f"report {n['report_id']}: {what}")
    return 1
