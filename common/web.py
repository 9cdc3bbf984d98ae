"""The web app both sides build on: safe JSON, 404 in JSON, the security headers."""

from __future__ import annotations

import secrets
from typing import Any

from flask import Blueprint, Flask, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.middleware.proxy_fix import ProxyFix

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


def csp_nonce() -> str:
    """This response's nonce for its inline scripts (the CSP allows no others)."""
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return str(g.csp_nonce)


def json_app(cfg: Config, *blueprints: Blueprint) -> Flask:
    """A Flask app that speaks safe JSON, answers 404 in JSON, forbids sniffing and
    framing, allows only its own scripts (a CSP with a nonce per response), and behind
    a TLS proxy (``web.behind_tls_proxy``) takes the proxy's word for the client's
    address and scheme, marks its cookies Secure and sends HSTS; shared by the box's
    and the hub's web services."""
    app = Flask(__name__)
    app.json = SafeJSONProvider(app)
    app.config["RADSETU"] = cfg
    for bp in blueprints:
        app.register_blueprint(bp)

    behind_proxy = bool(cfg["web"].get("behind_tls_proxy", False))
    if behind_proxy:
        # the proxy's X-Forwarded-For/-Proto/-Host are believed (one hop, no more): the
        # audit log gets the person's address, and the app knows it is served over TLS
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
        app.config["SESSION_COOKIE_SECURE"] = True

    @app.context_processor
    def nonce() -> dict[str, str]:
        return {"csp_nonce": csp_nonce()}

    @app.after_request
    def security_headers(response: Any) -> Any:
        h = response.headers
        h["X-Content-Type-Options"] = "nosniff"
        h["X-Frame-Options"] = "DENY"
        h["Referrer-Policy"] = "same-origin"
        h.setdefault(  # a page with needs of its own (OHIF) sets its own
            "Content-Security-Policy",
            "default-src 'self'; "
            f"script-src 'self' 'nonce-{csp_nonce()}'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        )
        if request.is_secure:
            h["Strict-Transport-Security"] = "max-age=31536000"
        return response

    @app.errorhandler(404)
    def not_found(_e: Any) -> Any:
        return jsonify({"error": "not found"}), 404

    @app.errorhandler(ApiError)
    def refused(exc: ApiError) -> Any:
        return jsonify({"error": str(exc)}), exc.status

    return app
