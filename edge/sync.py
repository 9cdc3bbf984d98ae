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

import json
import logging
import threading
import time
import uuid
from collections import deque
from datetime import datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _v
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.clock import utcnow
from edge import doctors
from edge.config import Config
from edge.downlink import Downlink
from edge.events import AckArrived, DownArrived, Event
from edge.holds import held_summary
from edge.link import Link
from edge.outbox import Outbox, Packed, backlog
from edge.packing import PackerLoop
from edge.store import Store
from wire import frames
from wire.errors import RemoteProtocolError
from wire.manifest import Priority
from wire.messages import encode_status, parse_ack
from wire.pacing import TokenBucket, in_windows
from wire.ranges import RangeSet
from wire.transfer import TransferVerified, Uplink

log = logging.getLogger("radsetu.sync")

PERSIST_EVERY = 1.0  # seconds between writes of what the hub holds
PRIORITY_EVERY = 0.5  # seconds between reads of priorities people may have changed
STALLED_SECONDS = 60.0  # a transfer held whole but not verified: its manifest again


def version() -> str:
    try:
        return _v("radsetu")
    except PackageNotFoundError:
        return "unknown"


class Agent:
    def __init__(self, config: Config, store: Store, outbox: Outbox):
        self.config = config
        self.box_id = config.box_id
        self.last_study_check = 0.0
        self.clinic = str(config["clinic"])
        self.language = str(config["language"])
        self.patient_data = str(config["patient_data_in_messages"])
        self.m = config["mqtt"]
        self.s = config["sync"]
        self.store = store
        self.outbox = outbox
        self.downlink = Downlink(store, outbox.db, self.box_id, self._current_client)
        self.uplink = Uplink(self.s["window"], float(self.s["ack_timeout_seconds"]))
        self.bucket = TokenBucket(float(self.s["max_bytes_per_second"]), time.monotonic())
        self.stop_event = threading.Event()
        self.events: deque[Event] = deque()  # from the packer and callbacks
        self.threads: list[threading.Thread] = []
        self.client: mqtt.Client | None = None
        self.link = Link(self.box_id, self.m, self.s, self.stop_event, on_up=self._link_up,
                         on_down=self.uplink.disconnected, note_error=self._note_error)  # fmt: skip
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
        self.last_ack = 0.0  # time.monotonic() of the hub's last ack
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
        packer = PackerLoop(self.outbox, self.stop_event, self.events.append, self._note_error)
        for name, target in (("packer", packer.run), ("sync", self._run)):
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

    # -- agent thread -------------------------------------------------------------

    def _current_client(self) -> mqtt.Client:
        assert self.client is not None  # the agent's thread handles events only once connected
        return self.client

    def _run(self) -> None:
        self.client = self.link.make_client(self._on_message, self._on_publish)
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
        self.link.step(now)
        busy = False
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

    @property
    def connected(self) -> bool:
        return self.link.connected

    def _note_error(self, why: str | None) -> None:
        self.last_error = why

    def _link_up(self, client: mqtt.Client) -> None:
        """Connected (again): listen on the way down; what was unconfirmed goes again."""
        leaves = (frames.DOWN_ACK, *Downlink.LEAVES)
        client.subscribe([(frames.topic(self.box_id, leaf), 1) for leaf in leaves])
        self.downlink.unanswered.clear()  # what the hub did not answer goes again at once
        # the manifests go on the next step, after paho has queued its resends of
        # what was in flight: the hub's answer must come after those copies arrived
        self.resync_due = True

    # paho callbacks: they run inside loop(), on the agent's thread

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        for leaf in Downlink.LEAVES:
            if msg.topic.endswith(leaf):
                self.events.append(DownArrived(leaf, msg.payload))
                return
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        self.events.append(AckArrived(msg.payload, corr))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        if rc.is_failure:  # paho counts a refused publish as published: say so
            log.error("the broker refused message %d: %s (ACL or size limit?)", mid, rc)
            self.last_error = f"broker refused a message: {rc}"

    # events

    def _drain(self) -> None:
        """Handle what the packer and paho's callbacks queued, in order,
        on the agent's thread."""
        while self.events:
            ev = self.events.popleft()
            if isinstance(ev, Packed):
                self.uplink.queue(self.outbox.manifest(ev.transfer_id), ev.seq)
                self.uplink.set_priority(ev.transfer_id, ev.priority)
                if self.connected:
                    self._publish_manifest(ev.transfer_id)
            elif isinstance(ev, AckArrived):
                self._take_ack(ev.payload, ev.correlation)
            elif isinstance(ev, DownArrived):
                self.downlink.take(ev.leaf, ev.payload)

    def _take_ack(self, payload: bytes, corr: bytes | None) -> None:
        try:
            ack = parse_ack(payload)
        except RemoteProtocolError as exc:
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
        self.last_sync, self.last_ack = utcnow(), time.monotonic()
        self.acked_dirty.add(tid)
        self.manifest_tries.pop(tid, None)
        for ev in events:
            if isinstance(ev, TransferVerified):
                acked = self.uplink.transfers[tid].acked
                self.outbox.verified(tid, acked)
                self._forget(tid)
                self._publish_status(time.monotonic())

    # publishing

    def _publish_manifest(self, tid: str) -> None:
        assert self.client is not None
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = self.token
        self.client.publish(
            frames.topic(self.box_id, frames.UP_MANIFEST),
            frames.encode_manifest(self.outbox.manifest_bytes(tid)),
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

    def _persist(self) -> None:
        """What the hub holds, and what was sent, into the outbox's rows."""
        acked = self.uplink.transfers
        if self.acked_dirty:
            self.outbox.record_acked({t: acked[t].acked for t in self.acked_dirty if t in acked})
            self.acked_dirty.clear()
        if self.sent_counts:
            self.outbox.record_sent({t: (c[0], c[1]) for t, c in self.sent_counts.items()})
            self.sent_counts.clear()

    def _give_up_waiting(self, now: float) -> None:
        """A transfer of records completing previews that the hub has held whole without
        verifying for ``rest_wait_seconds`` (it lacks the previews: lost, or never
        verified there) is given up: the study's images go whole in a new one. Not
        while the hub is silent: a hub that is down verifies nothing, and will."""
        if now - self.last_ack > 2 * STALLED_SECONDS:
            return
        for tid in list(self.uplink.transfers):
            waited = self.uplink.held_whole_for(tid, now)
            if waited >= self.s["rest_wait_seconds"] and self.outbox.carries_rests(tid):
                self.outbox.abandon(tid, f"the hub held it {waited:.0f} s without its previews")
                self._forget(tid)

    def _forget(self, tid: str) -> None:
        self.uplink.forget(tid)
        self.acked_dirty.discard(tid)
        self.manifest_sent.pop(tid, None)
        for key in [k for k in self.attempts if k[0] == tid]:
            del self.attempts[key]

    def _housekeeping(self, now: float) -> None:
        with self._lock:
            self._pending = self.uplink.pending()
        if now - self.last_persist >= PERSIST_EVERY:
            self.last_persist = now
            self._persist()
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
            for tid in self.uplink.stalled(now, STALLED_SECONDS):  # held, never verified
                self._publish_manifest(tid)
            self._give_up_waiting(now)
            if now - self.last_status >= self.s["status_seconds"]:
                self._publish_status(now)
            if now - self.last_study_check >= 1.0:
                self.last_study_check = now
                self.downlink.publish_study_updates(now)
                self.downlink.publish_confirmations(now)
                self.downlink.publish_prints(now)
                self.downlink.publish_orders(now)

    def status(self, db: Any = None) -> dict[str, Any]:
        """What the box tells the hub (and its own page) about itself; ``db``: a
        connection of the caller's thread (the agent's own by default)."""
        with self._lock:
            totals, pending = dict(self.totals), list(self._pending)
        sending = [
            {"transfer_id": tid, "chunks_acked": acked, "chunk_count": count}
            for tid, acked, count in pending
        ]
        return {
            "box_id": self.box_id,
            "clinic": self.clinic,
            "language": self.language,
            **({"patient_data": self.patient_data} if self.patient_data else {}),
            "on_call": _on_call(db if db is not None else self.outbox.db),
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
            encode_status(self.status()),
            qos=1,
            retain=True,
        )

    def _goodbye(self) -> None:
        """A clean stop: persist, say offline (retained), disconnect."""
        try:
            self._persist()
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


def _on_call(db: Any) -> dict[str, str] | None:
    """The clinic's on-call contact, for the hub's escalation of a critical finding."""
    contact = doctors.on_call(db)
    return contact.contact() if contact else None
