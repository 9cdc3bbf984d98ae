"""Who may do what at the hub: every page and API call passes ``check()`` first.

A caller is known by the session cookie (the pages' login) or by an API token
(``Authorization: Bearer ...``, made with ``radsetu hub token add``). Each endpoint
names the roles that may use it in ``ROLES``; an endpoint missing there is refused to
everybody, so a new page cannot be left open by forgetting it. A request that changes
something with a session cookie must carry the CSRF token (the form's ``csrf`` field
or an ``X-CSRF-Token`` header); a token caller needs none (no browser sends it by
itself). Every action worth knowing lands in the append-only audit log.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from flask import (
    abort,
    current_app,
    g,
    has_request_context,
    redirect,
    request,
    session,
    url_for,
)

from common import sessions
from common.clock import iso_ago, utcnow
from common.passwords import csrf_sent
from common.reads import Recent, read_target
from hub.errors import HubError
from hub.store import FileHubStore

PUBLIC = ("public",)
READ = ("radiologist", "admin")
OPERATE = ("operator", "admin")
ANYONE = ("radiologist", "operator", "admin")
ADMIN = ("admin",)

# endpoint -> roles allowed; blueprint-wide defaults after the explicit ones
ROLES: dict[str, tuple[str, ...]] = {
    "ui.login": PUBLIC,
    "ui.logout": PUBLIC,
    "ui.password": ANYONE,
    "static": PUBLIC,
    "hub_api.boxes": OPERATE,
    "hub_api.transfers": OPERATE,
    "hub_api.fleet": OPERATE,
    "hub_api.audit": ADMIN,
    "ops.metrics": OPERATE,
    # a doctor with no account: the link's token, or the SMS gateway's key, is the check
    "confirm.link": PUBLIC,
    "ohif.asset": PUBLIC,
    "confirm.sms_inbound": PUBLIC,
}
BLUEPRINT_ROLES: dict[str, tuple[str, ...]] = {
    "hub_api": READ,
    "ui": READ,
    "dicomweb": READ,
    "clinic_dicomweb": READ,  # the same, narrowed to one clinic (hub/dicomweb.py)
    "ohif": READ,
    "ops": OPERATE,
    "admin": ADMIN,
}
OLD_TOKEN_DAYS = 90  # a token made before tokens had an expiry lasts this long
OPEN_WHILE_MUST_CHANGE = {"ui.password", "ui.logout", "static"}
MACHINE_PREFIXES = ("/api/", "/dicomweb/", "/metrics")


def roles_for(endpoint: str | None) -> tuple[str, ...] | None:
    if endpoint is None:
        return None
    if endpoint in ROLES:
        return ROLES[endpoint]
    return BLUEPRINT_ROLES.get(endpoint.split(".", 1)[0], ())


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_token(store: FileHubStore, username: str, label: str = "", days: float = 90) -> str:
    """A new API token for ``username``, good for ``days``; only its hash is kept, so it
    is shown once."""
    if store.db.execute("SELECT 1 FROM users WHERE username=?", [username]).fetchone() is None:
        raise ValueError(f"no user {username!r}: add the user first (radsetu hub user add)")
    if not 0 < days <= 3660:
        raise ValueError("a token is good for more than 0 and at most 3660 days")
    token = "rst_" + secrets.token_urlsafe(32)
    store.db.execute(
        "INSERT INTO api_tokens(token_sha256, username, label, created_at, expires) "
        "VALUES (?,?,?,?,?)",
        [token_hash(token), username, label, utcnow(), time.time() + days * 86400],
    )
    return token


def revoke_tokens(store: FileHubStore, username: str, label: str | None = None) -> int:
    """Delete ``username``'s API tokens (only the one labelled ``label`` when given)."""
    where, args = "username=?", [username]
    if label is not None:
        where, args = where + " AND label=?", [*args, label]
    return store.db.execute(f"DELETE FROM api_tokens WHERE {where}", args).rowcount


def _from_token(store: FileHubStore, header: str) -> tuple[str, str] | None:
    if not header.startswith("Bearer "):
        return None
    digest = token_hash(header[7:].strip())
    row = store.db.execute(
        "SELECT u.username, u.role FROM api_tokens t JOIN users u USING(username) "
        "WHERE t.token_sha256=? AND u.disabled=0 "
        "AND (t.expires > ? OR (t.expires IS NULL AND t.created_at > ?))",
        [digest, time.time(), iso_ago(OLD_TOKEN_DAYS * 86400)],
    ).fetchone()
    if row is None:
        return None
    store.db.execute(
        "UPDATE api_tokens SET last_used_at=? WHERE token_sha256=?", [utcnow(), digest]
    )
    return str(row[0]), str(row[1])


def session_user(store: FileHubStore) -> tuple[str, str] | None:
    """The live session's (user, role), the role as the accounts say now; a cookie
    whose session ended (logout, expiry, a new role or password, a disabled account)
    is cleared."""
    if not session.get("user"):
        return None
    who = sessions.lookup(store.db, str(session.get("sid", "")))
    if who is None or who.username != session["user"]:
        session.clear()
        return None
    if session.get("role") != who.role:
        session["role"] = who.role
    if who.must_change and request.endpoint not in OPEN_WHILE_MUST_CHANGE:
        g.must_change = True
    return who.username, who.role


def _machine() -> bool:
    return request.path.startswith(MACHINE_PREFIXES)


def _refuse(status: int, why: str) -> Any:
    if _machine() or request.authorization is not None:
        raise HubError(why, status)
    if status == 401:
        return redirect(url_for("ui.login", next=request.full_path.rstrip("?")))
    abort(status, why)


def check(store_for_request: Any) -> Any:
    """The app's ``before_request``: None to go on, else the refusal to send."""
    allowed = roles_for(request.endpoint)
    if allowed is None or allowed == PUBLIC:
        return None  # no such page (404 follows), or the login page itself
    auth = request.headers.get("Authorization", "")
    via = "token" if auth else "session"
    who = _from_token(store_for_request(), auth) if auth else None
    if who is None and not auth:
        who = session_user(store_for_request())
    if who is None:
        return _refuse(401, "log in, or send a valid API token (Authorization: Bearer ...)")
    g.user, g.role, g.via = who[0], who[1], via
    if g.get("must_change"):
        if _machine():
            raise HubError("change the password first (the hub's pages)", 403)
        return redirect(url_for("ui.password"))
    if who[1] not in allowed:
        audit(store_for_request(), "refused", detail=f"{request.method} {request.path}")
        return _refuse(403, f"a {who[1]} may not use {request.path}")
    if via == "session" and request.method not in ("GET", "HEAD", "OPTIONS"):
        if not csrf_sent(session, request.form, request.headers):
            return _refuse(400, "the form is stale or forged (no valid CSRF token): reload it")
    return None


READS = {  # endpoint -> audit action, for every GET that returns patient data
    "hub_api.studies": "list_studies",
    "hub_api.worklist": "list_studies",
    "hub_api.expected_orders": "list_orders",
    "ui.worklist": "list_studies",
    "hub_api.study": "read_study",
    "hub_api.study_reports": "read_reports",
    "hub_api.report": "read_report",
    "hub_api.rendered": "read_image",
    "hub_api.tags": "read_tags",
}


def audit_reads(store_for_request: Any, response: Any) -> Any:
    """The app's ``after_request``: a successful read of patient data (the API, the
    rendered images and tags, drafts, every DICOMweb call) gets an audit row,
    coalesced (common/reads.py). The viewer's page and report PDFs write their own."""
    endpoint = request.endpoint or ""
    is_dicomweb = endpoint.startswith(("dicomweb.", "clinic_dicomweb."))
    action = "dicomweb" if is_dicomweb else READS.get(endpoint)
    if action is None or request.method != "GET" or response.status_code >= 400:
        return response
    study_uid, detail = read_target(request.view_args)
    if action == "dicomweb" and study_uid:
        # a viewer opening a study (OHIF, Weasis): one "view" row, as the built-in one
        action, detail = "view", "dicomweb"
    key = (g.get("user", ""), action, study_uid, detail, request.remote_addr)
    if current_app.extensions.setdefault("radsetu.reads", Recent()).first(key):
        audit(store_for_request(), action, study_uid, detail)
    return response


def may_sign_on_preview() -> bool:
    """Whether this hub lets a report be signed while its study is shown from the lossy
    preview (``reading.sign_on_preview``; such a report says so)."""
    return bool(current_app.config["RADSETU"]["reading"]["sign_on_preview"])


def audit(
    store: FileHubStore, action: str, study_uid: str = "", detail: str = "", **who: str
) -> None:
    """Append one row: who (the request's user, or ``system``; or ``who``'s ``user``,
    ``role`` and ``address`` for a person with no account, such as a doctor confirming a
    critical result) did what, when, from where."""
    inside = has_request_context()
    user = who.get("user") or (g.get("user", "") if inside else "")
    role = who.get("role") or (g.get("role", "") if inside else "")
    address = who.get("address") or ((request.remote_addr or "") if inside else "")
    store.db.execute(
        "INSERT INTO audit(at, username, role, action, study_uid, detail, address) "
        "VALUES (?,?,?,?,?,?,?)",
        [utcnow(), user or "system", role, action, study_uid, detail[:500], address],
    )


def audit_rows(store: FileHubStore, limit: int = 500, action: str = "") -> list[dict[str, Any]]:
    where, args = ("WHERE action=?", [action]) if action else ("", [])
    return [
        dict(r)
        for r in store.db.query(
            f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?", [*args, limit]
        )
    ]
