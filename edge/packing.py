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
        self.streams: dict[str, previews.Stream] = {}  # previews of studies receiving

    def run(self) -> None:
        """Until stopped: the previews of STAT studies as their images arrive, then the
        next ready study, STAT first; a failure holds that study with a growing
        back-off while the rest of the outbox goes."""
        while not self.stop_event.is_set():
            uid = None
            try:
                self.outbox.holds.retry_due()
                if self._stream():
                    continue
                uid = self.outbox.next_ready()
                if uid is None:
                    self.stop_event.wait(0.5)
                    continue
                stream = self.streams.pop(uid, None)
                if stream is None and previews.wanted(self.outbox, uid):
                    stream = previews.Stream(self.outbox, uid, self.packed)
                if stream is not None:  # a STAT study's preview goes first
                    stream.finish()
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

    def _stream(self) -> bool:
        """Code and send the previews of the images STAT studies have received so far;
        a study without an image for LULL_SECONDS sends its last batch too. True if
        there was anything to do."""
        receiving = previews.receiving(self.outbox)
        for uid in set(self.streams) - set(receiving):
            if self.outbox.study_row(uid) is None:  # gone from the box: nothing follows
                self.streams.pop(uid).finish()
        did = False
        for uid, lull in receiving.items():
            if uid not in self.streams:
                self.streams[uid] = previews.Stream(self.outbox, uid, self.packed)
            did = self.streams[uid].feed(flush=lull) or did
        return did

    def _hold_study(self, uid: str, reason: str) -> None:
        try:
            delay = self.outbox.holds.hold(uid, 0, "", reason)
        except Exception:  # the index itself is failing (disk full?): wait and see
            log.exception("could not note the failure of study %s", uid)
            self.stop_event.wait(60)
            return
        log.warning("study %s: trying to pack it again in %.0f s", uid, delay)
