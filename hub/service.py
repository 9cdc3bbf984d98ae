"""``radsetu hub serve``: the hub's web service under gunicorn."""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.app.base import BaseApplication

from edge.config import Config
from hub.store import FileHubStore
from hub.web import create_app

log = logging.getLogger("radsetu.hub")


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, app: Any, options: dict[str, Any]):
        self.application, self.options = app, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.application


def serve(config: Config) -> int:
    FileHubStore(config.data_dir).close()  # create and migrate once, before the workers
    w = config["web"]
    log.info(
        "hub API on http://%s:%s/api/studies (data: %s)", w["host"], w["port"], config.data_dir
    )
    _Gunicorn(
        create_app(config),
        {
            "bind": f"{w['host']}:{w['port']}",
            "workers": w["workers"],
            "loglevel": config["log_level"].lower(),
            "accesslog": None,
        },
    ).run()
    return 0
