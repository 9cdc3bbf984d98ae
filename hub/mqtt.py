"""The hub's MQTT side: every box's manifests and chunks in, acks out, statuses kept.

paho's network thread only queues messages; one worker thread handles them in order
(``hub.ingest``: each chunk durable before it counts), publishes the ack, and only then
acknowledges the MQTT message to the broker (manual PUBACK). A hub killed mid-way has
not PUBACKed what it had not stored, so the broker delivers it again.

Uploads arrive on a shared subscription (``$share/<group>/radsetu/v1/+/up/#``) so
that several ingest processes can share the load; all reassembly state lives in the
hub's store. Statuses come on a plain subscription: retained messages are not given
to shared subscribers.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.config import Config
from common.mqtt import connect_properties, mqtt_client
from hub import critical, orders, reading, reports, resends
from hub.ingest import finished_with, take_chunk, take_manifest
from hub.jobs import Jobs, Notifier
from hub.store import FileHubStore, open_store
from hub.studykeys import study_key
from wire import frames
from wire.errors import RemoteProtocolError
from wire.messages import (
    Kept,
    ManifestReceived,
    OrderKept,
    OrderNotice,
    ReportAcked,
    ResendAnswer,
    StatusCleared,
    StatusReceived,
    StudyUpdate,
    decode_upload,
    digest,
)

log = logging.getLogger("radsetu.hub.mqtt")

# QoS 1 messages the broker may have given this process and not yet had PUBACKed (MQTT
# v5 Receive Maximum): the worker PUBACKs each after handling it, so this bounds what
# waits in memory, whatever one box publishes
RECEIVE_MAXIMUM = 16


class Ingest:
    """One broker's uploads in, acks and reports out. ``broker``: its "host:port" when
    the fleet has several (each box on one of them, hub.store.through_broker); the first
    (``primary``) also reaches the boxes not yet heard on any."""

    def __init__(
        self, config: Config, store: FileHubStore, broker: str | None = None, primary: bool = True
    ):
        self.config = config
        self.m = config["mqtt"]
        self.store = store
        self.broker = broker
        self.primary = primary
        host, _, port = (broker or "").rpartition(":")
        self.host, self.port = (host, int(port)) if broker else (self.m["host"], self.m["port"])
        self.name = f"{self.host}:{self.port}"
        self.inbox: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue()
        self.client = mqtt_client(self.m["client_id"], self.m)
        self.client.manual_ack_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, msg: self.inbox.put(msg)
        self.client.reconnect_delay_set(1, 30)
        self.worker = threading.Thread(target=self._work, name="ingest", daemon=True)
        self.jobs = Jobs(
            store,
            config,
            lambda topic, body: self.client.publish(topic, body, qos=1),
            self.client.is_connected,
            broker,
            primary,
        )
        self.handled = 0
        self._touched: dict[str, float] = {}
        self._last_tick = 0.0

    def start(self) -> Ingest:
        self.worker.start()
        props = connect_properties(self.m)
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self.client.connect_async(
            self.host,
            self.port,
            keepalive=self.m["keepalive"],
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()
        log.info(
            "hub ingest %s: broker %s%s",
            self.m["client_id"],
            self.name,
            " (TLS)" if self.m["tls"] else "",
        )
        return self

    def stop(self) -> None:
        self.inbox.put(None)
        self.worker.join(timeout=30)
        self.jobs.release()
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error(
                "the broker refused the hub: %s (check [mqtt] username/password or the "
                "hub's certificate)",
                rc,
            )
            return
        group = self.m["shared_group"]
        client.subscribe(
            [
                (f"$share/{group}/{frames.PREFIX}/+/up/#", 1),
                (f"{frames.PREFIX}/+/{frames.STATUS}", 1),
            ]
        )
        log.info(
            "hub connected to the broker (session %s)",
            "resumed" if flags.session_present else "new",
        )

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        log.warning("hub lost the broker (%s); reconnecting", rc)

    def _work(self) -> None:
        while True:
            try:
                msg = self.inbox.get(timeout=1.0)
            except queue.Empty:
                self._tick()
                continue
            if msg is None:
                return
            try:
                self.handle(msg)
            except Exception as exc:  # noqa: BLE001 - one message must never stall the rest
                # the hub's own trouble (disk, database) or a message that slipped past
                # the checks: logged, counted against its box, dropped. No retry and no
                # sleep here: every box shares this worker, and a box sends again what
                # the hub never acknowledged (chunks, manifests, a status every few s).
                log.exception("handling %s failed; dropped", msg.topic)
                self._count_failure(msg.topic, exc)
            # acknowledged to the broker only now, after the durable write (or after
            # giving up: the box resends what the hub never acked)
            self.client.ack(msg.mid, msg.qos)
            self.handled += 1
            if time.monotonic() - self._last_tick > 1.0:
                self._tick()

    def _count_failure(self, topic: str, exc: Exception) -> None:
        try:
            box_id, _leaf = frames.parse_topic(topic)
            self.store.touch_box(box_id, rejection=f"hub error: {exc}"[:500])
        except Exception:  # noqa: BLE001 - the store itself is failing: the log has it
            log.exception("could not count the failure")

    def _tick(self) -> None:
        self._last_tick = time.monotonic()
        self.jobs.tick()

    def handle(self, msg: mqtt.MQTTMessage) -> None:
        try:
            box_id, leaf = frames.parse_topic(msg.topic)
        except RemoteProtocolError as exc:
            log.warning("ignoring a message: %s", exc)
            return
        source = f"mqtt:{box_id}"
        now = time.monotonic()
        if now - self._touched.get(box_id, 0) > 5:
            self._touched[box_id] = now
            self.store.touch_box(box_id, broker=self.name)
        try:
            up = decode_upload(leaf, msg.payload)
            if isinstance(up, StatusReceived):
                self._status(box_id, up.status)
                return
            if isinstance(up, StatusCleared):
                return
            if isinstance(up, ReportAcked):
                self._report_acked(box_id, leaf, up, msg.payload)
                return
            if isinstance(up, StudyUpdate):
                self._study_update(box_id, up)
                self._kept(box_id, leaf, up.study_uid, msg.payload)
                return
            if isinstance(up, OrderNotice):
                orders.take(self.store, box_id, up)  # kept, or a later state is
                self.client.publish(frames.topic(box_id, frames.DOWN_ORDER),
                                    OrderKept(up.accession, up.state).encode(), qos=1)  # fmt: skip
                return
            if isinstance(up, ResendAnswer):
                if not resends.answered(self.store, box_id, up):
                    log.info("box %s: answer to resend request %s already kept or unknown",
                             box_id, up.request_id)  # fmt: skip
                return
            if isinstance(up, ManifestReceived):
                quota = self.config["ingest"]["box_quota_bytes"]
                ack = take_manifest(self.store, up.raw, source, box_id=box_id, quota_bytes=quota)
                also: list[dict[str, Any]] = []
            else:
                ack = take_chunk(
                    self.store,
                    up.transfer_id,
                    up.index,
                    up.data,
                    source,
                    box_id=box_id,
                    attempt=up.attempt,
                )
                also = finished_with(self.store, ack, source)
        except RemoteProtocolError as exc:
            log.warning("box %s: refused a message on %s: %s", box_id, leaf, exc)
            self.store.touch_box(box_id, rejection=str(exc)[:500])
            return
        self._send_acks(box_id, msg, [ack, *also])

    def _send_acks(self, box_id: str, msg: mqtt.MQTTMessage, acks: list[dict[str, Any]]) -> None:
        """The ack of the message, with its correlation data; then those of transfers
        that waited for the preview this message completed."""
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        for n, ack in enumerate(acks):
            props = Properties(PacketTypes.PUBLISH)
            if corr and n == 0:  # the others answer no message of the box's
                props.CorrelationData = corr
            self.client.publish(
                frames.topic(box_id, frames.DOWN_ACK),
                json.dumps(ack, separators=(",", ":")),
                qos=1,
                properties=props,
            )

    def _clinic_confirmed(self, box_id: str, up: ReportAcked) -> None:
        """The clinic's staff told the doctor of the critical finding (a read-back)."""
        row = self.store.db.execute(
            "SELECT 1 FROM critical_results WHERE report_id=? AND box_id=?",
            [up.report_id, box_id],
        ).fetchone()
        if row is None:
            log.warning("box %s confirmed report %s, which is not its critical result",
                        box_id, up.report_id)  # fmt: skip
            return
        critical.confirm(self.store, up.report_id, f"{up.confirmed_by} ({box_id})",
                         f"the clinic told the doctor; read back: {up.readback}"[:300])  # fmt: skip

    def _report_acked(self, box_id: str, leaf: str, up: ReportAcked, payload: bytes) -> None:
        """The box has a report; or printed it, or its staff told the doctor of its
        critical finding (those two are answered: the box sends them until then)."""
        if reports.acked(self.store, box_id, up.report_id, up.version, up.printed):
            log.info("box %s has report %s version %d", box_id, up.report_id, up.version)
        if up.confirmed_by is not None:
            self._clinic_confirmed(box_id, up)
            self._kept(box_id, leaf, up.report_id, payload)
        if up.printed:
            self._kept(box_id, leaf, f"{up.report_id}.printed", payload)

    def _kept(self, box_id: str, leaf: str, key: str, payload: bytes) -> None:
        """The box's message is handled (kept, or logged as one that never will be):
        the box need not send it again (``down/kept``)."""
        body = Kept(leaf, key, digest(payload)).encode()
        self.client.publish(frames.topic(box_id, frames.DOWN_KEPT), body, qos=1)

    def _study_update(self, box_id: str, update: StudyUpdate) -> None:
        uid, prio = update.study_uid, update.priority
        key = study_key(self.store, box_id, uid)
        here = reading.clinic_update(
            self.store, box_id, key, prio, update.clinical_note, update.referrer
        )
        log.info(
            "box %s: study %s is %s%s", box_id, uid, prio, "" if here else " (before the study)"
        )

    def _status(self, box_id: str, status: dict[str, Any]) -> None:
        online = status.get("online") is True
        was_online = self.store.put_box_status(box_id, status, online=online)
        if online and not was_online:
            reports.box_online(self.store, box_id)


def run(config: Config) -> int:
    """``radsetu hub ingest``: run until SIGTERM/SIGINT."""

    m = config["mqtt"]
    brokers = [f"{m['host']}:{m['port']}", *m["other_brokers"]]
    several = len(brokers) > 1
    # one client, worker and index connection per broker: a broker that is down holds
    # up only its own boxes
    ingests = [
        Ingest(config, open_store(config), b if several else None, primary=i == 0).start()
        for i, b in enumerate(brokers)
    ]
    notifier = Notifier(open_store(config), config).start()
    stop = threading.Event()

    def shutdown(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping the ingest", signum)
        stop.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    stop.wait()
    notifier.stop()
    notifier.store.close()
    for ingest in ingests:
        ingest.stop()
        ingest.store.close()
    return 0
