"""The hub's periodic jobs, each run by one process of the cluster at a time.

Every ingest process (one ``hub.mqtt.Ingest`` per broker) ticks its ``Jobs`` about
once a second; a tick does a job's work only while this process holds the job's lease
(hub/leases.py):

- ``deliver:<broker>``: send the signed reports, the study notices and the requests to
  send studies again that the boxes on that broker have not acknowledged, through
  this process's client for it;
- ``retention`` (the primary broker's ingest only): drop what the hub keeps for a
  while only (``[retention]``), once an hour.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from hub import critical, leases, notify, reading, reports, resends
from hub.store import FileHubStore
from hub.studykeys import real_uid
from wire import frames
from wire.messages import StudyNotice

log = logging.getLogger("radsetu.hub.jobs")

REPORT_RETRY_SECONDS = 30.0  # a delivery not acknowledged goes again after this long
RETENTION_EVERY_SECONDS = 3600.0


def prune(store: FileHubStore, retention: dict[str, Any], now: float) -> int:
    """Drop each box's history rows older than ``retention.box_history_days``; how many
    rows went. The audit log is kept whole (append-only)."""
    return store.prune_history(now - retention["box_history_days"] * 86400)


class Jobs:
    """One ingest process's share of the periodic work for one broker."""

    def __init__(
        self,
        store: FileHubStore,
        config: Any,
        publish: Callable[[str, bytes], Any],
        connected: Callable[[], bool],
        broker: str | None,
        primary: bool,
    ):
        self.store, self.config = store, config
        self.publish, self.connected = publish, connected
        self.broker, self.primary = broker, primary
        self.holder = leases.holder_id()
        self.deliver_job = f"deliver:{broker or 'fleet'}"
        self._pruned_at = 0.0

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        try:
            if self.connected() and leases.take(self.store, self.deliver_job, self.holder):
                self.deliver(now)
            if self.primary and leases.take(self.store, "retention", self.holder):
                if now - self._pruned_at > RETENTION_EVERY_SECONDS:
                    self._pruned_at = now
                    gone = prune(self.store, self.config["retention"], now)
                    if gone:
                        log.info("retention: %d rows of box history dropped", gone)
        except Exception:  # the next tick tries again
            log.exception("a periodic job failed")

    def deliver(self, now: float) -> None:
        """Reports due (hub.reports.due claims each as it picks it), then notices (each
        claimed before it goes: another process never sends it too), then requests to
        send studies again (claimed alike)."""
        for box_id, message in reports.due(
            self.store, now, REPORT_RETRY_SECONDS, self.broker, self.primary
        ):
            self.publish(frames.topic(box_id, frames.DOWN_REPORT), message)
        for nid, box_id, uid, state in reading.unsent_notices(
            self.store, broker=self.broker, primary=self.primary
        ):
            if reading.notice_sent(self.store, nid):
                body = StudyNotice(real_uid(uid), state).encode()
                self.publish(frames.topic(box_id, frames.DOWN_STUDY), body)
        for box_id, message in resends.due(self.store, now, self.broker, self.primary):
            self.publish(frames.topic(box_id, frames.DOWN_RESEND), message)

    def release(self) -> None:
        """A clean stop: the jobs pass to another process at its next tick."""
        for job in (self.deliver_job, "retention"):
            try:
                leases.release(self.store, job, self.holder)
            except Exception:  # noqa: BLE001 - the lease runs out on its own
                log.warning("could not release the lease on %s", job)


class Notifier:
    """The ``notify`` job (hub/notify.py: a critical result's SMS and e-mail) in a thread
    of its own with its own index connection, so that a slow gateway or mail server
    never holds up the ingest; once across the cluster (its lease)."""

    def __init__(self, store: FileHubStore, config: Any):
        self.store, self.config = store, config
        self.holder = leases.holder_id()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="notify", daemon=True)

    def start(self) -> Notifier:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                if leases.take(self.store, "notify", self.holder):
                    critical.escalate_due(self.store, self.config["critical"]["confirm_minutes"])
                    notify.send_due(self.store, self.config, time.time())
            except Exception:  # the next round tries again
                log.exception("sending notifications failed")

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
        try:
            leases.release(self.store, "notify", self.holder)
        except Exception:  # noqa: BLE001 - the lease runs out on its own
            log.warning("could not release the lease on notify")
