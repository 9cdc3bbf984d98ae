"""Which reads of patient data are written to the audit log, and how often.

Each end maps the endpoints that return patient data to an audit action; after a
successful GET of one, the end appends a row (who, what, which study, from where).
A page that refreshes itself every few seconds would write thousands of identical
rows a day, so the same read by the same caller from the same address is written
once per ``COALESCE_SECONDS`` (per process): the log still shows who looked at what,
and when they started.
"""

from __future__ import annotations

import threading
import time
from typing import Any

COALESCE_SECONDS = 600


class Recent:
    """Remembers which reads were written lately."""

    def __init__(self, seconds: float = COALESCE_SECONDS, most: int = 10_000):
        self.seconds = seconds
        self.most = most
        self._at: dict[tuple[Any, ...], float] = {}
        self._lock = threading.Lock()

    def first(self, key: tuple[Any, ...]) -> bool:
        """True when ``key`` was not written in the last ``seconds`` (and note it now)."""
        now = time.monotonic()
        with self._lock:
            if now - self._at.get(key, -self.seconds) < self.seconds:
                return False
            if len(self._at) >= self.most:
                self._at = {k: t for k, t in self._at.items() if now - t < self.seconds}
            self._at[key] = now
            return True


def read_target(view_args: dict[str, Any] | None) -> tuple[str, str]:
    """(study UID, detail) of a read from its URL's arguments."""
    args = view_args or {}
    detail = " ".join(f"{k}={args[k]}" for k in ("series_uid", "sop_uid", "report_id") if k in args)
    return str(args.get("study_uid", "")), detail
