"""The two ends of a transfer as state machines: what the box sends next, what the hub
holds and acks. Pure: the caller passes chunks, acks and clock readings in, and gets
decisions and events out. Both states serialize to JSON so either side resumes after
a restart.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any

from wire.errors import LocalProtocolError, RemoteProtocolError
from wire.manifest import Manifest, Priority
from wire.ranges import RangeSet

# -- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkAccepted:
    transfer_id: str
    index: int


@dataclass(frozen=True)
class ChunkDuplicated:
    transfer_id: str
    index: int


@dataclass(frozen=True)
class ChunkRejected:
    transfer_id: str
    index: int
    reason: str


@dataclass(frozen=True)
class TransferComplete:
    """Every chunk is held (not yet verified instance by instance)."""

    transfer_id: str


@dataclass(frozen=True)
class ChunksAcked:
    transfer_id: str
    newly_acked: int


@dataclass(frozen=True)
class TransferVerified:
    transfer_id: str


class State(Enum):
    RECEIVING = "receiving"
    COMPLETE = "complete"  # all chunks held, instances being verified
    VERIFIED = "verified"
    FAILED = "failed"  # an instance did not verify: its chunks are asked for again


# -- the hub's end ------------------------------------------------------------------


class Reception:
    """One transfer as the hub receives it."""

    def __init__(
        self, manifest: Manifest, held: RangeSet | None = None, state: State = State.RECEIVING
    ):
        self.manifest = manifest
        self.held = held or RangeSet()
        self.state = state
        self.rejected: list[int] = []  # chunks to ask for again in the next ack

    def receive(self, index: int, data: bytes) -> list[Any]:
        """Take one chunk. A duplicate changes nothing; a chunk whose hash does not match
        the manifest is never accepted."""
        m = self.manifest
        if not 0 <= index < m.chunk_count:
            raise RemoteProtocolError(
                f"{m.transfer_id}: chunk {index} outside 0..{m.chunk_count - 1}"
            )
        if index in self.held:
            return [ChunkDuplicated(m.transfer_id, index)]
        got = hashlib.sha256(data).hexdigest()
        expected = m.chunk_sha256[index]
        if len(data) != m.chunk_length(index) or got != expected:
            reason = (
                f"{m.study_uid} chunk {index}: sha256 mismatch (expected "
                f"{expected[:12]}, got {got[:12]}, {len(data)} bytes)"
            )
            self.rejected.append(index)
            return [ChunkRejected(m.transfer_id, index, reason)]
        self.held.add(index)
        if index in self.rejected:
            self.rejected.remove(index)
        events: list[Any] = [ChunkAccepted(m.transfer_id, index)]
        if len(self.held) == m.chunk_count and self.state is State.RECEIVING:
            self.state = State.COMPLETE
            events.append(TransferComplete(m.transfer_id))
        return events

    def verified(self) -> None:
        self._move({State.COMPLETE}, State.VERIFIED)

    def failed(self, chunk_indexes: list[int]) -> None:
        """An instance failed to verify after all chunks were held (its chunks matched
        their hashes, so the box packed it wrong): drop those chunks and ask again."""
        self._move({State.COMPLETE}, State.RECEIVING)
        for i in chunk_indexes:
            self.held.discard(i)
            self.rejected.append(i)

    def _move(self, allowed: set[State], to: State) -> None:
        if self.state not in allowed:
            raise LocalProtocolError(
                f"{self.manifest.transfer_id}: cannot go to {to.value} in state {self.state.value}"
            )
        self.state = to

    def ack(self) -> dict[str, Any]:
        """What to tell the box: which chunks are held, which to send again, and
        whether the transfer is verified."""
        out = {
            "transfer_id": self.manifest.transfer_id,
            "held": self.held.to_json(),
            "verified": self.state is State.VERIFIED,
        }
        if self.rejected:
            out["resend"] = sorted(set(self.rejected))
            self.rejected = []
        return out

    def state_json(self) -> str:
        """What changes as chunks arrive (the manifest never does): held and state."""
        return json.dumps({"held": self.held.to_json(), "state": self.state.value})

    @classmethod
    def from_state(cls, manifest: Manifest, raw: str) -> Reception:
        d = json.loads(raw)
        return cls(manifest, RangeSet.from_json(d["held"], manifest.chunk_count), State(d["state"]))

    def to_json(self) -> str:
        return json.dumps(
            {"manifest": json.loads(self.manifest.to_json()), **json.loads(self.state_json())}
        )

    @classmethod
    def from_json(cls, raw: str) -> Reception:
        d = json.loads(raw)
        return cls.from_state(Manifest.from_json(json.dumps(d.pop("manifest"))), json.dumps(d))


# -- the box's end ------------------------------------------------------------------


@dataclass
class _Outgoing:
    transfer_id: str
    priority: Priority
    seq: int  # queue order given by the caller; lower is older
    chunk_count: int
    acked: RangeSet
    verified: bool = False
    awaiting: bool = True  # no chunk goes until the hub answered the manifest
    preview: bool = False  # a lossy preview: before any other chunk of its priority
    awaiting_since: float | None = None  # when chunks were first asked for while awaiting
    held_since: float | None = None  # when the hub was first seen holding every chunk
    whole_since: float | None = None  # the same, kept across manifests sent again

    @property
    def urgency(self) -> tuple[int, bool]:
        """Lower goes first: STAT before routine, a preview before the rest."""
        return self.priority.rank, not self.preview


HOLD_SECONDS = 60.0  # the longest a transfer awaiting its manifest's answer holds the window
RATE_SECONDS = 2.0  # in flight behind the chunk on the wire: this long at the acked rate
RATE_SPAN = 10.0  # the rate is measured over about this long of sending
MIN_WINDOW = 2
IDLE_SECONDS = 2.0  # nothing in flight this long: the link's measure starts again


class Uplink:
    """Which chunk the box sends next, given the hub's acks and an in-flight window.

    STAT transfers go before routine ones at chunk granularity; within a priority,
    lossy previews first, then the oldest queued first. While a more urgent transfer
    waits for the hub's answer to its manifest, no less urgent chunk is handed out
    (for at most HOLD_SECONDS), so the window is free when its chunks may go. A chunk
    the hub acknowledged is never handed out again. In-flight chunks are those handed
    out and not yet acked; one unacked longer than ``ack_timeout`` seconds may go
    again.

    A transfer's chunks go only after the hub has answered its manifest on this
    connection (a *fresh* ack): after any disconnect, broker restart or reboot,
    ``reconnected`` puts every transfer back to waiting for that answer, so the box
    learns exactly which chunks the hub holds and sends only the others.
    """

    def __init__(self, window: int = 16, ack_timeout: float = 120.0):
        if window < 1:
            raise LocalProtocolError("window must be at least 1")
        self.window = window
        self.ack_timeout = ack_timeout
        self.transfers: dict[str, _Outgoing] = {}
        self.in_flight: dict[tuple[str, int], float] = {}  # -> when handed out
        self.acked_total = 0  # chunks newly acknowledged, ever
        self._samples: deque[tuple[float, int]] = deque()  # (when, acked_total) sending
        self._busy_at = -math.inf  # when a chunk was last out or handed out

    def queue(self, manifest: Manifest, seq: int) -> None:
        if manifest.transfer_id in self.transfers:
            return  # idempotent: queueing again changes nothing
        self.transfers[manifest.transfer_id] = _Outgoing(
            manifest.transfer_id,
            manifest.priority,
            seq,
            manifest.chunk_count,
            RangeSet(),
            preview=manifest.preview is not None,
        )

    def set_priority(self, transfer_id: str, priority: Priority) -> None:
        """Takes effect at the next chunk handed out."""
        self.transfers[transfer_id].priority = priority

    def next_chunks(
        self, now: float, limit: int | None = None, only: Priority | None = None
    ) -> list[tuple[str, int]]:
        """Chunks to send now, best first, filling the window; marks them in flight.
        ``only``: hand out chunks of transfers of that priority alone (outside a sync
        window, STAT may still go)."""
        self._expire(now)
        order = sorted(
            (t for t in self.transfers.values() if not t.verified),
            key=lambda t: (t.urgency, t.seq),
        )
        held = self._held_for(order, now)
        room = self.effective_window(now) - len(self.in_flight)
        if limit is not None:
            room = min(room, limit)
        out: list[tuple[str, int]] = []
        if room <= 0:
            return out
        for t in order:
            if t.awaiting or (only is not None and t.priority is not only):
                continue
            if held is not None and t.urgency > held:
                break  # the window is kept for a more urgent transfer's first chunks
            for i in t.acked.missing(t.chunk_count):
                if (t.transfer_id, i) in self.in_flight:
                    continue
                out.append((t.transfer_id, i))
                self.in_flight[(t.transfer_id, i)] = now
                self._busy_at = now
                if len(out) >= room:
                    return out
        return out

    def effective_window(self, now: float) -> int:
        """``window``, or fewer chunks on a slow link: the chunk on the wire and about
        RATE_SECONDS of what the hub acknowledged over the last RATE_SPAN seconds of
        sending behind it, at least MIN_WINDOW. Chunks handed out cannot be called
        back, so on a 256 kbit/s link a window of 8 chunks of 128 KiB would put half a
        minute in front of a STAT study. The chunk on the wire is counted apart: a
        chunk is acknowledged a round trip, and any loss's recovery, after its last
        byte has gone, so with RATE_SECONDS alone a 1 Mbit/s link at 600 ms kept 2
        chunks out and stalled, at 73 % of its rate (89 % with the one more; the
        window then no longer limits the rate it measures). Until the rate is measured
        (RATE_SPAN / 2 of sending; nothing out for IDLE_SECONDS starts it again) the
        window starts at MIN_WINDOW + 1 and grows by one for each chunk acknowledged,
        as TCP's slow start: the whole window at once is as long a wait on a slow link."""
        if self.in_flight:
            self._busy_at = now
        elif now - self._busy_at >= IDLE_SECONDS:
            self._samples.clear()  # idle: no measure of the link
        if not self._samples or now - self._samples[-1][0] >= 0.5:
            self._samples.append((now, self.acked_total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_SPAN:
            self._samples.popleft()
        since, acked = self._samples[0]
        if now - since < RATE_SPAN / 2:  # not measured: a slow start, one more each ack
            return min(self.window, MIN_WINDOW + 1 + self.acked_total - acked)
        rate = (self.acked_total - acked) / (now - since)
        return max(MIN_WINDOW, min(self.window, 1 + math.ceil(rate * RATE_SECONDS)))

    def _held_for(self, order: list[_Outgoing], now: float) -> tuple[int, bool] | None:
        """The urgency of the most urgent transfer still waiting for the hub's answer to
        its manifest, for at most HOLD_SECONDS: no less urgent chunk goes meanwhile, so
        its first chunks do not queue behind a whole window handed out in the wait."""
        for t in order:
            if t.awaiting:
                if t.awaiting_since is None:
                    t.awaiting_since = now
                if now - t.awaiting_since < HOLD_SECONDS:
                    return t.urgency
        return None

    def _expire(self, now: float) -> None:
        for key, sent in list(self.in_flight.items()):
            if now - sent >= self.ack_timeout:
                del self.in_flight[key]

    def disconnected(self) -> None:
        """The link dropped: whatever was in flight may be lost, so it may go again."""
        self.in_flight.clear()

    def reconnected(self) -> list[str]:
        """A new connection: every unfinished transfer waits for the hub's answer to its
        manifest. Returns the transfer ids whose manifests must be sent now."""
        waiting = []
        for t in self.transfers.values():
            if not t.verified:
                t.awaiting, t.awaiting_since = True, None
                waiting.append(t.transfer_id)
        return waiting

    def awaiting(self) -> list[str]:
        return [t.transfer_id for t in self.transfers.values() if t.awaiting and not t.verified]

    def pending(self) -> list[tuple[str, int, int]]:
        """(transfer id, chunks acked, chunk count) of every unfinished transfer."""
        return [
            (t.transfer_id, len(t.acked), t.chunk_count)
            for t in self.transfers.values()
            if not t.verified
        ]

    def stalled(self, now: float, after: float) -> list[str]:
        """Transfers whose every chunk the hub has held for ``after`` seconds without
        verifying them (a hub waiting for a preview, or one that missed its moment):
        their manifest may go again, which makes the hub look again. Each comes back
        at most once per ``after``."""
        out = []
        for t in self.transfers.values():
            whole = not t.verified and len(t.acked) >= t.chunk_count
            t.whole_since = (now if t.whole_since is None else t.whole_since) if whole else None
            if not whole or t.awaiting:
                t.held_since = None
            elif t.held_since is None:
                t.held_since = now
            elif now - t.held_since >= after:
                t.held_since = now
                out.append(t.transfer_id)
        return out

    def held_whole_for(self, transfer_id: str, now: float) -> float:
        """Seconds since ``stalled`` first saw the hub hold every chunk of the transfer
        without verifying it, through manifests sent again and reconnections (0: not
        so, or forgotten)."""
        t = self.transfers.get(transfer_id)
        return now - t.whole_since if t is not None and t.whole_since is not None else 0.0

    def forget(self, transfer_id: str) -> None:
        self.transfers.pop(transfer_id, None)
        for key in [k for k in self.in_flight if k[0] == transfer_id]:
            del self.in_flight[key]

    def receive_ack(self, ack: dict[str, Any], fresh: bool = False) -> list[Any]:
        """Apply the hub's ack (the JSON that ``Reception.ack`` made). ``fresh``: the
        hub's answer to the manifest sent on this connection, so its ``held`` is the
        whole truth and whatever was in flight before and is not held was lost."""
        if not isinstance(ack, dict) or not isinstance(ack.get("transfer_id"), str):
            raise RemoteProtocolError(f"ack without a transfer id: {str(ack)[:100]}")
        t = self.transfers.get(ack["transfer_id"])
        if t is None:
            return []  # an ack for a transfer we finished or never had: nothing to do
        held = RangeSet.from_json(ack.get("held", []), t.chunk_count)
        before = len(t.acked)
        for s, e in held.to_json():
            t.acked.add_range(s, e)
        for i in held:
            self.in_flight.pop((t.transfer_id, i), None)
        if fresh and t.awaiting:
            # the first answer since the connection began: what was in flight before
            # and is not held was lost. A later answer to the same manifest (sent
            # again while the first was queued on a slow link) must not free chunks
            # handed out since: they are on their way.
            t.awaiting = False
            for key in [k for k in self.in_flight if k[0] == t.transfer_id]:
                del self.in_flight[key]
        resend = ack.get("resend", [])
        if not isinstance(resend, list):
            raise RemoteProtocolError(f"{t.transfer_id}: resend must be a list")
        for i in resend:
            if isinstance(i, int) and i not in t.acked:
                self.in_flight.pop((t.transfer_id, i), None)
        events: list[Any] = []
        if len(t.acked) > before:
            self.acked_total += len(t.acked) - before
            events.append(ChunksAcked(t.transfer_id, len(t.acked) - before))
        if ack.get("verified") is True and len(t.acked) == t.chunk_count and not t.verified:
            t.verified = True
            events.append(TransferVerified(t.transfer_id))
        return events

    def to_json(self) -> str:
        # in-flight is not kept: after a restart everything unacked may go again
        return json.dumps(
            {
                "window": self.window,
                "ack_timeout": self.ack_timeout,
                "transfers": [
                    {
                        "transfer_id": t.transfer_id,
                        "priority": t.priority.value,
                        "seq": t.seq,
                        "chunk_count": t.chunk_count,
                        "acked": t.acked.to_json(),
                        "verified": t.verified,
                        "preview": t.preview,
                    }
                    for t in self.transfers.values()
                ],
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> Uplink:
        d = json.loads(raw)
        u = cls(d["window"], d["ack_timeout"])
        for t in d["transfers"]:
            u.transfers[t["transfer_id"]] = _Outgoing(
                t["transfer_id"],
                Priority(t["priority"]),
                t["seq"],
                t["chunk_count"],
                RangeSet.from_json(t["acked"], t["chunk_count"]),
                t["verified"],
                preview=bool(t.get("preview", False)),
            )
        return u
