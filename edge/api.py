"""The box's JSON API (``/api``): studies, transfers, purges, reports, sync, health."""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Blueprint, abort, current_app, jsonify, request, send_file, session

from edge import accounts, catalog, reports
from edge import studies as study_rows
from edge.db import get_db as _db
from edge.errors import BoxError

api = Blueprint("api", __name__, url_prefix="/api")
log = logging.getLogger("radsetu.web")
_UID = re.compile(r"^[0-9.]{1,64}$")


@api.get("/studies")
def studies() -> Any:
    return jsonify({"studies": catalog.list_studies(_db())})


@api.get("/studies/<study_uid>")
def study(study_uid: str) -> Any:
    if not _UID.match(study_uid):
        abort(404)
    found = catalog.get_study(_db(), study_uid)
    if found is None:
        abort(404)
    # the list replaces the count here; the count stays as instance_count
    found["instances"] = found.pop("instances_list")
    found["transfers"] = catalog.transfers(_db(), study_uid)
    return jsonify(found)


@api.post("/studies/<study_uid>/priority")
def set_priority(study_uid: str) -> Any:
    """Make a study STAT (or routine again): ``{"priority": "stat", "reason": "..."}``.
    A study already sending changes at its next chunk."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or body.get("priority") not in ("stat", "routine"):
        raise BoxError('send JSON like {"priority": "stat", "reason": "..."}')
    reason = body.get("reason", "set by a person")
    if not isinstance(reason, str) or len(reason) > 500:
        raise BoxError("reason must be text of at most 500 characters")
    if not _UID.match(study_uid) or not study_rows.set_priority(
        _db(), study_uid, body["priority"], reason
    ):
        abort(404)
    log.info("study %s: priority set to %s (%s)", study_uid, body["priority"], reason)
    accounts.audit(
        _db(),
        session.get("user", "") or "api",
        "priority",
        study_uid,
        f"{body['priority']}: {reason}",
        request.remote_addr or "",
    )
    return jsonify({"study_uid": study_uid, "priority": body["priority"], "reason": reason})


@api.get("/transfers")
def transfers() -> Any:
    return jsonify({"transfers": catalog.transfers(_db())})


@api.get("/purges")
def purges() -> Any:
    """Studies deleted after the hub verified them, with the reason (retention or
    disk space), newest first."""
    return jsonify({"purges": catalog.purges(_db())})


@api.get("/reports")
def reports_list() -> Any:
    """Reports that came back, critical first: findings, impression, radiologist,
    when printed and how often, and any printing error."""
    return jsonify({"reports": reports.listing(_db())})


@api.get("/reports/<report_id>/pdf")
def report_pdf(report_id: str) -> Any:
    path = reports.pdf_path(_db(), current_app.config["RADSETU"].data_dir, report_id)
    if path is None or not path.exists():
        abort(404)
    return send_file(path, mimetype="application/pdf")


@api.post("/reports/<report_id>/print")
def reprint(report_id: str) -> Any:
    """Print the report again (on ``[print] printer``)."""
    if not reports.ask_reprint(_db(), report_id):
        abort(404)
    return jsonify({"report_id": report_id, "reprint": True}), 202


@api.get("/sync")
def sync_status() -> Any:
    """The sync agent's own view: link, backlog, last successful sync, disk, figures."""
    agent = current_app.config.get("RADSETU_AGENT")
    if agent is None:
        return jsonify({"enabled": False})
    return jsonify({"enabled": True, **agent.status(_db())})


@api.get("/repairs")
def repairs() -> Any:
    """What the store's self-check repaired after a crash, newest first."""
    return jsonify({"repairs": catalog.repairs(_db())})


@api.get("/health")
def health() -> Any:
    cfg = current_app.config["RADSETU"]
    return jsonify({"box_id": cfg.box_id, "ok": True})
