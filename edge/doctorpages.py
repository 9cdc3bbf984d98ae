"""The clinic's page of referring doctors (the box's admin adds, changes and removes
them and names the on-call contact), and the choice of a study's referring doctor on
the study's page (any member of staff). Each change is in the audit log."""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, request, url_for

from edge import catalog, doctors, studies
from edge.pages import _, admin_only, audit, clinic, page_db, render_page


@clinic.get("/doctors")
@admin_only
def doctors_page() -> Any:
    db = page_db()
    editing = doctors.get(db, request.args.get("edit", type=int) or 0)
    form = editing.__dict__ if editing else {"language": "en"}
    return render_page(
        "doctors.html", "Referring doctors",
        doctors=doctors.listing(db), editing=editing, form=form,
    )  # fmt: skip


@clinic.post("/doctors")
@admin_only
def doctor_save() -> Any:
    db = page_db()
    doctor_id = request.form.get("id", type=int)
    try:
        saved = doctors.save(db, request.form.to_dict(), doctor_id)
    except doctors.DoctorError as exc:
        flash(_("Not saved: %(why)s.", why=_(str(exc))), "error")
        page = render_page(
            "doctors.html", "Referring doctors", doctors=doctors.listing(db),
            editing=doctors.get(db, doctor_id or 0), form=request.form.to_dict(),
        )  # fmt: skip
        return page, 400
    audit("doctor_change" if doctor_id else "doctor_add", "", _describe(saved))
    flash(_("Saved."), "ok")
    return redirect(url_for("clinic.doctors_page"))


@clinic.post("/doctors/<int:doctor_id>/remove")
@admin_only
def doctor_remove(doctor_id: int) -> Any:
    db = page_db()
    found = doctors.get(db, doctor_id)
    if found is None or not doctors.remove(db, doctor_id):
        abort(404)
    audit("doctor_remove", "", _describe(found))
    flash(_("Removed."), "ok")
    return redirect(url_for("clinic.doctors_page"))


def _describe(d: doctors.Doctor) -> str:
    on_call = " (on call)" if d.on_call else ""
    return f"{d.name}{on_call} {d.mobile} {d.email} {d.language}"[:200]


@clinic.post("/study/<study_uid>/referrer")
def study_referrer(study_uid: str) -> Any:
    """The study's referring doctor, chosen from the clinic's list ('' goes back to the
    name the modality wrote, when it matches one)."""
    db = page_db()
    if not catalog.valid_uid(study_uid) or catalog.get_study(db, study_uid) is None:
        abort(404)
    chosen = request.form.get("referrer", "")
    doctor = doctors.get(db, int(chosen)) if chosen.isdigit() else None
    if chosen and doctor is None:
        abort(400, "no such doctor")
    studies.set_referrer(db, study_uid, doctor.id if doctor else None)
    audit("referrer", study_uid, doctor.name if doctor else "from the DICOM name")
    flash(_("Saved: the radiologist will see it."), "ok")
    return redirect(url_for("clinic.study", study_uid=study_uid))
