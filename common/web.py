"""The JSON web app both sides build on: safe JSON, 404 in JSON, no sniffing."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify
from flask.json.provider import DefaultJSONProvider

from common.config import Config


class ApiError(Exception):
    """What a caller of a JSON API must fix; each side raises its own subclass
    (``edge.errors.BoxError``, ``hub.errors.HubError``) and the app's one handler
    answers ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class SafeJSONProvider(DefaultJSONProvider):
    """JSON with ``<``, ``>`` and ``&`` escaped: patient names and descriptions come from
    modalities and may hold HTML; no browser may ever read them as markup."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        text = super().dumps(obj, **kwargs)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def json_app(cfg: Config, *blueprints: Blueprint) -> Flask:
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

    @app.errorhandler(ApiError)
    def refused(exc: ApiError) -> Any:
        return jsonify({"error": str(exc)}), exc.status

    return app
