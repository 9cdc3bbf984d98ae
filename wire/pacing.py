"""Pacing a metered link, sans I/O: sync windows by local time of day and the
bandwidth cap as a token bucket. The caller passes the clock in."""

from __future__ import annotations

import re
from datetime import datetime


def parse_window(text: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` (local time, may wrap past midnight) as minutes of the day."""
    m = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)", text.strip())
    if not m:
        raise ValueError(f'{text!r} is not like "22:00-06:00"')
    a, b = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    if a == b:
        raise ValueError(f"{text!r} is empty (start equals end)")
    return a, b


def in_windows(windows: list[str], now: datetime) -> bool:
    """Is local time ``now`` inside one of the ``"HH:MM-HH:MM"`` windows (none: always)?"""
    if not windows:
        return True
    minute = now.hour * 60 + now.minute
    for w in windows:
        a, b = parse_window(w)
        if (a < b and a <= minute < b) or (a > b and (minute >= a or minute < b)):
            return True
    return False


class TokenBucket:
    """The bandwidth cap: bytes may go while the balance is not negative; it refills at
    ``rate`` bytes a second up to one second's worth. ``rate`` 0: no cap."""

    def __init__(self, rate: float, now: float = 0.0):
        self.rate = rate
        self.balance = 0.0
        self.at = now  # the caller's clock (monotonic seconds)

    def ready(self, now: float) -> bool:
        if not self.rate:
            return True
        self.balance = min(self.rate, self.balance + (now - self.at) * self.rate)
        self.at = now
        return self.balance >= 0

    def spend(self, n: int) -> None:
        if self.rate:
            self.balance -= n

    def wait_hint(self) -> float:
        return 0.0 if not self.rate or self.balance >= 0 else -self.balance / self.rate
