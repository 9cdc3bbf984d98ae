"""The reading room's pages: log in, the worklist, and a study with its viewer and its
report. Server-rendered (Jinja autoescapes every value: a patient name holding HTML
shows as text), a little JavaScript for the viewer, no plug-in.
"""

from __future__ import annotations

import math
from datetime import timedelta
from functools import wraps
from typing import Any

import pydicom
from flask import (
    Blueprint,
    Flask,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from common import sessions
from common.passwords import csrf_sent, csrf_token, local_next
from hub import access, critical, measurements, ohif, orders, priors, reading, reports, stow, users
from hub.db import request_store as _store
from hub.errors import HubError
from hub.render import PRESETS
from hub.store import FileHubStore
from hub.templates import template

ui = Blueprint("ui", __name__, template_folder="pages")
SESSION_HOURS = 8


def _csrf() -> str:
    return csrf_token(session)


def _page(title: str, page: str, **ctx: Any) -> str:
    return render_template(page, title=title, csrf=_csrf(), **ctx)


@ui.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method != "POST":
        return _page("Log in", "login.html")
    # the only form open without a login, so hub/access.py does not check it
    if not csrf_sent(session, request.form, request.headers):
        abort(400, "the form is stale or forged (no valid CSRF token): reload the page")
    store = _store()
    name = request.form.get("username", "")[:64]
    role: str | None = None

    def check() -> bool:
        nonlocal role
        role = users.authenticate(store, name, request.form.get("password", ""))
        return role is not None

    done = sessions.log_in(store.db, name, request.remote_addr or "", check, SESSION_HOURS * 3600)
    if not done.sid:
        if not done.wait:
            access.audit(store, "login_failed", detail=done.named)
        if done.wait or done.locked_now:
            access.audit(store, "login_locked", detail=done.named)
        if done.wait:
            flash(f"Too many failed logins: try again in {math.ceil(done.wait / 60)} minutes.",
                  "error")  # fmt: skip
            return _page("Log in", "login.html"), 429
        flash("Wrong user name or password.", "error")
        return _page("Log in", "login.html")
    assert role is not None
    session.clear()
    session.permanent = True
    session.update(sid=done.sid, user=name, role=role)
    g.user, g.role = name, role
    access.audit(store, "login")
    home = url_for("ops.fleet_page" if role == "operator" else "ui.worklist")
    return redirect(local_next(request.args.get("next", "")) or home)


@ui.get("/logout")
def logout() -> Any:
    if session.get("sid"):
        sessions.end(_store().db, str(session["sid"]))
    session.clear()
    return redirect(url_for("ui.login"))


@ui.route("/account/password", methods=["GET", "POST"])
def password() -> Any:
    """Change one's own password (the current one first); every other session of the
    account ends, this browser gets a new one."""
    if request.method == "POST":
        store, user = _store(), str(session["user"])
        wrong, sid = sessions.change_password(
            store.db,
            user,
            request.form,
            lambda pw: users.authenticate(store, user, pw) is not None,
            lambda pw: users.set_password(store, user, pw),
            request.remote_addr or "",
            SESSION_HOURS * 3600,
        )
        if not wrong:
            session["sid"] = sid
            access.audit(store, "password_changed")
            flash("Password changed.", "ok")
            return redirect(url_for("ui.worklist"))
        flash(
            {
                "wrong_current": "The current password is wrong.",
                "differ": "The two new passwords differ.",
            }.get(wrong, wrong.removeprefix("unusable: ")),
            "error",
        )
    return _page("Change your password", "password.html")


@ui.get("/")
def worklist() -> Any:
    a = request.args
    studies = reading.worklist(
        _store(), a.get("modality", ""), a.get("clinic", ""), a.get("subspecialty", "")
    )
    return _page(
        "Worklist",
        "worklist.html",
        studies=studies,
        args=a,
        subs=reading.SUBSPECIALTIES,
        priors=priors.counts(_store(), studies),
        ohif=ohif.available(),
        expected=orders.expected(_store()),
    )


def _instances(store: FileHubStore, study_uid: str) -> list[dict[str, Any]]:
    out = []
    for (rel,) in store.db.execute(
        "SELECT path FROM shown_instances WHERE study_uid=?", [study_uid]
    ).fetchall():
        with store.blobs.open(rel) as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        if str(ds.get("SOPClassUID", "")) in stow.SR_CLASSES:
            continue  # measurements saved from a viewer: listed apart, not an image
        out.append(
            {
                "sop": str(ds.SOPInstanceUID),
                "key": (int(ds.get("SeriesNumber") or 0), int(ds.get("InstanceNumber") or 0)),
                "body_part": str(ds.get("BodyPartExamined", "")),
            }
        )
    out.sort(key=lambda x: x["key"])
    return out


@ui.get("/read/<study_uid>")
def read(study_uid: str) -> Any:
    store = _store()
    try:
        study = reading.reading_study(store, study_uid)
    except HubError:
        abort(404)
    found = reports.for_study(store, study_uid)
    report = found[-1] if found else None
    versions = [r for r in found if r["state"] == "signed"]
    instances = _instances(store, study_uid)
    body_part = instances[0]["body_part"] if instances else ""
    draft = report or {**template(study["modality"], body_part), "critical": False}
    access.audit(store, "view", study_uid)
    return _page(
        study["patient_name"],
        "read.html",
        study=study,
        report=report,
        draft=draft,
        instances=[{"sop": x["sop"]} for x in instances],
        presets=list(PRESETS),
        user=session["user"],
        versions=versions,
        subs=reading.SUBSPECIALTIES,
        tat=reading.turnaround(store, study_uid),
        critical=critical.of_study(store, study_uid),
        priors=priors.of_study(store, study_uid),
        measured=measurements.of_study(store, study_uid),
        ohif=ohif.available(),
        preview=reading.preview_of(store, study_uid),
        sign_on_preview=access.may_sign_on_preview(),
    )


def study_form(rule: str) -> Any:
    """A form posted about a study by a reader (hub/access.py has checked the role and
    the CSRF token): a refusal (HubError) is shown on the page, the action goes to
    the audit log, and the view returns the flash message and where to go (the study
    by default)."""

    def decorate(view: Any) -> Any:
        @ui.post(rule, endpoint=view.__name__)
        @wraps(view)
        def wrapped(study_uid: str) -> Any:
            target = url_for("ui.read", study_uid=study_uid)
            try:
                message, target = view(_store(), study_uid) or (None, target)
                action = view.__name__
                if action == "save_report" and request.form.get("action") == "sign":
                    action = "sign"
                access.audit(_store(), action, study_uid)
                if message:
                    flash(message, "ok")
            except HubError as exc:
                flash(str(exc), "error")
            return redirect(target)

        return wrapped

    return decorate


@study_form("/read/<study_uid>/claim")
def claim(store: FileHubStore, study_uid: str) -> Any:
    reading.claim(store, study_uid, session["user"])


@study_form("/read/<study_uid>/report")
def save_report(store: FileHubStore, study_uid: str) -> Any:
    body = {
        "findings": request.form.get("findings", ""),
        "impression": request.form.get("impression", ""),
        "radiologist": session["user"],
        "critical": request.form.get("critical") == "on",
    }
    found = reports.for_study(store, study_uid)
    if found and found[-1]["state"] == "draft":
        r = reports.update_draft(store, found[-1]["report_id"], body)
    else:
        r = reports.create_draft(store, study_uid, body)
    here = url_for("ui.read", study_uid=study_uid)
    if request.form.get("action") != "sign":
        return "Draft saved.", here
    reading.claim(store, study_uid, session["user"])
    reports.sign(store, r["report_id"], session["user"], on_preview=access.may_sign_on_preview())
    return "Signed: the report is on its way to the clinic.", here


@study_form("/read/<study_uid>/pass-on")
def pass_on(store: FileHubStore, study_uid: str) -> Any:
    sub = request.form.get("subspecialty", "")
    reading.assign(store, study_uid, sub)
    return f"Passed on to {sub}.", url_for("ui.worklist")


@study_form("/read/<study_uid>/addendum")
def addendum(store: FileHubStore, study_uid: str) -> Any:
    signed = [r for r in reports.for_study(store, study_uid) if r["state"] == "signed"]
    if not signed:
        raise HubError("sign the report before adding an addendum", 409)
    reports.add_addendum(
        store,
        signed[-1]["report_id"],
        {
            "findings": request.form.get("findings", ""),
            "radiologist": session["user"],
            "critical": request.form.get("critical") == "on",
        },
    )
    return "Addendum signed: it goes to the clinic too.", url_for("ui.read", study_uid=study_uid)


@ui.get("/turnaround")
def turnaround() -> Any:
    return _page(
        "Turnaround",
        "turnaround.html",
        groups=reading.turnaround_summary(_store()),
        steps=[name for name, _a, _b in reading.INTERVALS],
    )


def install(app: Flask, key: str) -> None:
    """Register the pages; ``key`` signs the session cookies (hub.users.session_key:
    one per hub, in its index); sessions expire after 8 hours."""
    app.secret_key = key
    app.config.update(
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.register_blueprint(ui)
