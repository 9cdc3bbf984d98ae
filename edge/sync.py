"""The box's sync agent: ready studies go to the hub over MQTT v5, STAT first.

Two threads. The packer packs ready studies into the outbox (``edge.outbox``), STAT
first; it runs whether the link is up or not. The agent thread owns the MQTT client
(paho-mqtt, driven with ``loop()`` from this one thread, so nothing in paho is shared
between threads) and does, in turn: connect or reconnect (exponential backoff with
jitter), read the hub's acks, hand out chunks through ``wire.transfer.Uplink`` within
its window, the bandwidth cap and the sync windows, persist what the hub holds, and
publish the retained status.

The protocol as it runs is described in ``docs/sync.md``. In short: after every
(re)connection the agent sends each unfinished transfer's manifest with a fresh MQTT v5
correlation id; the hub answers with what it holds, and only then do that transfer's
missing chunks go. What the hub acknowledged is never sent again, whatever restarted.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import ssl
import threading
import time
import uuid
from collections import deque
from datetime import datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _v
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.clock import utcnow
from common.mqtt import connect_properties, mqtt_client
from edge import reports
from edge.config import Config, parse_window
from edge.holds import held_summary
from edge.outbox import Outbox, backlog
from edge.store import Store
from wire import frames
from wire.errors import RemoteProtocolError
from wire.manifest import Priority
from wire.ranges import RangeSet
from wire.report import decode_report
from wire.report import encode_ack as encode_report_ack
from wire.transfer import TransferVerified, Uplink

HUB_STATES = ("being read",)
log = logging.getLogger("radsetu.sync")

LOCAL_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}
LOCAL_RETRY_SECONDS = 5.0
PERSIST_EVERY = 1.0  # seconds between writes of what the hub holds
PRIORITY_EVERY = 0.5  # seconds between reads of priorities people may have changed


def version() -> str:

    try:
        return _v("radsetu")
    except PackageNotFoundError:
        return "unknown"


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

    def __init__(self, rate: float):
        self.rate = rate
        self.balance = 0.0
        self.at = time.monotonic()

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


class Agent:
    def __init__(self, config: Config, store: Store, outbox: Outbox):
        self.config = config
        self.box_id = config.box_id
        self.study_mids: dict[int, tuple[str, str, str]] = {}
        self.study_inflight: dict[str, int] = {}
        self.last_study_check = 0.0
        self.clinic = str(config["clinic"])
        self.m = config["mqtt"]
        self.s = config["sync"]
        self.store = store
        self.outbox = outbox
        self.uplink = Uplink(self.s["window"], float(self.s["ack_timeout_seconds"]))
        self.bucket = TokenBucket(float(self.s["max_bytes_per_second"]))
        self.stop_event = threading.Event()
        self.events: deque[tuple[str, Any]] = deque()  # from the packer and callbacks
        self.threads: list[threading.Thread] = []
        self.client: mqtt.Client | None = None
        self.connected = False
        self.connecting_since: float | None = None
        self.ever_connected = False
        self.backoff = float(self.s["reconnect_min_seconds"])
        self.next_attempt = 0.0
        self.token = b""  # correlation id of this connection's manifests
        self.resync_due = False
        self.manifest_sent: dict[str, float] = {}
        self.manifest_tries: dict[str, int] = {}
        self.attempts: dict[tuple[str, int], int] = {}
        self.acked_dirty: set[str] = set()
        self.sent_counts: dict[str, list[int]] = {}
        self.last_persist = 0.0
        self.last_priorities = 0.0
        self.last_status = 0.0
        self.status_seq = 0
        self.last_sync: str | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()  # guards the figures read by the web API
        self.totals = {"chunks_sent": 0, "chunks_resent": 0, "bytes_sent": 0}
        self._pending: list[tuple[str, int, int]] = []  # a copy for other threads

    # -- life ---------------------------------------------------------------------

    def start(self) -> Agent:
        self.outbox.clean()
        current = self.outbox.priorities()
        for row in self.outbox.unfinished():
            self._queue(row["transfer_id"], row["seq"], row["acked"], current)
        for name, target in (("packer", self._packer_loop), ("sync", self._run)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self.threads.append(t)
        log.info(
            "sync agent for box %s: broker %s:%s%s, %d transfers to resume",
            self.box_id,
            self.m["host"],
            self.m["port"],
            " (TLS)" if self.m["tls"] else "",
            len(self.uplink.transfers),
        )
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=10)
        self.outbox.close()

    def _queue(
        self, transfer_id: str, seq: int, acked_json: str | None, current: dict[str, Priority]
    ) -> None:
        manifest = self.outbox.manifest(transfer_id)
        self.uplink.queue(manifest, seq)
        if acked_json:
            t = self.uplink.transfers[transfer_id]
            t.acked = RangeSet.from_json(json.loads(acked_json), manifest.chunk_count)
        self.uplink.set_priority(transfer_id, current.get(transfer_id, manifest.priority))

    # -- packer thread ------------------------------------------------------------

    def _packer_loop(self) -> None:
        while not self.stop_event.is_set():
            uid = None
            try:
                self.outbox.holds.retry_due()
                uid = self.outbox.next_ready()
                if uid is None:
                    self.stop_event.wait(0.5)
                    continue
                packed = self.outbox.pack_study(uid)
                if packed is not None:
                    self.events.append(("packed", packed))
            except Exception as exc:
                # the study waits with a growing back-off, shown on the clinic's page
                # and the fleet dashboard; the rest of the outbox goes meanwhile
                self.last_error = f"packing {uid}: {exc}"
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

    # -- agent thread -------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        c = mqtt_client(f"radsetu-box-{self.box_id}", self.m)
        c.max_inflight_messages_set(self.s["window"] + 4)  # chunks + manifests + status
        c.will_set(
            frames.topic(self.box_id, frames.STATUS),
            json.dumps(
                {
                    "box_id": self.box_id,
                    "online": False,
                    "link": "down",
                    "reason": "connection lost",
                }
            ),
            qos=1,
            retain=True,
        )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        return c

    def _run(self) -> None:
        self.client = self._make_client()
        try:
            while not self.stop_event.is_set():
                try:
                    self._step()
                except Exception as exc:  # keep syncing; the box keeps receiving
                    log.exception("sync agent error; carrying on in 5 s")
                    self.last_error = f"sync agent error: {exc}"
                    self.stop_event.wait(5)
        finally:
            self._goodbye()

    def _step(self) -> None:
        assert self.client is not None
        now = time.monotonic()
        self._maybe_connect(now)
        busy = False
        if self.connected or self.connecting_since is not None:
            rc = self.client.loop(timeout=0.01)
            if rc is not MQTTErrorCode.MQTT_ERR_SUCCESS and (
                self.connected or self.connecting_since is not None
            ):
                self._lost(f"network: {mqtt.error_string(rc)}")
        if self.connected and self.resync_due:
            self.resync_due = False
            self.token = uuid.uuid4().bytes
            self.manifest_sent.clear()
            self.manifest_tries.clear()
            for tid in self.uplink.reconnected():
                self._publish_manifest(tid)
            self._publish_status(now)
        self._drain()
        if self.connected:
            busy = self._send(time.monotonic())
        self._housekeeping(time.monotonic())
        if not self.connected:
            self.stop_event.wait(0.1)
        elif not busy:
            self.stop_event.wait(min(0.05, self.bucket.wait_hint() or 0.01))

    def _maybe_connect(self, now: float) -> None:
        assert self.client is not None
        if self.connecting_since is not None and now - self.connecting_since > max(
            10.0, 1.5 * self.m["keepalive"]
        ):
            self._lost("the broker did not answer CONNECT")
        if self.connected or self.connecting_since is not None or now < self.next_attempt:
            return
        try:
            if self.ever_connected:
                self.client.reconnect()
            else:
                self.client.connect(
                    self.m["host"],
                    self.m["port"],
                    keepalive=self.m["keepalive"],
                    clean_start=False,
                    properties=connect_properties(self.m),
                )
                self.ever_connected = True
            self.connecting_since = now
        except (OSError, ssl.SSLError, ValueError) as exc:
            # no route: the box's own link is down and nothing reached the broker, so
            # looking again soon costs the broker nothing and finds the link sooner
            local = getattr(exc, "errno", None) in LOCAL_ERRNOS
            self._retry_later(
                f"cannot reach the broker {self.m['host']}:{self.m['port']}: {exc}",
                cap=LOCAL_RETRY_SECONDS if local else None,
            )

    def _retry_later(self, why: str, cap: float | None = None) -> None:
        backoff = min(self.backoff, cap) if cap else self.backoff
        delay = backoff / 2 + random.uniform(0, backoff / 2)  # equal jitter
        self.next_attempt = time.monotonic() + delay
        self.backoff = min(self.backoff * 2, float(self.s["reconnect_max_seconds"]))
        if why != self.last_error:
            log.warning("%s; trying again in %.1f s", why, delay)
        self.last_error = why

    def _lost(self, why: str) -> None:
        was = self.connected
        if not was and self.connecting_since is not None and "refused" not in why:
            why = (
                f"the broker closed the connection before accepting the box ({why}): with "
                "TLS, check [mqtt] cert_file, key_file and ca_file"
            )
        self.connected = False
        self.connecting_since = None
        self.uplink.disconnected()  # reconnect() closes whatever socket is left
        if self.stop_event.is_set():
            return
        if was:
            log.warning("link to the broker lost (%s)", why)
        self._retry_later(why)

    # paho callbacks: they run inside loop(), on this same thread

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        self.connecting_since = None
        if rc.is_failure:
            self._lost(
                f"the broker refused the box: {rc} (check [mqtt] username and password, "
                "or the box's certificate)"
            )
            return
        self.connected = True
        self.backoff = float(self.s["reconnect_min_seconds"])
        self.last_error = None
        log.info(
            "connected to the broker %s:%s (session %s)",
            self.m["host"],
            self.m["port"],
            "resumed" if flags.session_present else "new",
        )
        client.subscribe(
            [
                (frames.topic(self.box_id, frames.DOWN_ACK), 1),
                (frames.topic(self.box_id, frames.DOWN_REPORT), 1),
                (frames.topic(self.box_id, frames.DOWN_STUDY), 1),
            ]
        )
        self.study_inflight.clear()  # unconfirmed updates go again
        # the manifests go on the next step, after paho has queued its resends of
        # what was in flight: the hub's answer must come after those copies arrived
        self.resync_due = True

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.connected or self.connecting_since is not None:
            self._lost(f"disconnected: {rc}")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith(frames.DOWN_REPORT):
            self.events.append(("report", msg.payload))
            return
        if msg.topic.endswith(frames.DOWN_STUDY):
            self.events.append(("study", msg.payload))
            return
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        self.events.append(("ack", (msg.payload, corr)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        if rc.is_failure:  # paho counts a refused publish as published: say so
            log.error("the broker refused message %d: %s (ACL or size limit?)", mid, rc)
            self.last_error = f"broker refused a message: {rc}"
            return
        done = self.study_mids.pop(mid, None)
        if done is not None:  # the broker has the update: clear it unless it changed since
            self.outbox.db.execute(
                "UPDATE studies SET update_pending=0 WHERE study_uid=? AND priority=? "
                "AND clinical_note=?",
                list(done),
            )
            self.study_inflight.pop(done[0], None)

    # events

    def _drain(self) -> None:
        while self.events:
            kind, value = self.events.popleft()
            if kind == "packed":
                self.uplink.queue(self.outbox.manifest(value.transfer_id), value.seq)
                self.uplink.set_priority(value.transfer_id, value.priority)
                if self.connected:
                    self._publish_manifest(value.transfer_id)
            elif kind == "ack":
                self._take_ack(*value)
            elif kind == "report":
                self._take_report(value)
            elif kind == "study":
                self._take_study(value)
            elif kind == "printed":
                assert self.client is not None
                self.client.publish(
                    frames.topic(self.box_id, frames.UP_REPORT_ACK),
                    encode_report_ack(*value, printed=True),
                    qos=1,
                )

    def report_printed(self, report_id: str, version: int) -> None:
        """From the printer thread: tell the hub (for the turnaround time)."""
        self.events.append(("printed", (report_id, version)))

    def _take_report(self, payload: bytes) -> None:
        """Keep a report durably, then acknowledge it (again, if it was kept before)."""
        assert self.client is not None
        try:
            report, pdf = decode_report(payload)
        except RemoteProtocolError as exc:
            log.warning("refused a report from the hub: %s", exc)
            return
        reports.keep(self.store, report, pdf)
        self.client.publish(
            frames.topic(self.box_id, frames.UP_REPORT_ACK),
            encode_report_ack(report["report_id"], report["version"]),
            qos=1,
        )

    def _take_study(self, payload: bytes) -> None:
        """The hub's word on a study: a radiologist started reading it."""
        try:
            msg = json.loads(payload)
            uid, state = msg["study_uid"], msg["state"]
            if not isinstance(uid, str) or state not in HUB_STATES:
                raise ValueError(f"state {state!r}")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed study message from the hub: %s", exc)
            return
        self.outbox.db.execute(
            "UPDATE studies SET hub_state=?, hub_state_at=? WHERE study_uid=?",
            [state, utcnow(), uid],
        )

    def _publish_study_updates(self) -> None:
        """STAT marks and clinical notes made at the clinic after the study was packed
        go to the hub on their own; cleared once the broker has them (``_on_publish``)."""
        assert self.client is not None
        for uid, priority, note in self.outbox.db.execute(
            "SELECT study_uid, priority, clinical_note FROM studies WHERE update_pending=1"
        ).fetchall():
            if uid in self.study_inflight:
                continue
            body = {"study_uid": uid, "priority": priority, "clinical_note": note}
            info = self.client.publish(
                frames.topic(self.box_id, frames.UP_STUDY),
                json.dumps(body, separators=(",", ":")),
                qos=1,
            )
            self.study_mids[info.mid] = (uid, priority, note)
            self.study_inflight[uid] = info.mid

    def _take_ack(self, payload: bytes, corr: bytes | None) -> None:
        try:
            ack = json.loads(payload)
            if not isinstance(ack, dict) or not isinstance(ack.get("transfer_id"), str):
                raise ValueError("no transfer_id")
        except ValueError as exc:
            log.warning("ignoring a malformed ack from the hub: %s", exc)
            return
        tid = ack["transfer_id"]
        if tid not in self.uplink.transfers:
            return
        if ack.get("unknown"):  # the hub lost or never got the manifest
            if time.monotonic() - self.manifest_sent.get(tid, 0) > 5:
                log.info("hub does not know transfer %s: sending its manifest again", tid)
                self._publish_manifest(tid)
            return
        try:
            events = self.uplink.receive_ack(ack, fresh=corr == self.token and bool(corr))
        except RemoteProtocolError as exc:
            log.warning("ignoring an ack the hub got wrong: %s", exc)
            return
        self.last_sync = utcnow()
        self.acked_dirty.add(tid)
        self.manifest_tries.pop(tid, None)
        for ev in events:
            if isinstance(ev, TransferVerified):
                acked = self.uplink.transfers[tid].acked
                self.outbox.verified(tid, acked)
                self.uplink.forget(tid)
                self.acked_dirty.discard(tid)
                self.manifest_sent.pop(tid, None)
                for key in [k for k in self.attempts if k[0] == tid]:
                    del self.attempts[key]
                self._publish_status(time.monotonic())

    # publishing

    def _publish_manifest(self, tid: str) -> None:
        assert self.client is not None
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = self.token
        self.client.publish(
            frames.topic(self.box_id, frames.UP_MANIFEST),
            self.outbox.manifest_bytes(tid),
            qos=1,
            properties=props,
        )
        self.manifest_sent[tid] = time.monotonic()

    def _send(self, now: float) -> bool:
        """Hand out chunks while the window, the cap and the sync windows allow."""
        assert self.client is not None
        only = None
        if not in_windows(self.s["windows"], datetime.now()):
            if not self.s["stat_ignores_windows"]:
                return False
            only = Priority.STAT
        sent = False
        while self.bucket.ready(now):
            picks = self.uplink.next_chunks(now, limit=1, only=only)
            if not picks:
                break
            tid, i = picks[0]
            attempt = self.attempts.get((tid, i), -1) + 1
            self.attempts[(tid, i)] = attempt
            payload = frames.encode_chunk(tid, i, self.outbox.chunk(tid, i), attempt)
            self.client.publish(frames.topic(self.box_id, frames.UP_CHUNK), payload, qos=1)
            self.bucket.spend(len(payload))
            counts = self.sent_counts.setdefault(tid, [0, 0])
            counts[0] += 1
            counts[1] += attempt > 0
            with self._lock:
                self.totals["chunks_sent"] += 1
                self.totals["chunks_resent"] += attempt > 0
                self.totals["bytes_sent"] += len(payload)
            sent = True
            self.client.loop_write()
        return sent

    def _housekeeping(self, now: float) -> None:
        with self._lock:
            self._pending = self.uplink.pending()
        if now - self.last_persist >= PERSIST_EVERY:
            self.last_persist = now
            if self.acked_dirty:
                self.outbox.record_acked(
                    {
                        t: self.uplink.transfers[t].acked
                        for t in self.acked_dirty
                        if t in self.uplink.transfers
                    }
                )
                self.acked_dirty.clear()
            if self.sent_counts:
                self.outbox.record_sent({t: (c[0], c[1]) for t, c in self.sent_counts.items()})
                self.sent_counts.clear()
        if now - self.last_priorities >= PRIORITY_EVERY:
            self.last_priorities = now
            for tid, prio in self.outbox.priorities().items():
                if tid in self.uplink.transfers and self.uplink.transfers[tid].priority is not prio:
                    log.info("transfer %s: priority now %s", tid, prio.value)
                    self.uplink.set_priority(tid, prio)
        if self.connected:
            # a manifest whose answer never came (lost with a broker restart, or sent
            # before the hub subscribed again) goes again: after 5 s, then 10, 20... 60
            for tid in self.uplink.awaiting():
                wait = min(60.0, 5.0 * 2 ** self.manifest_tries.get(tid, 0))
                if now - self.manifest_sent.get(tid, 0) > wait:
                    self.manifest_tries[tid] = self.manifest_tries.get(tid, 0) + 1
                    self._publish_manifest(tid)
            if now - self.last_status >= self.s["status_seconds"]:
                self._publish_status(now)
            if now - self.last_study_check >= 1.0:
                self.last_study_check = now
                self._publish_study_updates()

    def status(self, db: Any = None) -> dict[str, Any]:
        """What the box tells the hub (and its own page) about itself; ``db``: a
        connection of the caller's thread (the agent's own by default)."""
        with self._lock:
            totals = dict(self.totals)
        with self._lock:
            pending = list(self._pending)
        sending = [
            {"transfer_id": tid, "chunks_acked": acked, "chunk_count": count}
            for tid, acked, count in pending
        ]
        return {
            "box_id": self.box_id,
            "clinic": self.clinic,
            "online": True,
            "link": "up" if self.connected else "down",
            "version": version(),
            **backlog(db if db is not None else self.outbox.db),
            **held_summary(db if db is not None else self.outbox.db),
            "last_sync": self.last_sync,
            "disk_free": self.store.free_bytes(),
            "reserve_bytes": self.store.reserve_bytes,
            "sending": sending,
            "last_error": self.last_error,
            "sent_at": utcnow(),  # the box's clock, which may be wrong
            "seq": self.status_seq,
            **totals,
        }

    def _publish_status(self, now: float) -> None:
        assert self.client is not None
        self.last_status = now
        with self._lock:
            self._pending = self.uplink.pending()
        self.status_seq += 1
        self.client.publish(
            frames.topic(self.box_id, frames.STATUS),
            json.dumps(self.status()),
            qos=1,
            retain=True,
        )

    def _goodbye(self) -> None:
        """A clean stop: persist, say offline (retained), disconnect."""
        try:
            if self.acked_dirty:
                self.outbox.record_acked(
                    {
                        t: self.uplink.transfers[t].acked
                        for t in self.acked_dirty
                        if t in self.uplink.transfers
                    }
                )
            if self.sent_counts:
                self.outbox.record_sent({t: (c[0], c[1]) for t, c in self.sent_counts.items()})
            if self.client is not None and self.connected:
                info = self.client.publish(
                    frames.topic(self.box_id, frames.STATUS),
                    json.dumps(
                        {**self.status(), "online": False, "link": "down", "reason": "stopped"}
                    ),
                    qos=1,
                    retain=True,
                )
                deadline = time.monotonic() + 3
                while not info.is_published() and time.monotonic() < deadline:
                    self.client.loop(timeout=0.1)
                self.client.disconnect()
                self.client.loop(timeout=0.1)
        except Exception:  # noqa: BLE001 - stopping anyway
            log.exception("while stopping the sync agent")
