"""The box's messages that go to the hub again until the hub answers for them: an
order, a study's STAT mark or clinical note, a critical finding's confirmation, a
report's print.

The broker's PUBACK is not enough: a broker that restarted takes a message before the
hub has subscribed again, and drops it. So each message is kept here under its key,
with the version that went (its digest, or an order's state), and is due again after
15 s, 30 s, 60 s... at most 10 minutes apart, at once when it changed, and at once
after a reconnect (``clear``). The hub's answer (``answered``) for the version sent
last ends it."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

FIRST_SECONDS = 15.0
MOST_SECONDS = 600.0


@dataclass(frozen=True)
class Sent:
    at: float  # monotonic seconds
    times: int
    version: str
    context: Any  # what the caller needs to clear it when the answer comes


class Unanswered:
    def __init__(self) -> None:
        self._sent: dict[Hashable, Sent] = {}

    def due(self, key: Hashable, version: str, now: float) -> bool:
        """Whether the message should go (again) now."""
        s = self._sent.get(key)
        if s is None or s.version != version:
            return True
        return now - s.at >= min(MOST_SECONDS, FIRST_SECONDS * 2 ** (s.times - 1))

    def sent(self, key: Hashable, version: str, now: float, context: Any = None) -> None:
        s = self._sent.get(key)
        times = s.times + 1 if s is not None and s.version == version else 1
        self._sent[key] = Sent(now, times, version, context)

    def answered(self, key: Hashable, version: str) -> Sent | None:
        """The hub has ``version`` of ``key``: what was sent, forgotten; None when the
        answer is for another version (an older one: the newer goes on)."""
        s = self._sent.get(key)
        if s is None or s.version != version:
            return None
        del self._sent[key]
        return s

    def clear(self) -> None:
        """Connected again: everything unanswered goes at once."""
        self._sent.clear()

    def __len__(self) -> int:
        return len(self._sent)
