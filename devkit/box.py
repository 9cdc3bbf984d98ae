"""Run a real box (``radsetu edge serve``) as a child process, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# Listening ports for the servers the tests start: below the kernel's ephemeral range
# (32768-60999), so that no outgoing connection of any process takes one between the
# check here and the server's bind; picked at random, and never twice by one process,
# so that two test runs at once (make test runs two) rarely meet on one.
_PORTS = range(10000, 32000)
_given: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on or holds now."""
    for _ in range(200):
        port = random.choice(_PORTS)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError("no free port found between 10000 and 32000")


def wait_port(port: int, timeout: float = 20, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class Box:
    """A box with its own data folder and free ports; ``start``/``kill``/``stop``."""

    def __init__(
        self,
        workdir: Path,
        mqtt: dict[str, object] | None = None,
        sync: dict[str, object] | None = None,
        stat: dict[str, object] | None = None,
        printer: str = "",
        box_id: str = "test-box",
        data_dir: Path | None = None,
        clinic: str = "",
        web: dict[str, object] | None = None,
        worklist: dict[str, object] | None = None,
        dicom: dict[str, object] | None = None,
        **store: object,
    ):
        """Without ``mqtt`` the box does not sync; with it, it syncs to that broker."""
        self.workdir = Path(workdir)
        self.box_id = box_id
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir) if data_dir else self.workdir / "data"
        self.dicom_port = free_port()
        self.web_port = free_port()
        self.worklist_port = free_port()
        self.ae_title = "RADSETU"
        self.config = self.workdir / "edge.toml"
        store_cfg = {"reserve_bytes": 0, "quiet_seconds": 60, **store}
        sync_cfg = {"enabled": mqtt is not None, **(sync or {})}
        lines = [
            f'box_id = "{box_id}"',
            f"clinic = {json.dumps(clinic)}",
            f'data_dir = "{self.data_dir}"',
            "[dicom]",
            f"port = {self.dicom_port}",
            *(f"{k} = {json.dumps(v)}" for k, v in (dicom or {}).items()),
            "[worklist]",
            f"port = {self.worklist_port}",
            *(f"{k} = {json.dumps(v)}" for k, v in (worklist or {}).items()),
            "[web]",
            f"port = {self.web_port}",
            *(f"{k} = {json.dumps(v)}" for k, v in (web or {}).items()),
            "[store]",
            *(f"{k} = {json.dumps(v)}" for k, v in store_cfg.items()),
            "[sync]",
            *(f"{k} = {json.dumps(v)}" for k, v in sync_cfg.items()),
            "[mqtt]",
            *(f"{k} = {json.dumps(v)}" for k, v in (mqtt or {}).items()),
            "[print]",
            f"printer = {json.dumps(printer)}",
            "[stat]",
            *(f"{k} = {json.dumps(v)}" for k, v in (stat or {}).items()),
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "box.log"

    def start(self, env: dict[str, str] | None = None) -> Box:
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "radsetu", "edge", "serve", "--config", str(self.config)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        logf.close()
        wait_port(self.dicom_port, proc=self.proc)
        wait_port(self.web_port, proc=self.proc)
        return self

    def add_user(self, name: str, password: str, role: str = "staff", language: str = "en") -> None:
        """An account for the clinic's page, made the way a field engineer would."""
        subprocess.run(
            [sys.executable, "-m", "radsetu", "edge", "user", "add", name, "--role", role,
             "--language", language, "--config", str(self.config)],
            input=password + "\n", text=True, check=True, capture_output=True,
        )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL: what a power cut looks like to the process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def api(self, path: str, body: dict | None = None) -> dict:
        """GET (or POST ``body`` as JSON) on the box's web API."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.web_port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
