"""The small messages of the sync protocol as typed values, built and parsed here so
that both ends agree (docs/sync.md, "Topics"):

- ``StudyUpdate`` (``up/study``): the clinic marked a study STAT or wrote its note;
- ``StudyNotice`` (``down/study``): the hub's word on a study (a radiologist reads it);
- ``parse_ack`` (``down/ack``): what the hub holds of a transfer;
- ``parse_status`` (``status``): a box's retained status, every known field checked;
- ``OrderNotice`` (``up/order``) and ``OrderKept`` (``down/order``): an order made at
  the clinic, and the hub's word that it keeps it;
- ``Kept`` (``down/kept``): the hub's word that it has a box's study update, its
  confirmation of a critical finding or its print of a report, named by its bytes'
  ``digest``;
- ``ResendRequest`` (``down/resend``) and ``ResendAnswer`` (``up/resend``): the hub
  asks a box to send delivered studies again, and the box says what it queued.

Parsing a peer's bytes raises RemoteProtocolError naming what is wrong; nothing here
does I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from wire import frames
from wire.contact import parse_contact
from wire.errors import RemoteProtocolError
from wire.frames import ChunkFrame
from wire.jsonobj import json_object
from wire.report import decode_ack as decode_report_ack
from wire.report import decode_confirmation

MAX_STUDY_UPDATE_BYTES = 8192
MAX_STATUS_BYTES = 64 * 1024
MAX_NOTE = 1000
PRIORITIES = ("stat", "routine")
NOTICE_STATES = ("being read",)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_RESEND_STUDIES = 1000  # studies named in one request, or listed in one answer
MAX_RESEND_BYTES = 256 * 1024
MAX_WHY = 300


def _uid(d: dict[str, Any], what: str) -> str:
    uid = d.get("study_uid")
    if not isinstance(uid, str) or not 0 < len(uid) <= 64 or not _UID.match(uid):
        raise RemoteProtocolError(f"{what}: study_uid missing or not a UID")
    return uid


def _encode(value: Any) -> bytes:
    return json.dumps(asdict(value), separators=(",", ":")).encode()


@dataclass(frozen=True)
class StudyUpdate:
    study_uid: str
    priority: str  # "stat" or "routine"
    clinical_note: str
    referrer: dict[str, str] | None = None  # the referring doctor (wire/contact.py)

    def encode(self) -> bytes:
        return _encode(self)

    @classmethod
    def decode(cls, payload: bytes) -> StudyUpdate:
        d = json_object(payload, "study update", MAX_STUDY_UPDATE_BYTES)
        uid = _uid(d, "study update")
        priority, note = d.get("priority"), d.get("clinical_note")
        if priority not in PRIORITIES:
            raise RemoteProtocolError(f"study update: priority {priority!r} is not stat/routine")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise RemoteProtocolError(f"study update: clinical_note must be text of <= {MAX_NOTE}")
        return cls(uid, priority, note, parse_contact(d.get("referrer"), "study update: referrer"))


@dataclass(frozen=True)
class StudyNotice:
    study_uid: str
    state: str  # one of NOTICE_STATES

    def encode(self) -> bytes:
        return _encode(self)

    @classmethod
    def decode(cls, payload: bytes) -> StudyNotice:
        d = json_object(payload, "study notice", MAX_STUDY_UPDATE_BYTES)
        uid = _uid(d, "study notice")
        if d.get("state") not in NOTICE_STATES:
            raise RemoteProtocolError(f"study notice: state {d.get('state')!r} is not known")
        return cls(uid, d["state"])


def _request_id(d: dict[str, Any], what: str) -> str:
    rid = d.get("request_id")
    if not isinstance(rid, str) or not _REQUEST_ID.match(rid):
        raise RemoteProtocolError(f"{what}: request_id missing or malformed")
    return rid


def _uids(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_RESEND_STUDIES:
        raise RemoteProtocolError(f"{what}: a list of at most {MAX_RESEND_STUDIES} studies")
    return [_uid({"study_uid": u}, what) for u in value]


@dataclass(frozen=True)
class ResendRequest:
    """The hub asks the box to send delivered studies again: those named, or, with
    ``every``, every delivered study the box still holds."""

    request_id: str
    study_uids: list[str]
    every: bool = False

    def encode(self) -> bytes:
        return _encode(self)

    @classmethod
    def decode(cls, payload: bytes) -> ResendRequest:
        d = json_object(payload, "resend request", MAX_RESEND_BYTES)
        rid = _request_id(d, "resend request")
        uids = _uids(d.get("study_uids"), f"resend request {rid}")
        every = d.get("every", False)
        if not isinstance(every, bool):
            raise RemoteProtocolError(f"resend request {rid}: every must be true or false")
        if not uids and not every:
            raise RemoteProtocolError(f"resend request {rid}: names no study")
        return cls(rid, uids, every)


@dataclass(frozen=True)
class ResendAnswer:
    """What the box did with a request: each study, queued or why not (the studies not
    queued first, at most MAX_RESEND_STUDIES listed), and how many were queued."""

    request_id: str
    queued: int
    studies: list[dict[str, Any]]  # {"study_uid", "queued": bool, "why": text}
    unlisted: int = 0  # studies left out of the list (queued ones, past the limit)

    def encode(self) -> bytes:
        return _encode(self)

    @classmethod
    def decode(cls, payload: bytes) -> ResendAnswer:
        d = json_object(payload, "resend answer", MAX_RESEND_BYTES)
        rid = _request_id(d, "resend answer")
        what = f"resend answer {rid}"
        counts = {name: d.get(name, 0) for name in ("queued", "unlisted")}
        for name, n in counts.items():
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 1 << 31:
                raise RemoteProtocolError(f"{what}: {name} must be a count")
        rows = d.get("studies")
        if not isinstance(rows, list) or len(rows) > MAX_RESEND_STUDIES:
            raise RemoteProtocolError(f"{what}: a list of at most {MAX_RESEND_STUDIES} studies")
        studies = []
        for row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("queued"), bool):
                raise RemoteProtocolError(f"{what}: each study needs queued true or false")
            why = row.get("why")
            if not isinstance(why, str) or len(why) > MAX_WHY:
                raise RemoteProtocolError(f"{what}: why must be text of <= {MAX_WHY}")
            studies.append({"study_uid": _uid(row, what), "queued": row["queued"], "why": why})
        return cls(rid, counts["queued"], studies, counts["unlisted"])


ORDER_STATES = ("scheduled", "in_progress", "completed", "discontinued", "cancelled")
MAX_ORDER_BYTES = 8192
_ACCESSION = re.compile(r"^[0-9A-Za-z-]{1,16}$")
_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_WHEN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.+Z-]{0,32}$")
ORDER_TEXTS = {"body_part": 64, "question": 1000, "patient_name": 200, "patient_id": 64}


# an order made at the clinic (up/order): the reading room sees an exam coming, its
# clinical question and whether it is STAT, before any image of it is in; sent again
# at each change of its state (the modality began or ended it, a study met it,
# reception cancelled it)
@dataclass(frozen=True)
class OrderNotice:
    accession: str
    study_uid: str
    state: str  # one of ORDER_STATES
    priority: str  # "stat" or "routine"
    modality: str
    body_part: str
    question: str
    patient_name: str  # Latin, then "=" and the local script when reception typed it
    patient_id: str
    ordered_at: str  # ISO 8601, UTC
    referrer: dict[str, str] | None = None  # the referring doctor (wire/contact.py)

    def encode(self) -> bytes:
        return _encode(self)

    @classmethod
    def decode(cls, payload: bytes) -> OrderNotice:
        d = json_object(payload, "order", MAX_ORDER_BYTES)
        checks = (
            ("accession", _ACCESSION),
            ("study_uid", _UID),
            ("modality", _MODALITY),
            ("ordered_at", _WHEN),
        )
        for name, pattern in checks:
            value = d.get(name)
            if not isinstance(value, str) or len(value) > 64 or not pattern.match(value):
                raise RemoteProtocolError(f"order: {name} missing or malformed")
        if d.get("state") not in ORDER_STATES:
            raise RemoteProtocolError(f"order: state {str(d.get('state'))[:40]!r} is not known")
        if d.get("priority") not in PRIORITIES:
            raise RemoteProtocolError("order: priority is not stat/routine")
        for name, most in ORDER_TEXTS.items():
            value = d.get(name)
            if not isinstance(value, str) or len(value) > most:
                raise RemoteProtocolError(f"order: {name} must be text of <= {most}")
        keys = ("accession", "study_uid", "state", "priority", "modality", "ordered_at")
        fields: dict[str, Any] = {k: d[k] for k in (*keys, *ORDER_TEXTS)}
        return cls(**fields, referrer=parse_contact(d.get("referrer"), "order: referrer"))


@dataclass(frozen=True)
class OrderKept:
    """The hub's word (``down/order``) that it keeps the order as it was in ``state``:
    the box sends an order again until this comes (the broker alone may drop a message
    no hub is subscribed for, as after a broker restart)."""

    accession: str
    state: str

    def encode(self) -> bytes:
        return _encode(self)

    @classmethod
    def decode(cls, payload: bytes) -> OrderKept:
        d = json_object(payload, "order kept", 1024)
        acc, state = d.get("accession"), d.get("state")
        if not isinstance(acc, str) or not _ACCESSION.match(acc) or state not in ORDER_STATES:
            raise RemoteProtocolError("order kept: accession or state missing or malformed")
        return cls(acc, state)


KEPT_LEAVES = (frames.UP_STUDY, frames.UP_REPORT_ACK)
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")  # a UID, a report id[.printed]
_DIGEST = re.compile(r"^[0-9a-f]{32}$")


def digest(payload: bytes) -> str:
    """What ``Kept`` names a message by: the first 128 bits of its bytes' SHA-256."""
    return hashlib.sha256(payload).hexdigest()[:32]


@dataclass(frozen=True)
class Kept:
    """The hub's word (``down/kept``) that it has handled the box's message on ``leaf``
    about ``key`` (a study UID, a report id) whose bytes have ``digest``. The box sends
    it again until this comes, as it does an order: the broker's PUBACK is not enough,
    as a broker that restarted may take a message before the hub has subscribed again,
    and drop it."""

    leaf: str  # one of KEPT_LEAVES
    key: str  # the study UID; the report id, with ".printed" for a print
    digest: str

    def encode(self) -> bytes:
        return _encode(self)

    @classmethod
    def decode(cls, payload: bytes) -> Kept:
        d = json_object(payload, "kept", 1024)
        leaf, key, dig = d.get("leaf"), d.get("key"), d.get("digest")
        if leaf not in KEPT_LEAVES:
            raise RemoteProtocolError(f"kept: leaf {str(leaf)[:40]!r} is not one answered")
        if not isinstance(key, str) or not _KEY.match(key):
            raise RemoteProtocolError("kept: key missing or malformed")
        if not isinstance(dig, str) or not _DIGEST.match(dig):
            raise RemoteProtocolError("kept: digest missing or malformed")
        return cls(leaf, key, dig)


def parse_ack(payload: bytes) -> dict[str, Any]:
    """The hub's ack as a dict for ``Uplink.receive_ack`` (which checks the ranges);
    here: a JSON object naming its transfer."""
    d = json_object(payload, "ack", MAX_STATUS_BYTES)
    if not isinstance(d.get("transfer_id"), str):
        raise RemoteProtocolError("ack: no transfer_id")
    return d


# a box's status: each known key and the type its value must have (None allowed for
# the optional ones); unknown keys are kept as they are, for newer boxes
_COUNTS = (
    "backlog_studies",
    "backlog_bytes",
    "disk_free",
    "reserve_bytes",
    "seq",
    "chunks_sent",
    "chunks_resent",
    "bytes_sent",
    "held_studies",
    "held_instances",
)
_TEXTS = ("box_id", "clinic", "link", "version", "sent_at", "reason")
_OPTIONAL_TEXTS = ("last_sync", "last_error", "oldest_pending")
_LISTS = ("sending", "held")
MAX_COUNT = 2**63 - 1


def parse_status(payload: bytes) -> dict[str, Any]:
    """A box's status, every known field of the right type and range; RemoteProtocolError
    names the first that is not."""
    d = json_object(payload, "status", MAX_STATUS_BYTES)
    if "online" in d and not isinstance(d["online"], bool):
        raise RemoteProtocolError("status: online must be true or false")
    for key in _COUNTS:
        v = d.get(key)
        if key in d and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_COUNT):
            raise RemoteProtocolError(f"status: {key} must be a whole number, 0 or more")
    for key in _TEXTS + _OPTIONAL_TEXTS:
        v = d.get(key)
        if key in d and not (isinstance(v, str) or (v is None and key in _OPTIONAL_TEXTS)):
            raise RemoteProtocolError(f"status: {key} must be text")
    if "language" in d and not (
        isinstance(d["language"], str) and re.fullmatch(r"[a-z]{2,3}", d["language"])
    ):
        raise RemoteProtocolError("status: language must be a language code (en, hi, kn)")
    for key in _LISTS:
        v = d.get(key)
        if key in d and not (
            isinstance(v, list) and len(v) <= 1000 and all(isinstance(i, dict) for i in v)
        ):
            raise RemoteProtocolError(f"status: {key} must be a list of objects")
    if "patient_data" in d and d["patient_data"] not in ("none", "initials", "name"):
        raise RemoteProtocolError("status: patient_data must be none, initials or name")
    if "on_call" in d:
        d["on_call"] = parse_contact(d["on_call"], "status: on_call")
    return d


def encode_status(status: dict[str, Any]) -> bytes:
    """A box's status as it goes on the wire (checked as the hub will check it)."""
    payload = json.dumps(status, separators=(",", ":")).encode()
    parse_status(payload)
    return payload


# -- what a box sends, decoded by its topic leaf: the hub dispatches on these types ----


@dataclass(frozen=True)
class StatusReceived:
    status: dict[str, Any]


@dataclass(frozen=True)
class StatusCleared:
    """An empty retained status: the broker forgetting it."""


@dataclass(frozen=True)
class ReportAcked:
    report_id: str
    version: int
    printed: bool
    confirmed_by: str | None = None  # the clinic confirmed a critical finding was told
    readback: str = ""


@dataclass(frozen=True)
class ManifestReceived:
    raw: bytes


Upload = (
    StatusReceived
    | StatusCleared
    | ReportAcked
    | StudyUpdate
    | ManifestReceived
    | ChunkFrame
    | ResendAnswer
    | OrderNotice
)


def decode_upload(leaf: str, payload: bytes) -> Upload:
    """A box's message on ``radsetu/v1/<box>/<leaf>`` as a typed value; RemoteProtocolError
    for an unknown leaf or a malformed payload. (A manifest is checked whole by the
    ingest, which needs its bytes.)"""
    if leaf == frames.STATUS:
        return StatusReceived(parse_status(payload)) if payload else StatusCleared()
    if leaf == frames.UP_REPORT_ACK:
        return ReportAcked(*decode_report_ack(payload), *decode_confirmation(payload))
    if leaf == frames.UP_STUDY:
        return StudyUpdate.decode(payload)
    if leaf == frames.UP_MANIFEST:
        return ManifestReceived(frames.decode_manifest(payload))
    if leaf == frames.UP_CHUNK:
        return frames.decode_chunk(payload)
    if leaf == frames.UP_RESEND:
        return ResendAnswer.decode(payload)
    if leaf == frames.UP_ORDER:
        return OrderNotice.decode(payload)
    raise RemoteProtocolError(f"unknown topic leaf {leaf!r}")
