"""A clinic's order on its way to the hub (``up/order``): the reading room sees an exam
coming, its clinical question and whether it is STAT, before any image of it is in.
The box sends an order when reception makes it, and again when its state changes (the
modality began or ended it, a study met it, reception cancelled it). Pure."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from wire.contact import parse_contact
from wire.errors import RemoteProtocolError
from wire.jsonobj import json_object

ORDER_STATES = ("scheduled", "in_progress", "completed", "discontinued", "cancelled")
PRIORITIES = ("stat", "routine")
MAX_ORDER_BYTES = 8192
_ACCESSION = re.compile(r"^[0-9A-Za-z-]{1,16}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_WHEN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.+Z-]{0,32}$")
TEXTS = {"body_part": 64, "question": 1000, "patient_name": 200, "patient_id": 64}


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
        return json.dumps(asdict(self), separators=(",", ":")).encode()

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
        for name, most in TEXTS.items():
            value = d.get(name)
            if not isinstance(value, str) or len(value) > most:
                raise RemoteProtocolError(f"order: {name} must be text of <= {most}")
        keys = ("accession", "study_uid", "state", "priority", "modality", "ordered_at")
        fields: dict[str, Any] = {k: d[k] for k in (*keys, *TEXTS)}
        return cls(**fields, referrer=parse_contact(d.get("referrer"), "order: referrer"))


@dataclass(frozen=True)
class OrderKept:
    """The hub's word (``down/order``) that it keeps the order as it was in ``state``:
    the box sends an order again until this comes (the broker alone may drop a message
    no hub is subscribed for, as after a broker restart)."""

    accession: str
    state: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> OrderKept:
        d = json_object(payload, "order kept", 1024)
        acc, state = d.get("accession"), d.get("state")
        if not isinstance(acc, str) or not _ACCESSION.match(acc) or state not in ORDER_STATES:
            raise RemoteProtocolError("order kept: accession or state missing or malformed")
        return cls(acc, state)
