"""A box in a network namespace of its own, for the benches of poor links (bench/link.py,
bench/cellular.py): its service started and stopped there, studies sent to it there with
storescu, and the hub's view of the one transfer."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from devkit.box import Box


def start_box(inside: list[str], box: Box) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """``radsetu edge serve`` for ``box`` behind the ``inside`` prefix (``ip netns exec
    NS``); its output goes to the box's log."""
    log = open(box.log, "ab")  # noqa: SIM115 - closed by stop()
    cmd = [*inside, sys.executable, "-m", "radsetu", "edge", "serve", "--config", str(box.config)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log


def stop(proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def storescu(inside: list[str], port: int, files: list[Path], aet: str = "STORESCU") -> None:
    """Send ``files`` to the box's receiver inside the namespace, once it listens, as the
    modality ``aet``."""
    for _ in range(100):
        cmd = [*inside, "storescu", "-aet", aet, "-aec", "RADSETU", "127.0.0.1", str(port)]
        r = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True)
        if r.returncode == 0:
            return
        time.sleep(0.3)
    raise RuntimeError(f"storescu into the namespace failed: {r.stderr[-500:]}")


def hub_transfer(hub: Any) -> dict[str, Any] | None:
    """The hub's one transfer, once it has seen its manifest."""
    rows = hub.api("/api/transfers")["transfers"]
    return rows[0] if rows else None
