"""The reading room's pages: log in, the worklist, and a study with its viewer and its
report. Server-rendered (Jinja autoescapes every value: a patient name holding HTML
shows as text), a little JavaScript for the viewer, no plug-in.
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import Any

import pydicom
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from hub import reading, reports, users
from hub.render import PRESETS
from hub.store import FileHubStore
from hub.templates import template

ui = Blueprint("ui", __name__, template_folder="pages")
READERS = ("radiologist", "admin")


def _store() -> FileHubStore:
    if "ui_store" not in g:
        g.ui_store = FileHubStore(current_app.config["RADSETU"].data_dir)
    return g.ui_store


@ui.teardown_app_request
def _close(_exc: BaseException | None) -> None:
    store = g.pop("ui_store", None)
    if store is not None:
        store.close()


def _csrf() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def _check_csrf() -> None:
    sent = request.form.get("csrf", "")
    if not sent or not secrets.compare_digest(sent, session.get("csrf", "")):
        abort(400, "the form is stale or forged (no valid CSRF token): reload the page")


def _page(title: str, page: str, **ctx: Any) -> str:
    return render_template(page, title=title, csrf=_csrf(), **ctx)


def reader_required(view: Any) -> Any:
    @wraps(view)
    def wrapped(*a: Any, **kw: Any) -> Any:
        if session.get("role") not in READERS:
            return redirect(url_for("ui.login", next=request.path))
        return view(*a, **kw)

    return wrapped


@ui.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "POST":
        _check_csrf()
        name = request.form.get("username", "")
        role = users.authenticate(_store(), name, request.form.get("password", ""))
        if role is None:
            current_app.logger.warning(
                "failed login for %r from %s", name[:64], request.remote_addr
            )
            flash("Wrong user name or password.", "error")
        else:
            session.clear()
            session.permanent = True
            session.update(user=name, role=role)
            nxt = request.args.get("next", "")
            return redirect(nxt if nxt.startswith("/") and not nxt.startswith("//") else "/")
    return _page("Log in", "login.html")


@ui.get("/logout")
def logout() -> Any:
    session.clear()
    return redirect(url_for("ui.login"))


@ui.get("/")
@reader_required
def worklist() -> Any:
    a = request.args
    studies = reading.worklist(
        _store(), a.get("modality", ""), a.get("clinic", ""), a.get("subspecialty", "")
    )
    return _page("Worklist", "worklist.html", studies=studies, args=a, subs=reading.SUBSPECIALTIES)


def _instances(store: FileHubStore, study_uid: str) -> list[dict[str, Any]]:
    out = []
    for (rel,) in store.db.execute(
        "SELECT path FROM instances WHERE study_uid=?", [study_uid]
    ).fetchall():
        ds = pydicom.dcmread(Path(store.root) / rel, stop_before_pixels=True)
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
@reader_required
def read(study_uid: str) -> Any:
    store = _store()
    try:
        study = reading._study(store, study_uid)
    except reports.ReportError:
        abort(404)
    found = reports.for_study(store, study_uid)
    report = found[-1] if found else None
    versions = [r for r in found if r["state"] == "signed"]
    instances = _instances(store, study_uid)
    body_part = instances[0]["body_part"] if instances else ""
    draft = report or {**template(study["modality"], body_part), "critical": False}
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
    )


@ui.post("/read/<study_uid>/claim")
@reader_required
def claim(study_uid: str) -> Any:
    _check_csrf()
    try:
        reading.claim(_store(), study_uid, session["user"])
    except reports.ReportError as exc:
        flash(str(exc), "error")
    return redirect(url_for("ui.read", study_uid=study_uid))


@ui.post("/read/<study_uid>/report")
@reader_required
def save_report(study_uid: str) -> Any:
    _check_csrf()
    store = _store()
    body = {
        "findings": request.form.get("findings", ""),
        "impression": request.form.get("impression", ""),
        "radiologist": session["user"],
        "critical": request.form.get("critical") == "on",
    }
    try:
        found = reports.for_study(store, study_uid)
        if found and found[-1]["state"] == "draft":
            r = reports.update_draft(store, found[-1]["report_id"], body)
        else:
            r = reports.create_draft(store, study_uid, body)
        if request.form.get("action") == "sign":
            reading.claim(store, study_uid, session["user"])
            reports.sign(store, r["report_id"], session["user"])
            flash("Signed: the report is on its way to the clinic.", "ok")
        else:
            flash("Draft saved.", "ok")
    except reports.ReportError as exc:
        flash(str(exc), "error")
    return redirect(url_for("ui.read", study_uid=study_uid))


@ui.post("/read/<study_uid>/pass-on")
@reader_required
def pass_on(study_uid: str) -> Any:
    _check_csrf()
    try:
        reading.assign(_store(), study_uid, request.form.get("subspecialty", ""))
        flash(f"Passed on to {request.form.get('subspecialty')}.", "ok")
    except reports.ReportError as exc:
        flash(str(exc), "error")
    return redirect(url_for("ui.worklist"))


@ui.post("/read/<study_uid>/addendum")
@reader_required
def addendum(study_uid: str) -> Any:
    _check_csrf()
    store = _store()
    signed = [r for r in reports.for_study(store, study_uid) if r["state"] == "signed"]
    try:
        if not signed:
            raise reports.ReportError("sign the report before adding an addendum", 409)
        reports.add_addendum(
            store,
            signed[-1]["report_id"],
            {
                "findings": request.form.get("findings", ""),
                "radiologist": session["user"],
                "critical": request.form.get("critical") == "on",
            },
        )
        flash("Addendum signed: it goes to the clinic too.", "ok")
    except reports.ReportError as exc:
        flash(str(exc), "error")
    return redirect(url_for("ui.read", study_uid=study_uid))


@ui.get("/turnaround")
@reader_required
def turnaround() -> Any:
    return _page(
        "Turnaround",
        "turnaround.html",
        groups=reading.turnaround_summary(_store()),
        steps=[name for name, _a, _b in reading.INTERVALS],
    )


def install(app: Flask, data_dir: Path) -> None:
    """Register the pages; the session key is made once per hub and kept in its data
    folder (never in the repository), sessions expire after 8 hours."""
    key_file = Path(data_dir) / "session.key"
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    app.secret_key = key_file.read_text().strip()
    app.config.update(
        PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.register_blueprint(ui)
