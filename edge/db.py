"""The box's index for one web request, as in Flask's tutorial: the API and the
clinic's pages import this leaf module, never the app factory."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, g

from edge.store import reader


def get_db() -> Any:
    """A read connection to the box's index for this request; closed at its end."""
    if "db" not in g:
        g._db_cm = reader(current_app.config["RADSETU"].data_dir)
        g.db = g._db_cm.__enter__()
    return g.db


def close_db(_exc: BaseException | None) -> None:
    cm = g.pop("_db_cm", None)
    g.pop("db", None)
    if cm is not None:
        cm.__exit__(None, None, None)


def init_app(app: Flask) -> None:
    app.teardown_appcontext(close_db)
