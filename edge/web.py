"""The box's web service (Flask, served by waitress): the app factory. The API is in
``edge/api.py``, the clinic's pages in ``edge/clinic.py``."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from common.metrics import time_requests
from common.web import json_app
from edge import clinic, db, metrics
from edge import config as edge_config
from edge.api import api
from edge.boot import open_store


def create_app(
    cfg: edge_config.Config | None = None, agent: Any = None, store: Any = None
) -> Flask:
    """Build the box's web app (the clinic's page and the API); ``cfg`` defaults to the
    file in $RADSETU_CONFIG; ``store`` is where uploads are kept."""
    if cfg is None:
        cfg = edge_config.load(os.environ.get("RADSETU_CONFIG"))
    if store is None:
        store = open_store(cfg)
    app = json_app(cfg, api, metrics.metrics)
    time_requests(app, "radsetu")
    app.config["RADSETU_AGENT"] = agent
    clinic.install(app, cfg.data_dir, store)
    db.init_app(app)
    return app
