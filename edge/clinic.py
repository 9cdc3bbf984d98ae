"""The clinic's page on the box: log in, today's studies and where each one is, STAT
and the clinical note, uploads from the browser, the reports that came back, and the
box's health in plain words; in English, Hindi or Kannada per user.

Server-rendered (Jinja autoescapes every value, so a patient name holding HTML shows
as text) with a little JavaScript for the upload's progress and the live study list.
Access for the whole app (pages and ``/api``) is decided in ``check()``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import (
    Flask,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    request,
    send_file,
    session,
    url_for,
)

from common.passwords import csrf_sent, session_key
from edge import (
    accounts,
    catalog,
    criticalpages,
    doctorpages,
    doctors,
    i18n,
    orderpages,
    orders,
    studies,
)
from edge import reports as box_reports
from edge.errors import BoxError
from edge.login import OPEN_WHILE_MUST_CHANGE, SESSION_HOURS, current_user
from edge.pages import (
    _,
    admin_only,
    audit,
    audit_reads,
    clinic,
    page_db,
    page_language,
    render_page,
)
from edge.progress import STATE_ORDER, health, studies_view, today
from edge.uploads import upload_request

PUBLIC_ENDPOINTS = {"clinic.login", "api.health", "static"}


def _loopback() -> bool:
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


def check() -> Any:
    """Every request: the login page and /api/health are open; /api from the box itself
    is open while ``web.trust_loopback`` (scripts on the box); everything else needs a
    session, and a change needs the session's CSRF token too."""
    if request.endpoint is None or request.endpoint in PUBLIC_ENDPOINTS:
        return None
    is_api = request.path.startswith("/api/") or request.path == "/metrics"
    if is_api and current_app.config["RADSETU"]["web"]["trust_loopback"] and _loopback():
        return None
    who = current_user()
    if who is None:
        if is_api or request.accept_mimetypes.best == "application/json":
            raise BoxError("log in first (the clinic's page)", 401)
        return redirect(url_for("clinic.login", next=request.path))
    if who.must_change and request.endpoint not in OPEN_WHILE_MUST_CHANGE:
        if is_api:
            raise BoxError("change the password first (the clinic's page)", 403)
        return redirect(url_for("clinic.password"))
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        if not csrf_sent(session, request.form, request.headers):
            if is_api or request.accept_mimetypes.best == "application/json":
                raise BoxError("missing or stale CSRF token: reload the page")
            abort(400, "the form is stale or forged (no valid CSRF token): reload the page")
    return None


@clinic.post("/language")
def language() -> Any:
    lang = request.form.get("language", "en")
    try:
        accounts.set_language(page_db(), session["user"], lang)
    except accounts.AccountError as exc:
        abort(400, str(exc))
    session["lang"] = lang
    flash(_("Language saved."), "ok")
    return redirect(request.referrer or "/")


@clinic.get("/")
def home() -> Any:
    db = page_db()
    return render_page(
        "home.html",
        "Today's studies",
        studies=today(db),
        health=health(db),
        steps=[_(s) for s in STATE_ORDER],
    )


@clinic.get("/clinic/studies.json")
def studies_json() -> Any:
    """What the home page refreshes itself with (every few seconds)."""
    db = page_db()
    keep = (
        "study_uid",
        "patient_name",
        "modality",
        "description",
        "priority",
        "where",
        "where_label",
        "step",
        "progress",
        "problem",
    )
    rows = [{k: s.get(k) for k in keep} for s in today(db)]
    return jsonify({"studies": rows, "health": health(db)})


@clinic.get("/study/<study_uid>")
def study(study_uid: str) -> Any:
    db = page_db()
    found = catalog.get_study(db, study_uid) if catalog.valid_uid(study_uid) else None
    if found is None:
        abort(404)
    (view,) = studies_view(db, [dict(found)])
    audit("view", study_uid)
    reps = [r for r in box_reports.listing(db) if r["study_uid"] == study_uid]
    return render_page(
        "study.html", "Study", study=found, view=view, reports=reps, instances=found["instances"],
        referrer=doctors.for_study(db, found["referrer_id"], found["referring_physician"]),
        doctors=doctors.listing(db),
        order=orders.of_study(db, study_uid),
        candidates=orders.unmatched_candidates(db, dt.date.today()),
    )  # fmt: skip


@clinic.post("/study/<study_uid>")
def study_update(study_uid: str) -> Any:
    db = page_db()
    if not catalog.valid_uid(study_uid) or catalog.get_study(db, study_uid) is None:
        abort(404)
    note = request.form.get("clinical_note", "").strip()
    if len(note) > 1000:
        flash(_("The note is too long (at most 1000 characters)."), "error")
        return redirect(url_for("clinic.study", study_uid=study_uid))
    stat = request.form.get("stat") == "on"
    changed = studies.set_clinical(db, study_uid, "stat" if stat else None, note)
    if changed.get("priority"):
        audit("stat", study_uid, note[:200])
    if changed.get("note"):
        audit("note", study_uid, note[:200])
    flash(_("Saved: the radiologist will see it."), "ok")
    return redirect(url_for("clinic.study", study_uid=study_uid))


# -- reports ----------------------------------------------------------------------------
@clinic.get("/reports")
def reports_page() -> Any:
    rows = box_reports.listing(page_db())
    names = {s["study_uid"]: s for s in catalog.list_studies(page_db(), limit=2000)}
    for r in rows:
        s = names.get(r["study_uid"], {})
        r["patient_name"] = s.get("patient_name", "")
        r["modality"] = s.get("modality", "")
    return render_page("reports.html", "Reports", reports=rows)


@clinic.get("/reports/<report_id>/view")
def report_view(report_id: str) -> Any:
    path = box_reports.pdf_path(page_db(), Path(current_app.config["RADSETU"].data_dir), report_id)
    if path is None or not path.exists():
        abort(404)
    row = (
        page_db().execute("SELECT study_uid FROM reports WHERE report_id=?", [report_id]).fetchone()
    )
    audit("view_report", row[0] if row else "", f"report {report_id}")

    return send_file(path, mimetype="application/pdf")


@clinic.post("/reports/<report_id>/print")
def report_print(report_id: str) -> Any:
    if not box_reports.ask_reprint(page_db(), report_id):
        abort(404)
    row = (
        page_db().execute("SELECT study_uid FROM reports WHERE report_id=?", [report_id]).fetchone()
    )
    audit("print", row[0] if row else "", f"report {report_id}")
    flash(_("Sent to the printer."), "ok")
    return redirect(url_for("clinic.reports_page"))


@clinic.get("/audit")
@admin_only
def audit_page() -> Any:
    return render_page("audit.html", "Audit log", rows=accounts.audit_rows(page_db()))


def install(app: Flask, data_dir: Path, store: Any) -> None:
    """Register the pages and the access check; the session key is made once per box
    and kept in its data folder (mode 0600, never in the repository)."""
    app.secret_key = session_key(data_dir)
    app.config.update(
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=app.config["RADSETU"]["web"]["max_upload_bytes"],
        RADSETU_STORE=store,
    )
    uploads = Path(data_dir) / "uploads"
    shutil.rmtree(uploads, ignore_errors=True)  # what a crash mid-upload left
    uploads.mkdir(parents=True, exist_ok=True)
    app.request_class = upload_request(uploads)
    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        lambda m: i18n.gettext(page_language(), m),
        lambda s, p, n: i18n.gettext(page_language(), s if n == 1 else p),
        newstyle=True,
    )
    app.jinja_env.globals["page_lang"] = page_language
    assert doctorpages.clinic is clinic  # their pages are on the clinic's blueprint
    assert orderpages.clinic is clinic
    criticalpages.install(app)
    app.register_blueprint(clinic)
    app.before_request(check)
    app.after_request(audit_reads)
