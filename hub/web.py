"""The hub's web service (Flask under gunicorn): the read API so far."""

from __future__ import annotations

import os
import re
from typing import Any

from flask import Blueprint, Flask, abort, current_app, g, jsonify

from edge.config import Config
from edge.web import json_app
from hub import config as hub_config
from hub.store import FileHubStore

api = Blueprint("hub_api", __name__, url_prefix="/api")
_UID = re.compile(r"^[0-9.]{1,64}$")


def _store() -> FileHubStore:
    if "store" not in g:
        g.store = FileHubStore(current_app.config["RADSETU"].data_dir)
    return g.store


def _close(_exc: BaseException | None) -> None:
    store = g.pop("store", None)
    if store is not None:
        store.close()


@api.get("/studies")
def studies() -> Any:
    return jsonify({"studies": list(_store().studies())})


@api.get("/studies/<study_uid>")
def study(study_uid: str) -> Any:
    if not _UID.match(study_uid):
        abort(404)
    instances = _store().study(study_uid)
    if not instances:
        abort(404)
    return jsonify(
        {"study_uid": study_uid, "instances": instances, "instance_count": len(instances)}
    )


@api.get("/boxes")
def boxes() -> Any:
    """Every box the hub has heard from: online (from its status and last will), when
    last seen (the hub's clock), and its own status (backlog, disk, version...)."""
    return jsonify({"boxes": _store().boxes()})


@api.get("/transfers")
def transfers() -> Any:
    return jsonify({"transfers": _store().transfers()})


def create_app(cfg: Config | None = None) -> Flask:
    """Build the hub's app; ``cfg`` defaults to the file in $RADSETU_HUB_CONFIG."""
    if cfg is None:
        cfg = hub_config.load(os.environ.get("RADSETU_HUB_CONFIG"))
    app = json_app(cfg, api)
    app.teardown_appcontext(_close)
    return app
