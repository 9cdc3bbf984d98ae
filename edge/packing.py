"""The box's packer thread: ready studies become transfers, one at a time, STAT
first (a STAT study's lossy preview before its lossless transfer), while the sync
agent sends what is already packed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from edge import previews
from edge.outbox import Outbox, Packed

log = logging.getLogger("radsetu.sync")


class PackerLoop:
    def __init__(
        self,
        outbox: Outbox,
        stop_event: threading.Event,
        packed: Callable[[Packed], None],
        note_error: Callable[[str | None], None],
    ):
        self.outbox, self.stop_event = outbox, stop_event
        self.packed, self.note_error = packed, note_error

    def run(self) -> None:
        """Until stopped: pack the next ready study, STAT first; a failure holds that
        study with a growing back-off while the rest of the outbox goes."""
        while not self.stop_event.is_set():
            uid = None
            try:
                self.outbox.holds.retry_due()
                uid = self.outbox.next_ready()
                if uid is None:
                    self.stop_event.wait(0.5)
                    continue
                if previews.wanted(self.outbox, uid):  # a STAT study's preview goes first
                    previews.pack_preview(self.outbox, uid, self.packed)
                packed = self.outbox.pack_study(uid)
                if packed is not None:
                    self.packed(packed)
            except Exception as exc:
                # the study waits with a growing back-off, shown on the clinic's page
                # and the fleet dashboard; the rest of the outbox goes meanwhile
                self.note_error(f"packing {uid}: {exc}")
                log.exception("packing study %s failed", uid)
                if uid:
                    self._hold_study(uid, f"packing failed: {exc}")
                self.stop_event.wait(1)

    def _hold_study(self, uid: str, reason: str) -> None:
        try:
            delay = self.outbox.holds.hold(uid, 0, "", reason)
        except Exception:  # the index itself is failing (disk full?): wait and see
            log.exception("could not note the failure of study %s", uid)
            self.stop_event.wait(60)
            return
        log.warning("study %s: trying to pack it again in %.0f s", uid, delay)
