"""systemd's notify protocol, without a library: READY when the box serves, STOPPING
when it stops, and the watchdog fed only while the box's own parts are alive (so that
systemd restarts a box that hangs, not only one that dies). Outside systemd (no
``NOTIFY_SOCKET``) everything here does nothing."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("radsetu.edge")


def notify(message: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr.startswith("@"):  # an abstract socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode(), addr)
    except OSError as exc:
        log.warning("could not tell systemd %r: %s", message, exc)
        return False
    return True


def watchdog_seconds() -> float | None:
    """How often to feed the watchdog (half of WatchdogSec), or None without one."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.1)
    except ValueError:
        return None


class Watchdog(threading.Thread):
    """Feeds systemd's watchdog while ``healthy()`` says the box's parts are alive."""

    def __init__(self, healthy: Callable[[], str | None], stop: threading.Event):
        super().__init__(name="watchdog", daemon=True)
        self.healthy = healthy
        self.stop = stop
        self.every = watchdog_seconds()

    def run(self) -> None:
        if self.every is None:
            return
        while not self.stop.wait(self.every):
            problem = self.healthy()
            if problem is None:
                notify("WATCHDOG=1")
            else:  # systemd restarts the box when the watchdog goes hungry
                log.error("not feeding the watchdog: %s", problem)
                notify(f"STATUS=unhealthy: {problem}")
