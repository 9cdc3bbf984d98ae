"""A real PostgreSQL server for tests and benchmarks: Debian's ``postgresql`` binaries,
a new cluster in a folder, on a free loopback port, as a plain process. PostgreSQL
refuses to run as root, so as root the cluster belongs to the ``postgres`` user that
Debian's package makes, and the server runs as that user."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from devkit.box import free_port
from devkit.servers import end_group, kill_group, spawn, until_ready

DATABASE = "radsetu"
USER = "radsetu"


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary (Debian keeps them out of PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if not path:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian: postgresql)")
    return path


class Postgres:
    """One cluster in ``workdir/data`` on a free port; ``url`` for the hub's index."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster = self.workdir
        if os.getuid() == 0:
            # the server's user must reach its folder, and a test's folder is root's
            # only (0700): the cluster gets a folder of its own, removed by stop()
            self.cluster = Path(tempfile.mkdtemp(prefix="radsetu-pg-"))
            self.cluster.chmod(0o755)
            shutil.chown(self.cluster, "postgres")
        self.data = self.cluster / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []

    def start(self, timeout: float = 60) -> Postgres:
        if not self.data.exists():
            subprocess.run(
                [*self._as_owner(), pg_bin("initdb"), "-D", str(self.data), "-U", USER,
                 "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
                check=True, capture_output=True,
            )  # fmt: skip
        self.proc = spawn(
            [*self._as_owner(), pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data}",
             "-c", "max_connections=200"],
            self.log,
        )  # fmt: skip

        def ready() -> bool:
            probe = [pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)]
            return subprocess.run(probe, capture_output=True).returncode == 0

        until_ready(self.proc, ready, timeout, "PostgreSQL", self.log)
        subprocess.run(
            [pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE],
            capture_output=True,
        )  # already there after a restart: that is fine
        return self

    def create_database(self, name: str) -> str:
        """A new, empty database in this cluster; its URL."""
        subprocess.run(
            [pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name],
            check=True, capture_output=True,
        )  # fmt: skip
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def kill(self) -> None:
        """SIGKILL to the server (through runuser as root), and wait until the
        postmaster is gone, so that a restart finds its lock file stale."""
        pid_file = self.data / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else 0
        kill_group(self.proc)
        deadline = time.monotonic() + 10
        while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        end_group(self.proc, signal.SIGINT, 20)  # PostgreSQL's "fast" shutdown

    def remove(self) -> None:
        """Stop, and remove the cluster's folder when it was made outside ``workdir``."""
        self.stop()
        if self.cluster != self.workdir:
            shutil.rmtree(self.cluster, ignore_errors=True)
