"""What /proc says of a process: its memory and its threads (for benches and tests)."""

from __future__ import annotations

from pathlib import Path


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads of a running process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out
