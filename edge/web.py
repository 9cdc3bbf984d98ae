"""The box's web service (Flask, served by waitress): the read API for now."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, abort, current_app, g, jsonify
from flask.json.provider import DefaultJSONProvider

from edge import catalog
from edge import config as edge_config
from edge.store import reader

api = Blueprint("api", __name__, url_prefix="/api")
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
    return jsonify(found)


@api.get("/repairs")
def repairs() -> Any:
    """What the store's self-check repaired after a crash, newest first."""
    return jsonify({"repairs": catalog.repairs(_db())})


@api.get("/health")
def health() -> Any:
    cfg = current_app.config["RADSETU"]
    return jsonify({"box_id": cfg.box_id, "ok": True})


class SafeJSONProvider(DefaultJSONProvider):
    """JSON with ``<``, ``>`` and ``&`` escaped: patient names and descriptions come from
    modalities and may hold HTML; no browser may ever read them as markup."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        text = super().dumps(obj, **kwargs)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def json_app(cfg: edge_config.Config, *blueprints: Blueprint) -> Flask:
    """A Flask app that speaks safe JSON, answers 404 in JSON and forbids sniffing;
    shared by the box's and the hub's web services."""
    app = Flask(__name__)
    app.json = SafeJSONProvider(app)
    app.config["RADSETU"] = cfg
    for bp in blueprints:
        app.register_blueprint(bp)

    @app.after_request
    def no_sniffing(response: Any) -> Any:
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.errorhandler(404)
    def not_found(_e: Any) -> Any:
        return jsonify({"error": "not found"}), 404

    return app


def create_app(cfg: edge_config.Config | None = None) -> Flask:
    """Build the box's web app; ``cfg`` defaults to the file in $RADSETU_CONFIG."""
    if cfg is None:
        import os

        cfg = edge_config.load(os.environ.get("RADSETU_CONFIG"))
    app = json_app(cfg, api)
    app.teardown_appcontext(_close_db)
    return app
