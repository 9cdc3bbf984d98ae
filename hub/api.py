"""The hub's JSON API (``/api``): studies, reports, the reading room, boxes, fleet."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, abort, current_app, g, jsonify, request, send_file

from hub import access, orders, reading, render, reports
from hub import fleet as fleet_data
from hub.db import request_store
from hub.errors import HubError
from hub.templates import template

api = Blueprint("hub_api", __name__, url_prefix="/api")
_UID = re.compile(r"^[0-9.]{1,64}$")


@api.get("/orders/expected")
def expected_orders() -> Any:
    """The clinics' orders whose images are not in yet, STAT first (hub/orders.py)."""
    return jsonify({"orders": orders.expected(request_store())})


@api.get("/studies")
def studies() -> Any:
    return jsonify({"studies": list(request_store().studies())})


@api.get("/studies/<study_uid>")
def study(study_uid: str) -> Any:
    if not _UID.match(study_uid):
        abort(404)
    instances = request_store().study(study_uid)
    if not instances:
        abort(404)
    return jsonify(
        {"study_uid": study_uid, "instances": instances, "instance_count": len(instances)}
    )


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise HubError("send a JSON object")
    return body


@api.get("/studies/<study_uid>/reports")
def study_reports(study_uid: str) -> Any:
    return jsonify({"reports": reports.for_study(request_store(), study_uid)})


@api.post("/studies/<study_uid>/reports")
def new_report(study_uid: str) -> Any:
    """A draft: ``{"findings": ..., "impression": ..., "radiologist": ..., "critical": false}``."""
    if not _UID.match(study_uid):
        abort(404)
    return jsonify(reports.create_draft(request_store(), study_uid, _body())), 201


@api.get("/reports/<report_id>")
def report(report_id: str) -> Any:
    return jsonify(reports.get(request_store(), report_id))


@api.put("/reports/<report_id>")
def edit_report(report_id: str) -> Any:
    return jsonify(reports.update_draft(request_store(), report_id, _body()))


@api.post("/reports/<report_id>/sign")
def sign_report(report_id: str) -> Any:
    body = request.get_json(silent=True) or {}
    who = body.get("radiologist") if isinstance(body, dict) else None
    who = who if isinstance(who, str) and who else None
    # an admin's script may sign for the draft's radiologist; a radiologist signs as themself
    signer = _acting_for(who) if who or g.role != "admin" else None
    on_preview = access.may_sign_on_preview()
    signed = reports.sign(request_store(), report_id, signer, on_preview=on_preview)
    access.audit(request_store(), "sign", signed.get("study_uid", ""), f"report {report_id}")
    return jsonify(signed)


def _acting_for(named: str | None) -> str:
    """Who signs or claims: the caller; an admin (or a script's admin token) may name
    the radiologist it acts for."""
    if named and named != g.user and g.role != "admin":
        raise HubError(f"{g.user} cannot act for {named}", 403)
    return named or str(g.user)


@api.post("/reports/<report_id>/addenda")
def addendum(report_id: str) -> Any:
    body = _body()
    if body.get("radiologist") or g.role != "admin":
        body["radiologist"] = _acting_for(body.get("radiologist") or None)
    made = reports.add_addendum(request_store(), report_id, body)
    access.audit(request_store(), "addendum", made.get("study_uid", ""), f"to report {report_id}")
    return jsonify(made), 201


@api.get("/reports/<report_id>/pdf")
def report_pdf(report_id: str) -> Any:
    r = reports.get(request_store(), report_id)
    if not r["pdf_path"]:
        abort(404)
    access.audit(request_store(), "view_report", r.get("study_uid", ""), f"report {report_id}")
    return send_file(request_store().blobs.open(r["pdf_path"]), mimetype="application/pdf")


def _instance_key(study_uid: str, sop_uid: str) -> str:
    row = (
        request_store()
        .db.execute(
            "SELECT path FROM shown_instances WHERE study_uid=? AND sop_instance_uid=? "
            "ORDER BY stored_at DESC LIMIT 1",
            [study_uid, sop_uid],
        )
        .fetchone()
    )
    if row is None:
        abort(404)
    return str(row[0])


@api.get("/studies/<study_uid>/instances/<sop_uid>/rendered")
def rendered(study_uid: str, sop_uid: str) -> Any:
    """One frame as PNG: ``?frame=0&preset=brain`` (subdural, lung, bone,
    soft_tissue); without a preset the dataset's window, else one from the image."""

    try:
        frame = int(request.args.get("frame", "0"))
        with request_store().blobs.local(_instance_key(study_uid, sop_uid)) as path:
            png, info = render.render(path, frame, request.args.get("preset") or None)
    except (ValueError, render.RenderError) as exc:
        raise HubError(str(exc)) from exc
    response = current_app.response_class(png, mimetype="image/png")
    if info["window"]:
        response.headers["X-Window"] = "{center:g}/{width:g} ({source})".format(**info["window"])
    response.headers["X-Frames"] = str(info["frames"])
    return response


@api.get("/studies/<study_uid>/instances/<sop_uid>/tags")
def tags(study_uid: str, sop_uid: str) -> Any:

    with request_store().blobs.local(_instance_key(study_uid, sop_uid)) as path:
        return jsonify(render.key_tags(path))


@api.get("/templates")
def report_template() -> Any:
    """Where a draft starts: ``?modality=CT&body_part=HEAD``."""

    a = request.args
    return jsonify(template(a.get("modality", ""), a.get("body_part", "")))


@api.get("/worklist")
def worklist() -> Any:
    """Studies to read, STAT first then longest waiting; ``?modality=CT&clinic=<box>
    &subspecialty=neuro``; ``&all=1`` includes reported ones."""
    a = request.args
    return jsonify(
        {
            "studies": reading.worklist(
                request_store(),
                modality=a.get("modality", ""),
                clinic=a.get("clinic", ""),
                subspecialty=a.get("subspecialty", ""),
                include_reported=a.get("all") == "1",
            )
        }
    )


def _who(body: dict[str, Any]) -> str:
    who = body.get("radiologist", "")
    if not isinstance(who, str) or len(who) > 200:
        raise HubError("radiologist must be a name")
    return _acting_for(who or None)


@api.post("/studies/<study_uid>/claim")
def claim(study_uid: str) -> Any:
    claimed = reading.claim(request_store(), study_uid, _who(_body()))
    access.audit(request_store(), "claim", study_uid)
    return jsonify(claimed)


@api.post("/studies/<study_uid>/release")
def release(study_uid: str) -> Any:
    return jsonify(reading.release(request_store(), study_uid, _who(_body())))


@api.post("/studies/<study_uid>/assign")
def assign(study_uid: str) -> Any:
    body = _body()
    sub = body.get("subspecialty", "")
    return jsonify(
        reading.assign(request_store(), study_uid, sub if isinstance(sub, str) else "", _who(body))
    )


@api.get("/studies/<study_uid>/turnaround")
def study_turnaround(study_uid: str) -> Any:
    return jsonify(reading.turnaround(request_store(), study_uid))


@api.get("/turnaround")
def turnaround() -> Any:
    """Median and 90th percentile of each turnaround step, per clinic and priority."""
    return jsonify({"turnaround": reading.turnaround_summary(request_store())})


@api.get("/boxes")
def boxes() -> Any:
    """Every box the hub has heard from: online (from its status and last will), when
    last seen (the hub's clock), and its own status (backlog, disk, version...)."""
    return jsonify({"boxes": request_store().boxes()})


@api.get("/transfers")
def transfers() -> Any:
    return jsonify({"transfers": request_store().transfers()})


@api.get("/fleet")
def fleet() -> Any:
    """The operators' dashboard as JSON: a row per box and the open alerts (the same
    figures as /fleet and /metrics)."""
    return jsonify(fleet_data.fleet(request_store(), current_app.config["RADSETU"]["alerts"]))


@api.get("/audit")
def audit() -> Any:
    """The audit log, newest first (admins): ``?action=sign&limit=100``."""
    limit = min(int(request.args.get("limit", 500) or 500), 5000)
    rows = access.audit_rows(request_store(), limit, request.args.get("action", ""))
    return jsonify({"audit": rows})
