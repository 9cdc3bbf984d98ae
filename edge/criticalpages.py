"""A critical finding at the clinic: while one is not confirmed, every page shows it
at the top, with a sound, until a member of staff (the logged-in, named user) has told
the referring doctor and writes what the doctor read back. The confirmation is in the
box's audit log and goes to the hub (edge/downlink.py), where it closes the result."""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, flash, redirect, request, session, url_for

from edge import catalog, doctors
from edge import reports as box_reports
from edge.pages import _, audit, clinic, page_db, render_page


def banner() -> dict[str, Any]:
    """Every page's context: the critical findings still to confirm (logged in only)."""
    if not session.get("user"):
        return {"critical_alerts": []}
    return {"critical_alerts": box_reports.unconfirmed_critical(page_db())}


@clinic.route("/critical/<report_id>", methods=["GET", "POST"])
def confirm_critical(report_id: str) -> Any:
    db = page_db()
    found = next((r for r in box_reports.unconfirmed_critical(db) if r["report_id"] == report_id),
                 None)  # fmt: skip
    if found is None:
        abort(404)
    uid = found["study_uid"]
    study = catalog.get_study(db, uid) if catalog.valid_uid(uid) else None
    referrer = (
        doctors.for_study(db, study["referrer_id"], study["referring_physician"]) if study else None
    )
    doctor = referrer or doctors.on_call(db)
    if request.method == "POST":
        readback = " ".join(request.form.get("readback", "").split())
        if not 3 <= len(readback) <= 500:
            flash(_("Write what the doctor read back to you (3 to 500 characters)."), "error")
        else:
            box_reports.confirm_critical(db, report_id, session["user"], readback)
            told = doctor.name if doctor else "?"
            detail = f"report {report_id}: {told} read back: {readback}"
            audit("critical_confirmed", uid, detail[:200])
            flash(_("Confirmed: the hub and the radiologist will see it."), "ok")
            return redirect(url_for("clinic.home"))
    return render_page("critical.html", "Critical finding", finding=found, doctor=doctor)


def install(app: Flask) -> None:
    app.context_processor(banner)
