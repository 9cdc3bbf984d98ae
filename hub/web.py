"""The hub's web service (Flask under gunicorn): the app factory. The API, the reading
room's pages, the operators' pages and DICOMweb are blueprints of their own modules."""

from __future__ import annotations

import os

from flask import Flask

from common.config import Config
from common.metrics import time_requests
from common.web import json_app
from hub import access, db, ui, users
from hub import config as hub_config
from hub.api import api
from hub.confirm import confirm
from hub.dicomweb import CLINIC_PREFIX, dicomweb
from hub.ohif import ohif
from hub.ops import admin, ops
from hub.store import open_store


def create_app(cfg: Config | None = None) -> Flask:
    """Build the hub's app; ``cfg`` defaults to the file in $RADSETU_HUB_CONFIG."""
    if cfg is None:
        cfg = hub_config.load(os.environ.get("RADSETU_HUB_CONFIG"))
    store = open_store(cfg)  # folders and migrations, once per process
    try:
        key = users.session_key(store, cfg.data_dir)
    finally:
        store.close()
    app = json_app(cfg, api, dicomweb, ohif, ops, admin, confirm)
    # DICOMweb once more, narrowed to one clinic (hub/dicomweb.py)
    app.register_blueprint(dicomweb, url_prefix=CLINIC_PREFIX, name="clinic_dicomweb")
    time_requests(app, "radsetu_hub")
    ui.install(app, key)
    app.before_request(lambda: access.check(db.request_store))
    app.after_request(lambda response: access.audit_reads(db.request_store, response))
    db.init_app(app)
    return app
