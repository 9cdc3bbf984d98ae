"""What comes down to the box besides acks, and the study updates that go up:
reports kept durably then acknowledged, the hub's word on a study (a radiologist is
reading it), the hub's request to send delivered studies again (answered with what was
queued), STAT marks and clinical notes made after a study was packed, and the clinic's
orders."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from edge import doctors, orders, reports, resend, studies
from edge.store import Store
from wire import frames
from wire.errors import RemoteProtocolError
from wire.messages import OrderKept, OrderNotice, ResendRequest, StudyNotice, StudyUpdate
from wire.report import decode_report
from wire.report import encode_ack as encode_report_ack

log = logging.getLogger("radsetu.sync")
ORDER_AGAIN_SECONDS = 15.0  # an order the hub has not answered goes again, then less often
ORDER_AGAIN_MOST = 600.0
ANSWERS_KEPT = 64  # resend requests answered, kept to answer a repeated request alike


class Downlink:
    LEAVES = (frames.DOWN_REPORT, frames.DOWN_STUDY, frames.DOWN_RESEND, frames.DOWN_ORDER)

    def __init__(self, store: Store, db: Any, box_id: str, client: Callable[[], mqtt.Client]):
        self.store, self.db, self.box_id = store, db, box_id
        self.client = client  # the agent's current MQTT client
        self.study_mids: dict[int, tuple[str, str, str]] = {}
        self.study_inflight: dict[Any, int] = {}
        self.confirm_mids: dict[int, tuple[str, int]] = {}
        self.order_sent: dict[str, tuple[float, int]] = {}  # accession: when it last went, times
        self.answers: dict[str, bytes] = {}  # resend request id: the answer given

    def take(self, leaf: str, payload: bytes) -> None:
        """A message on one of ``LEAVES``."""
        if leaf == frames.DOWN_REPORT:
            self.take_report(payload)
        elif leaf == frames.DOWN_STUDY:
            self.take_study(payload)
        elif leaf == frames.DOWN_RESEND:
            self.take_resend(payload)
        elif leaf == frames.DOWN_ORDER:
            self.take_order_kept(payload)

    def take_order_kept(self, payload: bytes) -> None:
        """The hub keeps an order as it was sent: cleared unless it changed since."""
        try:
            kept = OrderKept.decode(payload)
        except RemoteProtocolError as exc:
            log.warning("ignoring a malformed order answer from the hub: %s", exc)
            return
        orders.hub_told(self.db, kept.accession, kept.state)
        self.order_sent.pop(kept.accession, None)

    def take_report(self, payload: bytes) -> None:
        """Keep a report durably, then acknowledge it (again, if it was kept before)."""
        try:
            report, pdf = decode_report(payload)
        except RemoteProtocolError as exc:
            log.warning("refused a report from the hub: %s", exc)
            return
        reports.keep(self.store, report, pdf)
        self.client().publish(
            frames.topic(self.box_id, frames.UP_REPORT_ACK),
            encode_report_ack(report["report_id"], report["version"]),
            qos=1,
        )

    def take_study(self, payload: bytes) -> None:
        """The hub's word on a study: a radiologist started reading it."""
        try:
            notice = StudyNotice.decode(payload)
        except RemoteProtocolError as exc:
            log.warning("ignoring a malformed study message from the hub: %s", exc)
            return
        studies.set_hub_state(self.db, notice.study_uid, notice.state)

    def take_resend(self, payload: bytes) -> None:
        """The hub asks for delivered studies again (it lost them): each is queued as
        ``radsetu edge resend`` queues it, and the hub is told what was done. A request
        that comes again (the answer was lost) gets the same answer: nothing is queued
        twice."""
        try:
            ask = ResendRequest.decode(payload)
        except RemoteProtocolError as exc:
            log.warning("refused a resend request from the hub: %s", exc)
            return
        answer = self.answers.get(ask.request_id)
        if answer is None:
            uids = resend.delivered(self.db) if ask.every else ask.study_uids
            outcomes = [resend.resend(self.db, uid, who="hub") for uid in uids]
            reply = resend.answer(ask.request_id, outcomes)
            log.info("the hub asked for %s: %d of %d queued (request %s)",
                     "every delivered study" if ask.every else "studies again", reply.queued,
                     len(outcomes), ask.request_id)  # fmt: skip
            answer = self.answers[ask.request_id] = reply.encode()
            while len(self.answers) > ANSWERS_KEPT:
                self.answers.pop(next(iter(self.answers)))
        self.client().publish(frames.topic(self.box_id, frames.UP_RESEND), answer, qos=1)

    def publish_study_updates(self) -> None:
        """STAT marks and clinical notes made at the clinic after the study was packed
        go to the hub on their own; cleared once the broker has them (``published``)."""
        for uid, priority, note, chosen, dicom_name in self.db.execute(
            "SELECT study_uid, priority, clinical_note, referrer_id, referring_physician "
            "FROM studies WHERE update_pending=1"
        ).fetchall():
            if uid in self.study_inflight:
                continue
            doctor = doctors.for_study(self.db, chosen, dicom_name)
            info = self.client().publish(
                frames.topic(self.box_id, frames.UP_STUDY),
                StudyUpdate(
                    uid, priority, note[:1000], doctor.contact() if doctor else None
                ).encode(),
                qos=1,
            )
            self.study_mids[info.mid] = (uid, priority, note, chosen or 0)
            self.study_inflight[uid] = info.mid

    def publish_confirmations(self) -> None:
        """Critical findings confirmed at the clinic go to the hub (an ack with who told
        the doctor and the read-back), until the broker has them (``published``)."""
        for rid, version, by, readback in reports.pending_confirmations(self.db):
            if ("confirm", rid) in self.study_inflight:
                continue
            info = self.client().publish(
                frames.topic(self.box_id, frames.UP_REPORT_ACK),
                encode_report_ack(rid, version, printed=False, confirmed_by=by,
                                  readback=readback or ""),
                qos=1,
            )  # fmt: skip
            self.confirm_mids[info.mid] = (rid, version)
            self.study_inflight[("confirm", rid)] = info.mid

    def publish_orders(self, now: float) -> None:
        """Orders made at the clinic, and each change of their state, go to the hub's
        reading room before their images: again after 15 s, 30 s, 60 s... (at most 10
        minutes apart) until the hub answers that it keeps them (``take_order_kept``)."""
        for order in orders.for_hub(self.db):
            acc = order["accession"]
            last, times = self.order_sent.get(acc, (0.0, 0))
            if times and now - last < min(ORDER_AGAIN_MOST, ORDER_AGAIN_SECONDS * 2 ** (times - 1)):
                continue
            doctor = doctors.for_study(self.db, order["referrer_id"], "")
            name = order["name_latin"] + (f"={order['name_local']}" if order["name_local"] else "")
            notice = OrderNotice(acc, order["study_uid"], order["state"],
                                 "stat" if order["stat"] else "routine", order["modality"],
                                 order["body_part"], order["question"][:1000], name[:200],
                                 order["patient_id"], order["created_at"],
                                 doctor.contact() if doctor else None)  # fmt: skip
            topic = frames.topic(self.box_id, frames.UP_ORDER)
            self.client().publish(topic, notice.encode(), qos=1)
            self.order_sent[acc] = (now, times + 1)

    def published(self, mid: int) -> None:
        """The broker has message ``mid``: a study update is cleared unless it changed
        since."""
        sent = self.confirm_mids.pop(mid, None)
        if sent is not None:
            reports.confirmation_sent(self.db, *sent)
            self.study_inflight.pop(("confirm", sent[0]), None)
        done = self.study_mids.pop(mid, None)
        if done is not None:  # the broker has the update: clear it unless it changed since
            studies.update_sent(self.db, *done)
            self.study_inflight.pop(done[0], None)

    def report_printed(self, report_id: str, version: int) -> None:
        self.client().publish(
            frames.topic(self.box_id, frames.UP_REPORT_ACK),
            encode_report_ack(report_id, version, printed=True),
            qos=1,
        )
