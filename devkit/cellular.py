"""A link that behaves like rural cellular, for tests and benches: rate, round-trip
delay, random and burst loss, a bounded queue, and outages, in both directions.

netem is not in these machines' kernels, so the link is shaped in user space, on IP
packets: a network namespace (the clinic) gets a TUN device, this namespace another,
and one thread carries each packet from one to the other through a model of the link.
Because the packets themselves are delayed and dropped, TCP at both ends sees the real
round trip and real losses (its congestion control, retransmissions and timers run as
they would over the air), which a relay of bytes could not show.

Each direction:
- **rate**: a packet leaves the bottleneck ``size * 8 / rate`` after the one before it;
- **queue**: a packet that would wait more than ``queue_ms`` there is dropped (the
  base station's buffer);
- **delay**: it arrives ``rtt_ms / 2`` (± ``jitter_ms``) after leaving;
- **loss**: dropped at random with ``loss``, and in bursts (a Gilbert-Elliott chain:
  ``burst_enter`` is the chance per packet of going bad, ``burst_exit`` of coming back;
  a bad state drops everything);
- **outages**: ``cut()``/``restore()``, or ``outage_every_s``/``outage_s`` for a
  regular cut; nothing passes while down.

The profile can be changed while the link runs (``set_profile``), as a cell's rate
changes by the minute. Random choices come from a seeded generator.

    link = CellularLink(Profile(rate_kbps=256, rtt_ms=600, loss=0.02)).start()
    subprocess.run(link.inside("storescu", ...))   # runs in the clinic's namespace
    ... link.hub_ip is this side's address, link.clinic_ip the clinic's ...
    link.stop()

Needs root (namespaces, TUN devices).
"""

from __future__ import annotations

import dataclasses
import fcntl
import heapq
import itertools
import os
import random
import select
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
_ids = itertools.count(1)


@dataclass(frozen=True)
class Profile:
    rate_kbps: float = 1000.0
    rtt_ms: float = 600.0
    loss: float = 0.0
    burst_enter: float = 0.0
    burst_exit: float = 0.3
    jitter_ms: float = 0.0
    queue_ms: float = 2000.0
    outage_every_s: float = 0.0
    outage_s: float = 0.0


@dataclass
class Direction:
    """One way's state and counters."""

    name: str
    next_free: float = 0.0  # when the bottleneck is free again
    bad: bool = False  # the Gilbert-Elliott chain's state
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "packets",
                "bytes",
                "delivered",
                "random_loss",
                "burst_loss",
                "queue_drop",
                "outage_drop",
            ),
            0,
        )  # fmt: skip
    )


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class CellularLink:
    def __init__(self, profile: Profile | None = None, seed: int = 7):
        n = next(_ids)
        tag = f"{os.getpid() % 10000}{n}"
        self.ns = f"rscell{tag}"
        self._names = (f"rsc{tag}", f"rsh{tag}")  # the clinic's and this side's TUN
        subnet = 100 + (os.getpid() + n) % 150
        self.clinic_ip, self.hub_ip = f"10.{subnet}.{n % 250}.2", f"10.{subnet}.{n % 250}.1"
        self.profile = profile or Profile()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._down = False
        self._stop = threading.Event()
        self._fds: tuple[int, int] = (-1, -1)
        self.up = Direction("up")  # clinic -> hub
        self.down = Direction("down")  # hub -> clinic
        self._thread = threading.Thread(target=self._run, name="cellular", daemon=True)
        self._started = 0.0

    # -- set-up ----------------------------------------------------------------------
    def start(self) -> CellularLink:
        clinic_if, hub_if = self._names
        _sh("ip", "netns", "add", self.ns)
        try:
            fds = (_tun(clinic_if), _tun(hub_if))
            self._fds = fds
            _sh("ip", "link", "set", clinic_if, "netns", self.ns)  # its fd stays ours
            _sh("ip", "-n", self.ns, "link", "set", "lo", "up")
            _sh("ip", "-n", self.ns, "addr", "add", self.clinic_ip, "peer", self.hub_ip,
                "dev", clinic_if)  # fmt: skip
            _sh("ip", "-n", self.ns, "link", "set", clinic_if, "up")
            _sh("ip", "addr", "add", self.hub_ip, "peer", self.clinic_ip, "dev", hub_if)
            _sh("ip", "link", "set", hub_if, "up")
        except BaseException:
            self.stop()
            raise
        self._started = time.monotonic()
        self._thread.start()
        return self

    def inside(self, *cmd: str) -> list[str]:
        """``cmd`` to run in the clinic's namespace."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for fd in self._fds:
            if fd >= 0:
                os.close(fd)
        self._fds = (-1, -1)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    # -- while it runs ---------------------------------------------------------------
    def set_profile(self, profile: Profile) -> None:
        with self._lock:
            self.profile = profile

    def cut(self) -> None:
        self._down = True

    def restore(self) -> None:
        self._down = False

    def is_down(self) -> bool:
        p = self.profile
        if self._down:
            return True
        if p.outage_every_s and p.outage_s:
            since = (time.monotonic() - self._started) % p.outage_every_s
            return since >= p.outage_every_s - p.outage_s
        return False

    def stats(self) -> dict[str, dict[str, int]]:
        return {d.name: dict(d.counts) for d in (self.up, self.down)}

    # -- the model -------------------------------------------------------------------
    def _admit(self, d: Direction, size: int, now: float) -> float | None:
        """When the packet arrives at the far end, or None when it is lost."""
        p = self.profile
        d.counts["packets"] += 1
        d.counts["bytes"] += size
        if self.is_down():
            d.counts["outage_drop"] += 1
            return None
        if p.burst_enter:
            d.bad = (self._rng.random() >= p.burst_exit) if d.bad else (
                self._rng.random() < p.burst_enter)  # fmt: skip
            if d.bad:
                d.counts["burst_loss"] += 1
                return None
        if p.loss and self._rng.random() < p.loss:
            d.counts["random_loss"] += 1
            return None
        start = max(now, d.next_free)
        if start - now > p.queue_ms / 1000:
            d.counts["queue_drop"] += 1
            return None
        d.next_free = start + size * 8 / (p.rate_kbps * 1000)
        jitter = self._rng.uniform(-p.jitter_ms, p.jitter_ms) / 1000 if p.jitter_ms else 0.0
        return d.next_free + max(p.rtt_ms / 2000 + jitter, 0.0)

    def _run(self) -> None:
        clinic_fd, hub_fd = self._fds
        ways = {clinic_fd: (self.up, hub_fd), hub_fd: (self.down, clinic_fd)}
        due: list[tuple[float, int, int, bytes]] = []  # (when, order, to fd, packet)
        order = itertools.count()
        while not self._stop.is_set():
            now = time.monotonic()
            wait = min(max(due[0][0] - now, 0.0), 0.05) if due else 0.05
            ready, _, _ = select.select([clinic_fd, hub_fd], [], [], wait)
            now = time.monotonic()
            for fd in ready:
                try:
                    packet = os.read(fd, 65535)
                except OSError:
                    continue
                direction, to = ways[fd]
                with self._lock:
                    at = self._admit(direction, len(packet), now)
                if at is not None:
                    heapq.heappush(due, (at, next(order), to, packet))
            while due and due[0][0] <= time.monotonic():
                _at, _n, to, packet = heapq.heappop(due)
                try:
                    os.write(to, packet)
                    (self.up if to == hub_fd else self.down).counts["delivered"] += 1
                except OSError:
                    pass


def mathis_bps(mss: int, rtt_s: float, loss: float) -> float:
    """What one TCP connection can carry with random loss (Mathis et al. 1997:
    MSS / RTT * C / sqrt(p), C = sqrt(3/2) ~ 1.22), in bits a second."""
    if loss <= 0:
        return float("inf")
    return mss * 8 / rtt_s * 1.22 / loss**0.5


def profile_with(p: Profile, **changes: float) -> Profile:
    return dataclasses.replace(p, **changes)
