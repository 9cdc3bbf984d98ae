"""The hub's store for one request (API, pages and DICOMweb alike), as in Flask's
tutorial: blueprints import this leaf module, never the app factory."""

from __future__ import annotations

from flask import Flask, current_app, g

from hub.store import FileHubStore, open_store


def request_store() -> FileHubStore:
    """The store for this request (API, pages and DICOMweb alike); closed at its end.
    The app prepared the store once when it was made."""
    if "store" not in g:
        g.store = open_store(current_app.config["RADSETU"], prepare=False)
    return g.store


def close_store(_exc: BaseException | None) -> None:
    store = g.pop("store", None)
    if store is not None:
        store.close()


def init_app(app: Flask) -> None:
    app.teardown_appcontext(close_store)
