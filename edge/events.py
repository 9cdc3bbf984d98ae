"""What the sync agent's thread is handed by the packer and paho's
callbacks, as typed events (dispatched with ``isinstance``, as hyper-h2 does)."""

from __future__ import annotations

from dataclasses import dataclass

from edge.outbox import Packed


@dataclass(frozen=True)
class AckArrived:
    """The hub's answer on ``down/ack`` (what it holds of a transfer)."""

    payload: bytes
    correlation: bytes | None


@dataclass(frozen=True)
class DownArrived:
    """The hub's message on one of ``Downlink.LEAVES`` (a report, its word on a study, a
    request to send studies again)."""

    leaf: str
    payload: bytes


Event = Packed | AckArrived | DownArrived
