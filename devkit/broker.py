"""A real Mosquitto on a free port, and a real hub (``radsetu hub serve``), as child
processes, for tests, benchmarks and the demo. TLS material is made on the spot with
openssl: nothing secret is ever kept in the repository."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from devkit.box import free_port, wait_port
from devkit.servers import kill_group

MESSAGE_SIZE_LIMIT = 16 * 1024 * 1024


def make_certs(folder: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Path:
    """A throwaway CA, a server certificate for ``hosts`` and client certificates for
    ``box`` and ``hub``, in ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=RadSetu test CA", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    san = ",".join(f"IP:{h}" if h[0].isdigit() else f"DNS:{h}" for h in hosts)
    for name, cn, ext in (
        ("server", hosts[0], f"subjectAltName={san}"),
        ("box", "test-box", "extendedKeyUsage=clientAuth"),
        ("hub", "hub", "extendedKeyUsage=clientAuth"),
    ):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        (folder / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
            "-out", f"{name}.crt")  # fmt: skip
    for p in folder.glob("*.key"):
        p.chmod(0o644)  # mosquitto may run as another user when started as root
    return folder


class Broker:
    """Mosquitto on a free port. ``tls_dir`` (from ``make_certs``): TLS with client
    certificates required; ``users``: a password file, anonymous access off."""

    def __init__(
        self,
        workdir: Path,
        persistence: bool = True,
        tls_dir: Path | None = None,
        users: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        verbose: bool = True,
    ):
        self.workdir = Path(workdir)
        self.verbose = verbose  # every packet in the log (tests read it; benches need not)
        self.host = host
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls_dir = tls_dir
        import getpass

        lines = [
            # started as root, mosquitto would become the user "mosquitto", who cannot
            # read a test's private folder: stay who we are
            f"user {getpass.getuser()}",
            f"listener {self.port} {host}",
            f"message_size_limit {MESSAGE_SIZE_LIMIT}",
            "max_inflight_messages 20",
            "max_queued_messages 1000",
            "persistent_client_expiration 1d",
        ]
        if persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
                "autosave_on_changes true",
            ]
        if tls_dir is not None:
            lines += [
                f"cafile {tls_dir / 'ca.crt'}",
                f"certfile {tls_dir / 'server.crt'}",
                f"keyfile {tls_dir / 'server.key'}",
                "require_certificate true",
            ]
        if users:
            pw = self.workdir / "passwd"
            pw.write_text("")
            for user, password in users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pw), user, password],
                    check=True,
                    capture_output=True,
                )
            pw.chmod(0o644)
            lines += [f"password_file {pw}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> Broker:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf), *(["-v"] if self.verbose else [])],
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
        logf.close()
        if self.host in ("127.0.0.1", "0.0.0.0"):
            wait_port(self.port, proc=self.proc)
        else:
            time.sleep(0.5)
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def mqtt_config(self, who: str = "box") -> dict[str, object]:
        """The ``[mqtt]`` section a box (or, with ``who="hub"``, the hub) needs."""
        cfg: dict[str, object] = {"host": "127.0.0.1", "port": self.port, "keepalive": 5}
        if self.tls_dir is not None:
            cfg.update(
                tls=True,
                ca_file=str(self.tls_dir / "ca.crt"),
                cert_file=str(self.tls_dir / f"{who}.crt"),
                key_file=str(self.tls_dir / f"{who}.key"),
            )
        return cfg


def hub_account(config: Path, name: str, role: str, password: str = "") -> str:
    """Add an account to the hub with this config file (through the CLI, as an operator
    would) and return a new API token for it."""
    cli = [sys.executable, "-m", "radsetu", "hub"]
    subprocess.run(
        [*cli, "user", "add", name, "--role", role, "--config", str(config)],
        input=(password or secrets.token_urlsafe(16)) + "\n",
        text=True,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [*cli, "token", "add", name, "--config", str(config)],
        text=True,
        check=True,
        capture_output=True,
    )
    return out.stdout.strip()


class Hub:
    """``radsetu hub serve`` with its own data folder, on a free port."""

    def __init__(
        self,
        workdir: Path,
        mqtt: dict[str, object],
        workers: int = 1,
        sections: dict[str, dict[str, object]] | None = None,
        web: dict[str, object] | None = None,
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.web_port = free_port()
        self.config = self.workdir / "hub.toml"
        lines = [
            f'data_dir = "{self.data_dir}"',
            "[web]",
            f"port = {self.web_port}",
            f"workers = {workers}",
            *(f"{k} = {json.dumps(v)}" for k, v in (web or {}).items()),
            "[mqtt]",
            *(f"{k} = {json.dumps(v)}" for k, v in mqtt.items()),
        ]
        for name, values in (sections or {}).items():
            lines += [f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
        self.config.write_text("\n".join(lines) + "\n")
        self.log = self.workdir / "hub.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start(self) -> Hub:
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "radsetu", "hub", "serve", "--config", str(self.config)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes the ingest too
            env={**os.environ},
        )
        logf.close()
        wait_port(self.web_port, proc=self.proc)
        if not self.token:
            self.token = self.add_user("devkit-admin", "admin", secrets.token_urlsafe(16))
        return self

    def add_user(self, name: str, role: str, password: str) -> str:
        """An account on this hub (through the CLI); returns an API token for it."""
        return hub_account(self.config, name, role, password)

    def kill(self) -> None:
        """SIGKILL to the hub and its ingest, as a power cut would."""
        kill_group(self.proc)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def api(
        self, path: str, body: dict | None = None, method: str | None = None, token: str = ""
    ) -> dict:
        """GET, or send ``body`` as JSON (POST unless ``method`` says otherwise), as the
        devkit's admin (or with ``token``)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.web_port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token or self.token}",
            },
            method=method,
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
