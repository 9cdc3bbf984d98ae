"""What comes down to the box besides acks, and the study updates that go up:
reports kept durably then acknowledged, the hub's word on a study (a radiologist is
reading it), the hub's request to send delivered studies again (answered with what was
queued), STAT marks and clinical notes made after a study was packed, and the clinic's
orders."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt

from edge import doctors, orders, reports, resend, studies
from edge.store import Store
from edge.unanswered import Unanswered
from wire import frames
from wire.errors import RemoteProtocolError
from wire.messages import (
    Kept,
    OrderKept,
    OrderNotice,
    ResendRequest,
    StudyNotice,
    StudyUpdate,
    digest,
)
from wire.report import decode_report
from wire.report import encode_ack as encode_report_ack

log = logging.getLogger("radsetu.sync")
ANSWERS_KEPT = 64  # resend requests answered, kept to answer a repeated request alike


class Downlink:
    LEAVES = (
        frames.DOWN_REPORT,
        frames.DOWN_STUDY,
        frames.DOWN_RESEND,
        frames.DOWN_ORDER,
        frames.DOWN_KEPT,
    )

    def __init__(self, store: Store, db: Any, box_id: str, client: Callable[[], mqtt.Client]):
        self.store, self.db, self.box_id = store, db, box_id
        self.client = client  # the agent's current MQTT client
        self.unanswered = Unanswered()  # orders, study updates, confirmations, prints
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
        elif leaf == frames.DOWN_KEPT:
            self.take_kept(payload)

    def take_order_kept(self, payload: bytes) -> None:
        """The hub keeps an order as it was sent: cleared unless it changed since."""
        try:
            kept = OrderKept.decode(payload)
        except RemoteProtocolError as exc:
            log.warning("ignoring a malformed order answer from the hub: %s", exc)
            return
        orders.hub_told(self.db, kept.accession, kept.state)
        self.unanswered.answered((frames.UP_ORDER, kept.accession), kept.state)

    def take_kept(self, payload: bytes) -> None:
        """The hub has a study update, a confirmation or a print: cleared unless it
        changed since (an answer for an earlier version clears nothing; the newer one
        goes on)."""
        try:
            kept = Kept.decode(payload)
        except RemoteProtocolError as exc:
            log.warning("ignoring a malformed answer from the hub: %s", exc)
            return
        sent = self.unanswered.answered((kept.leaf, kept.key), kept.digest)
        if sent is not None:
            sent.context()  # what clears it

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

    def publish_study_updates(self, now: float) -> None:
        """STAT marks and clinical notes made at the clinic after the study was packed
        go to the hub on their own, until the hub has them (``take_kept``)."""
        for uid, priority, note, chosen, dicom_name in self.db.execute(
            "SELECT study_uid, priority, clinical_note, referrer_id, referring_physician "
            "FROM studies WHERE update_pending=1"
        ).fetchall():
            doctor = doctors.for_study(self.db, chosen, dicom_name)
            body = StudyUpdate(uid, priority, note[:1000], doctor.contact() if doctor else None)
            clear = partial(studies.update_sent, self.db, uid, priority, note, chosen or 0)
            self._until_kept(frames.UP_STUDY, uid, body.encode(), now, clear)

    def publish_confirmations(self, now: float) -> None:
        """Critical findings confirmed at the clinic go to the hub (an ack with who told
        the doctor and the read-back), until the hub has them (``take_kept``)."""
        for rid, version, by, readback in reports.pending_confirmations(self.db):
            body = encode_report_ack(rid, version, printed=False, confirmed_by=by,
                                     readback=readback or "")  # fmt: skip
            clear = partial(reports.confirmation_sent, self.db, rid, version)
            self._until_kept(frames.UP_REPORT_ACK, rid, body, now, clear)

    def publish_prints(self, now: float) -> None:
        """Reports printed at the clinic: the hub's turnaround ends there. Sent until the
        hub has them (``take_kept``; keyed ``<report id>.printed``)."""
        for rid, version in reports.pending_print_acks(self.db):
            body = encode_report_ack(rid, version, printed=True)
            clear = partial(reports.print_ack_sent, self.db, rid, version)
            self._until_kept(frames.UP_REPORT_ACK, f"{rid}.printed", body, now, clear)

    def _until_kept(
        self, leaf: str, key: str, body: bytes, now: float, clear: Callable[[], None]
    ) -> None:
        """``body`` goes on ``leaf`` unless the same went lately; ``clear`` is called
        when the hub answers that it has it."""
        version = digest(body)
        if self.unanswered.due((leaf, key), version, now):
            self.client().publish(frames.topic(self.box_id, leaf), body, qos=1)
            self.unanswered.sent((leaf, key), version, now, clear)

    def publish_orders(self, now: float) -> None:
        """Orders made at the clinic, and each change of their state, go to the hub's
        reading room before their images, until the hub answers that it keeps them
        (``take_order_kept``)."""
        for order in orders.for_hub(self.db):
            key = (frames.UP_ORDER, order["accession"])
            if not self.unanswered.due(key, order["state"], now):
                continue
            doctor = doctors.for_study(self.db, order["referrer_id"], "")
            name = order["name_latin"] + (f"={order['name_local']}" if order["name_local"] else "")
            notice = OrderNotice(order["accession"], order["study_uid"], order["state"],
                                 "stat" if order["stat"] else "routine", order["modality"],
                                 order["body_part"], order["question"][:1000], name[:200],
                                 order["patient_id"], order["created_at"],
                                 doctor.contact() if doctor else None)  # fmt: skip
            topic = frames.topic(self.box_id, frames.UP_ORDER)
            self.client().publish(topic, notice.encode(), qos=1)
            self.unanswered.sent(key, order["state"], now)
