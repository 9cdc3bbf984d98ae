"""The box's web service (Flask, served by waitress): the API here, the clinic's
pages in ``edge/clinic.py``."""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Blueprint, Flask, abort, current_app, g, jsonify, request, send_file, session

from common.web import json_app
from edge import catalog
from edge import config as edge_config
from edge.store import reader

api = Blueprint("api", __name__, url_prefix="/api")
log = logging.getLogger("radsetu.web")
_UID = re.compile(r"^[0-9.]{1,64}$")


def _db():  # type: ignore[no-untyped-def]
    if "db" not in g:
        g._db_cm = reader(current_app.config["RADSETU"].data_dir)
        g.db = g._db_cm.__enter__()
    return g.db


def _close_db(_exc: BaseException | None) -> None:
    cm = g.pop("_db_cm", None)
    g.pop("db", None)
    if cm is not None:
        cm.__exit__(None, None, None)


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
        return jsonify({"error": 'send JSON like {"priority": "stat", "reason": "..."}'}), 400
    reason = body.get("reason", "set by a person")
    if not isinstance(reason, str) or len(reason) > 500:
        return jsonify({"error": "reason must be text of at most 500 characters"}), 400
    if not _UID.match(study_uid) or not catalog.set_priority(
        _db(), study_uid, body["priority"], reason
    ):
        abort(404)
    log.info("study %s: priority set to %s (%s)", study_uid, body["priority"], reason)
    from edge.accounts import audit

    audit(
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
    from edge import reports

    return jsonify({"reports": reports.listing(_db())})


@api.get("/reports/<report_id>/pdf")
def report_pdf(report_id: str) -> Any:
    from edge import reports

    path = reports.pdf_path(_db(), current_app.config["RADSETU"].data_dir, report_id)
    if path is None or not path.exists():
        abort(404)
    return send_file(path, mimetype="application/pdf")


@api.post("/reports/<report_id>/print")
def reprint(report_id: str) -> Any:
    """Print the report again (on ``[print] printer``)."""
    from edge import reports

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


def create_app(
    cfg: edge_config.Config | None = None, agent: Any = None, store: Any = None
) -> Flask:
    """Build the box's web app (the clinic's page and the API); ``cfg`` defaults to the
    file in $RADSETU_CONFIG; ``store`` is where uploads are kept."""
    if cfg is None:
        import os

        cfg = edge_config.load(os.environ.get("RADSETU_CONFIG"))
    if store is None:
        from edge.service import open_store

        store = open_store(cfg)
    from edge import clinic

    app = json_app(cfg, api)
    app.config["RADSETU_AGENT"] = agent
    clinic.install(app, cfg.data_dir, store)
    app.teardown_appcontext(_close_db)
    return app
