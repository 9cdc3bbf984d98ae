"""The doctor's side of a critical result, with no account at the hub: the page the
message's link opens (``/c/<token>``: the finding, and a form where the doctor gives
their name to confirm), and the SMS gateway's delivery of replies
(``/api/sms/inbound``, Kannel's ``get-url`` with ``[sms] inbound_key``)."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request

from common import sessions
from hub import access, critical
from hub.db import request_store

confirm = Blueprint("confirm", __name__, template_folder="pages")
# replies from one number that match no open result, within 15 minutes, before the
# number is not listened to for 15 minutes (a code is 1 in 10,000: a guesser gets 5)
SMS_GUESSES = 5


@confirm.route("/c/<token>", methods=["GET", "POST"])
def link(token: str) -> Any:
    """The token is the credential (24 random bytes, kept hashed); the page says only
    what the message said, and the confirmation names who confirmed."""
    if len(token) > 64:
        abort(404)
    store = request_store()
    found = critical.find(store, token)
    if found is None:
        abort(404)
    done = found["state"] == "confirmed"
    if request.method == "POST" and not done:
        name = " ".join(request.form.get("name", "").split())
        if not 0 < len(name) <= 100:
            return render_template("confirm.html", title="Critical finding", result=found,
                                   error="Give your name to confirm."), 400  # fmt: skip
        critical.confirm(store, found["report_id"], name, "link", request.remote_addr or "")
        found = critical.find(store, token)
    return render_template("confirm.html", title="Critical finding", result=found, error="")


@confirm.get("/api/sms/inbound")
def sms_inbound() -> Any:
    """A reply from a phone, as the gateway passes it on: ``key``, ``from``, ``text``."""
    key = current_app.config["RADSETU"]["sms"]["inbound_key"]
    if not key or not hmac.compare_digest(request.args.get("key", ""), key):
        abort(403)
    sender = request.args.get("from", "")[:20]
    text = request.args.get("text", "")[:500]
    store = request_store()
    throttle = f"sms:{sender}"
    # the gateway sends each answer back to the phone as an SMS
    if sessions.key_locked(store.db, throttle):
        return "RadSetu: too many replies that matched nothing; call the clinic.", 200
    done = critical.confirm_by_sms(store, sender, text)
    if done:
        sessions.key_cleared(store.db, throttle)
        return "RadSetu: thank you, the critical finding is confirmed.", 200
    if sessions.key_failed(store.db, throttle, SMS_GUESSES):
        access.audit(store, "sms_locked", detail=sender)
    return "RadSetu: no open critical finding matches this reply.", 200
