"""The box under systemd's notify protocol: a real box process tells a real datagram
socket READY once it serves, feeds the watchdog while it is healthy, and says
STOPPING on SIGTERM (what Type=notify and WatchdogSec= in its unit rely on)."""

from __future__ import annotations

import socket
import time

from devkit.box import Box


def test_ready_watchdog_and_stopping(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    box = Box(tmp_path / "box")
    box.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    try:
        got = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and got.count("WATCHDOG=1") < 3:
            got.append(sock.recv(4096).decode())
        assert got[0].startswith("READY=1") and "serving DICOM" in got[0]
        assert got.count("WATCHDOG=1") >= 3  # fed every 0.2 s while healthy
        box.stop()
        rest = []
        sock.settimeout(2)
        try:
            while True:
                rest.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest
    finally:
        box.stop()
        sock.close()
