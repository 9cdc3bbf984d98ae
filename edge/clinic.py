"""The clinic's page on the box: log in, today's studies and where each one is, STAT
and the clinical note, uploads from the browser, the reports that came back, and the
box's health in plain words; in English, Hindi or Kannada per user.

Server-rendered (Jinja autoescapes every value, so a patient name holding HTML shows
as text) with a little JavaScript for the upload's progress and the live study list.
Access for the whole app (pages and ``/api``) is decided in ``check()``.
"""

from __future__ import annotations

import ipaddress
import math
import shutil
import tempfile
import time
import uuid
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from flask import Request as FlaskRequest
from werkzeug.utils import secure_filename

from common.passwords import csrf_sent, csrf_token, local_next, session_key
from edge import accounts, catalog, i18n, importer
from edge import reports as box_reports
from edge.db import get_db

clinic = Blueprint("clinic", __name__, template_folder="pages")
PUBLIC_ENDPOINTS = {"clinic.login", "api.health", "static"}
STATE_ORDER = ["received", "waiting", "sending", "at the hub", "being read", "reported", "printed"]
SESSION_HOURS = 12  # a clinic's shift


def _db():  # type: ignore[no-untyped-def]
    return get_db()


def _(message: str, **kw: Any) -> str:
    text = i18n.gettext(session.get("lang", "en"), message)
    return text % kw if kw else text


def _csrf() -> str:
    return csrf_token(session)


def _audit(action: str, study_uid: str = "", detail: str = "") -> None:
    accounts.audit(
        _db(), session.get("user", ""), action, study_uid, detail, request.remote_addr or ""
    )


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
    is_api = request.path.startswith("/api/")
    if is_api and current_app.config["RADSETU"]["web"]["trust_loopback"] and _loopback():
        return None
    if not session.get("user"):
        if is_api or request.accept_mimetypes.best == "application/json":
            return jsonify({"error": "log in first (the clinic's page)"}), 401
        return redirect(url_for("clinic.login", next=request.path))
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        if not csrf_sent(session, request.form, request.headers):
            if is_api or request.accept_mimetypes.best == "application/json":
                return jsonify({"error": "missing or stale CSRF token: reload the page"}), 400
            abort(400, "the form is stale or forged (no valid CSRF token): reload the page")
    return None


def admin_only(view: Any) -> Any:
    @wraps(view)
    def wrapped(*a: Any, **kw: Any) -> Any:
        if session.get("role") != "admin":
            abort(403, "only the box's admin may see this")
        return view(*a, **kw)

    return wrapped


def _page(page: str, title: str, **ctx: Any) -> str:
    return render_template(page, title=_(title), csrf=_csrf(), languages=i18n.LANGUAGES, **ctx)


@clinic.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "POST":
        if not csrf_sent(session, request.form, request.headers):  # open without a login
            abort(400, "the form is stale or forged (no valid CSRF token): reload the page")
        name = request.form.get("username", "")[:64]
        who = accounts.authenticate(_db(), name, request.form.get("password", ""))
        if who is None:
            current_app.logger.warning("failed login for %r from %s", name, request.remote_addr)
            accounts.audit(_db(), name or "?", "login_failed", address=request.remote_addr or "")
            flash(_("Wrong user name or password."), "error")
        else:
            session.clear()
            session.permanent = True
            session.update(user=name, role=who["role"], lang=who["language"])
            _audit("login")
            return redirect(local_next(request.args.get("next", "")) or "/")
    return _page("login.html", "Log in")


@clinic.get("/logout")
def logout() -> Any:
    session.clear()
    return redirect(url_for("clinic.login"))


@clinic.post("/language")
def language() -> Any:
    lang = request.form.get("language", "en")
    try:
        accounts.set_language(_db(), session["user"], lang)
    except accounts.AccountError as exc:
        abort(400, str(exc))
    session["lang"] = lang
    flash(_("Language saved."), "ok")
    return redirect(request.referrer or "/")


# -- where each study is ---------------------------------------------------------------
def _sending(db: Any) -> dict[str, dict[str, Any]]:
    """Per study being sent: bytes left and an estimate from the rate so far."""
    out: dict[str, dict[str, Any]] = {}
    now = time.time()
    for t in catalog.transfers(db, limit=100):
        if t["state"] in ("verified",) or not t["chunk_count"]:
            continue
        total = t["stream_bytes"] or 0
        done = min(total, t["chunks_acked"] * (t["chunk_size"] or 0))
        left = max(0, total - done)
        eta = None
        started = catalog.iso_ts(t["first_sent_at"])
        if started and done and now > started:
            eta = left / (done / (now - started))
        cur = out.setdefault(t["study_uid"], {"total": 0, "done": 0, "eta": 0.0})
        cur["total"] += total
        cur["done"] += done
        cur["eta"] = max(cur["eta"], eta or 0.0) if eta is not None else cur["eta"]
    return out


def where(study: dict[str, Any], sending: dict[str, Any], reported: dict[str, Any]) -> str:
    uid = study["study_uid"]
    rep = reported.get(uid)
    if rep is not None:
        return "printed" if rep["printed"] else "reported"
    if study.get("hub_state") == "being read":
        return "being read"
    if study["state"] == "delivered":
        return "at the hub"
    if study["state"] == "sending" or uid in sending:
        return "sending"
    if study["state"] == "ready":
        return "waiting"
    return "received"


def today(db: Any) -> list[dict[str, Any]]:
    """The studies of the last 24 hours, each with where it is."""
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    return studies_view(db, catalog.list_studies(db, since=since))


def studies_view(db: Any, studies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``studies`` (catalog rows) with where each one is, its step and its progress."""
    sending = _sending(db)
    reported: dict[str, dict[str, Any]] = {}
    for uid, printed in db.execute(
        "SELECT study_uid, max(printed_at IS NOT NULL) FROM reports GROUP BY study_uid"
    ).fetchall():
        reported[uid] = {"printed": bool(printed)}
    held = _held_by_study(db)
    out = []
    for s in studies:
        s["problem"] = held.get(s["study_uid"])
        s["where"] = where(s, sending, reported)
        s["where_label"] = _(s["where"])
        s["step"] = STATE_ORDER.index(s["where"])
        prog = sending.get(s["study_uid"])
        if s["where"] == "sending" and prog:
            s["progress"] = {
                "percent": round(100 * prog["done"] / prog["total"]) if prog["total"] else 0,
                "left_mb": round((prog["total"] - prog["done"]) / 1e6, 1),
                "eta_minutes": max(1, math.ceil(prog["eta"] / 60)) if prog["eta"] else None,
            }
        out.append(s)
    return out


def _held_by_study(db: Any) -> dict[str, str]:
    """A sentence per study that has something the box cannot send, and why."""
    out: dict[str, str] = {}
    for uid, n, reason in db.execute(
        "SELECT study_uid, sum(instance_id != 0), min(reason) FROM held GROUP BY study_uid"
    ).fetchall():
        out[uid] = (
            _(
                "%(n)s images cannot be sent (%(reason)s). Call your field engineer.",
                n=n,
                reason=reason,
            )
            if n
            else _("This study cannot be packed (%(reason)s). It is tried again.", reason=reason)
        )
    return out


def health(db: Any) -> list[tuple[str, str]]:
    """The box's state in words for the reception desk: (css class, sentence)."""
    agent = current_app.config.get("RADSETU_AGENT")
    store = current_app.config["RADSETU_STORE"]
    lines: list[tuple[str, str]] = []
    free_gb = store.free_bytes() / 1e9
    if agent is None:
        lines.append(("warn", _("Sync is off on this box: studies stay here.")))
    else:
        st = agent.status(db)
        if st["link"] == "up":
            lines.append(("ok", _("Link to the hub: working.")))
        else:
            lines.append(
                (
                    "bad",
                    _(
                        "Link to the hub: down. Studies wait safely on this box and go "
                        "when it comes back."
                    ),
                )
            )
        lines.append(
            (
                "ok" if not st["backlog_studies"] else "warn",
                _(
                    "Waiting to send: %(n)s studies (%(mb)s MB).",
                    n=st["backlog_studies"],
                    mb=f"{st['backlog_bytes'] / 1e6:.1f}",
                ),
            )
        )
        if st["held_studies"]:
            lines.append(
                (
                    "bad",
                    _(
                        "%(n)s studies have images that cannot be sent. Call your field engineer.",
                        n=st["held_studies"],
                    ),
                )
            )
        last = _local_time(st.get("last_sync"))
        lines.append(
            (
                "ok",
                _("Last successful sync: %(when)s.", when=last)
                if last
                else _("No successful sync yet."),
            )
        )
    low = store.free_bytes() < max(store.reserve_bytes * 2, 5e9)
    lines.append(
        (
            "bad" if low else "ok",
            _("Disk space is low: %(gb)s GB free. Call your field engineer.", gb=f"{free_gb:.1f}")
            if low
            else _("Disk space: %(gb)s GB free.", gb=f"{free_gb:.1f}"),
        )
    )
    return lines


def _local_time(iso: str | None) -> str | None:
    """The box's own clock, as the clinic reads it (HH:MM, day month)."""
    ts = catalog.iso_ts(iso)
    return time.strftime("%H:%M, %d %b", time.localtime(ts)) if ts else None


@clinic.get("/")
def home() -> Any:
    db = _db()
    return _page(
        "home.html",
        "Today's studies",
        studies=today(db),
        health=health(db),
        steps=[_(s) for s in STATE_ORDER],
    )


@clinic.get("/clinic/studies.json")
def studies_json() -> Any:
    """What the home page refreshes itself with (every few seconds)."""
    db = _db()
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
    db = _db()
    found = catalog.get_study(db, study_uid) if catalog.valid_uid(study_uid) else None
    if found is None:
        abort(404)
    (view,) = studies_view(db, [dict(found)])
    _audit("view", study_uid)
    reps = [r for r in box_reports.listing(db) if r["study_uid"] == study_uid]
    return _page(
        "study.html", "Study", study=found, view=view, reports=reps, instances=found["instances"]
    )


@clinic.post("/study/<study_uid>")
def study_update(study_uid: str) -> Any:
    db = _db()
    if not catalog.valid_uid(study_uid) or catalog.get_study(db, study_uid) is None:
        abort(404)
    note = request.form.get("clinical_note", "").strip()
    if len(note) > 1000:
        flash(_("The note is too long (at most 1000 characters)."), "error")
        return redirect(url_for("clinic.study", study_uid=study_uid))
    stat = request.form.get("stat") == "on"
    changed = catalog.set_clinical(db, study_uid, "stat" if stat else None, note)
    if changed.get("priority"):
        _audit("stat", study_uid, note[:200])
    if changed.get("note"):
        _audit("note", study_uid, note[:200])
    flash(_("Saved: the radiologist will see it."), "ok")
    return redirect(url_for("clinic.study", study_uid=study_uid))


# -- uploads ----------------------------------------------------------------------------
@clinic.get("/upload")
def upload_page() -> Any:
    return _page("upload.html", "Upload scans")


@clinic.post("/upload")
def upload() -> Any:
    """Files (one by one, a whole folder, or ZIPs) from the browser: each is checked and
    kept as an import would; the answer says what was kept and what was refused."""
    cfg = current_app.config["RADSETU"]
    store = current_app.config["RADSETU_STORE"]
    files = request.files.getlist("files")
    if not files:
        return jsonify({"error": _("Choose files, a folder or a ZIP first.")}), 400
    work = Path(cfg.data_dir) / "uploads" / uuid.uuid4().hex
    work.mkdir(parents=True)
    try:
        names = []
        for i, f in enumerate(files):
            # the browser's name is only a hint: never a path on the box
            name = f"{i:05d}-{secure_filename(f.filename or '') or 'file'}"
            f.save(work / name)
            names.append(f.filename or name)
        imp = cfg["import"]
        summary = importer.run_import(
            store,
            work,
            cfg["store"]["max_instance_bytes"],
            imp["max_total_bytes"],
            imp["max_zip_ratio"],
            progress_out=None,
            source=f"upload:{session['user']}",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for uid in sorted(summary.studies):
        _audit("upload", uid, f"{len(files)} files")
    if not summary.studies:
        _audit("upload", "", f"{len(files)} files, nothing kept")
    return jsonify(
        {
            "imported": summary.imported,
            "already_there": summary.already_there,
            "refused": [{"file": n, "reason": r} for n, r in summary.refused],
            "stopped": summary.stopped,
            "studies": sorted(summary.studies),
            "message": _(
                "Imported: %(n)s, already there: %(d)s, refused: %(r)s.",
                n=summary.imported,
                d=summary.already_there,
                r=len(summary.refused),
            ),
        }
    ), (200 if summary.stopped is None else 507)


# -- reports ----------------------------------------------------------------------------
@clinic.get("/reports")
def reports_page() -> Any:
    rows = box_reports.listing(_db())
    names = {s["study_uid"]: s for s in catalog.list_studies(_db(), limit=2000)}
    for r in rows:
        s = names.get(r["study_uid"], {})
        r["patient_name"] = s.get("patient_name", "")
        r["modality"] = s.get("modality", "")
    return _page("reports.html", "Reports", reports=rows)


@clinic.get("/reports/<report_id>/view")
def report_view(report_id: str) -> Any:
    path = box_reports.pdf_path(_db(), Path(current_app.config["RADSETU"].data_dir), report_id)
    if path is None or not path.exists():
        abort(404)
    row = _db().execute("SELECT study_uid FROM reports WHERE report_id=?", [report_id]).fetchone()
    _audit("view_report", row[0] if row else "", f"report {report_id}")

    return send_file(path, mimetype="application/pdf")


@clinic.post("/reports/<report_id>/print")
def report_print(report_id: str) -> Any:
    if not box_reports.ask_reprint(_db(), report_id):
        abort(404)
    row = _db().execute("SELECT study_uid FROM reports WHERE report_id=?", [report_id]).fetchone()
    _audit("print", row[0] if row else "", f"report {report_id}")
    flash(_("Sent to the printer."), "ok")
    return redirect(url_for("clinic.reports_page"))


@clinic.get("/audit")
@admin_only
def audit_page() -> Any:
    return _page("audit.html", "Audit log", rows=accounts.audit_rows(_db()))


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
    app.request_class = _upload_request(uploads)
    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        lambda m: i18n.gettext(session.get("lang", "en"), m),
        lambda s, p, n: i18n.gettext(session.get("lang", "en"), s if n == 1 else p),
        newstyle=True,
    )
    app.register_blueprint(clinic)
    app.before_request(check)


def _upload_request(folder: Path) -> type[FlaskRequest]:
    """Uploaded files spool to the box's data disk (not /tmp, often RAM on a Pi)."""

    class UploadRequest(FlaskRequest):
        def _get_file_stream(  # type: ignore[override]
            self,
            total_content_length: int | None,
            content_type: str | None,
            filename: str | None = None,
            content_length: int | None = None,
        ) -> Any:
            return tempfile.TemporaryFile(dir=folder)

    return UploadRequest
