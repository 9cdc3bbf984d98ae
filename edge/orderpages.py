"""The clinic's orders page (reception registers an exam before the patient goes to
the modality; today's orders and where each one is), and linking a study that came
without its order's numbers to one by hand, on the study's page. Each is audited."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import abort, current_app, flash, redirect, request, session, url_for

from edge import catalog, doctors, orders, studies
from edge.config import station_for
from edge.pages import _, audit, clinic, page_db, render_page


def _page(form: dict[str, Any]) -> Any:
    db = page_db()
    today = orders.of_day(db, dt.date.today())
    for o in today:
        o["progress"] = orders.progress(o)
    return render_page(
        "orders.html", "Orders", orders=today, form=form, doctors=doctors.listing(db),
        modalities=orders.MODALITIES, exams=current_app.config["RADSETU"]["worklist"]["exams"],
    )  # fmt: skip


@clinic.get("/orders")
def orders_page() -> Any:
    return _page({"sex": "", "modality": ""})


@clinic.post("/orders")
def order_add() -> Any:
    db = page_db()
    form = request.form.to_dict()
    config = current_app.config["RADSETU"]
    ids = {d.id for d in doctors.listing(db)}
    exams = config["worklist"]["exams"]
    modality = form.get("exam", "").partition(" ")[0] or form.get("modality", "")
    try:
        made = orders.create(db, form, ids, station_for(config, modality),
                             session.get("user", ""), exams=exams)  # fmt: skip
    except orders.OrderError as exc:
        flash(_("Not saved: %(why)s.", why=_(str(exc))), "error")
        return _page(form), 400
    audit("order_add", made["study_uid"], f"{made['accession']} {made['modality']}")
    flash(_("Order %(accession)s saved: the machine finds it in its worklist.",
            accession=made["accession"]), "ok")  # fmt: skip
    return redirect(url_for("clinic.orders_page"))


@clinic.post("/orders/<accession>/cancel")
def order_cancel(accession: str) -> Any:
    db = page_db()
    order = orders.get(db, accession)
    if order is None:
        abort(404)
    if orders.cancel(db, accession):
        audit("order_cancel", order["study_uid"], accession)
        flash(_("Order %(accession)s cancelled: the machine no longer sees it.",
                accession=accession), "ok")  # fmt: skip
    else:
        flash(_("That order already has its study."), "error")
    return redirect(url_for("clinic.orders_page"))


@clinic.post("/study/<study_uid>/order")
def study_order(study_uid: str) -> Any:
    """A study whose machine ignored the worklist, tied to its order by a person."""
    db = page_db()
    if not catalog.valid_uid(study_uid) or catalog.get_study(db, study_uid) is None:
        abort(404)
    order = orders.get(db, request.form.get("accession", ""))
    if order is None:
        abort(400, "no such order")
    with db.atomic():
        linked = orders.link(db, order["accession"], study_uid)
        if linked:
            studies.apply_order(db, study_uid, order)
    if not linked:
        flash(_("That order already has its study."), "error")
    else:
        audit("order_link", study_uid, order["accession"])
        flash(_("Saved: the radiologist will see it."), "ok")
    return redirect(url_for("clinic.study", study_uid=study_uid))
