"""Servers that tests and benches start as plain child processes (PostgreSQL,
SeaweedFS): each in a session of its own, its output appended to a log file, waited for
until it answers, and ended with its whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session, its output appended to ``log``."""
    with open(log, "ab") as logf:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)


def until_ready(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float, what: str, log: Path
) -> None:
    """Wait until ``ready()`` (asked every 0.2 s); an error naming ``log`` if the
    process ends first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: see {log}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer in {timeout:.0f} s: see {log}")


def kill_group(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL to the process and everything it started: the power cut."""
    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def end_group(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    """``sig`` to the whole group, then SIGKILL if it has not ended within ``timeout``."""
    if proc and proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
