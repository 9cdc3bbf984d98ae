"""``radsetu hub serve``: the hub's web service under gunicorn, and its MQTT ingest.

The ingest runs as a child process (``radsetu hub ingest``), started and watched by
this one: restarted if it dies, killed with it (the kernel's parent-death signal) if
this process is killed. More ingest processes may run elsewhere against the same
store with other ``mqtt.client_id`` values; they share the load.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from gunicorn.app.base import BaseApplication

from common.config import Config
from common.metrics import share_between_processes, worker_gone
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


def _die_with_parent() -> None:

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _watch_ingest(config: Config, stop: threading.Event) -> None:
    cmd = [sys.executable, "-m", "radsetu", "hub", "ingest"]
    if config.source != "defaults":
        cmd += ["--config", config.source]
    delay = 1.0
    while not stop.is_set():
        started = time.monotonic()
        proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent)  # noqa: S603, PLW1509
        while proc.poll() is None and not stop.is_set():
            stop.wait(0.5)
        if stop.is_set():
            # this thread must outlive the child: its death signal is tied to it
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            return
        log.error("hub ingest exited with %s; starting it again in %.0f s", proc.returncode, delay)
        delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 60)
        stop.wait(delay)


def serve(config: Config) -> int:
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_ingest, args=(config, stop), daemon=True, name="ingest-watch"
    )
    if config["mqtt"]["enabled"]:
        watcher.start()
    w = config["web"]
    log.info(
        "hub API on http://%s:%s/api/studies (data: %s)", w["host"], w["port"], config.data_dir
    )
    try:
        _run_gunicorn(config)
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(timeout=30)
    return 0


def _run_gunicorn(config: Config) -> None:
    w = config["web"]
    # before the app's figures are made and the workers fork: one set of request figures
    # for all the workers, whichever answers the scrape
    share_between_processes(config.data_dir / "run" / "metrics")
    _Gunicorn(
        create_app(config),
        {
            "bind": f"{w['host']}:{w['port']}",
            "workers": w["workers"],
            # threads: a browser's idle keep-alive or preconnected socket must not hold
            # a whole worker (the sync worker serves one connection at a time)
            "worker_class": "gthread",
            "threads": 4,
            "loglevel": config["log_level"].lower(),
            "accesslog": None,
            # one shared control socket per user would make two hubs on one machine
            # fight over it; the hub is managed by signals and its unit instead
            "control_socket_disable": True,
            "child_exit": lambda _server, worker: worker_gone(worker.pid),
        },
    ).run()
