"""The cellular link emulator (devkit/cellular.py) does what it says, seen from TCP in a
real network namespace: the round trip is the profile's, a transfer takes at least its
bytes over the rate, random and burst losses happen (and TCP gets through them), an
outage stops everything until it ends, and a new profile applies at once. Lower bounds
only: how much slower a loaded machine makes it is for the benches."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from devkit.cellular import CellularLink, Profile, mathis_bps, profile_with

SEND = """
import socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = time.monotonic()
s = socket.create_connection((host, port), timeout=float(sys.argv[4]))
connected = time.monotonic() - t
s.sendall(b"x" * size)
s.shutdown(socket.SHUT_WR)
s.recv(1)  # the far end's answer: everything arrived
print(connected, time.monotonic() - t)
"""


def send(link: CellularLink, size: int, timeout: float = 30) -> tuple[float, float, int]:
    """(seconds to connect, seconds to deliver ``size`` bytes, bytes received) from the
    clinic's namespace to a server on this side."""
    srv = socket.create_server((link.hub_ip, 0))
    got: list[int] = []

    def serve() -> None:
        c, _ = srv.accept()
        n = 0
        while chunk := c.recv(65536):
            n += len(chunk)
        got.append(n)
        c.sendall(b"k")
        c.close()

    threading.Thread(target=serve, daemon=True).start()
    port = srv.getsockname()[1]
    try:
        args = (link.hub_ip, str(port), str(size), str(timeout))
        r = subprocess.run(link.inside(sys.executable, "-c", SEND, *args),
                           capture_output=True, text=True, timeout=timeout + 10)  # fmt: skip
        if r.returncode != 0:
            raise ConnectionError(r.stderr[-500:])
        connected, took = (float(x) for x in r.stdout.split())
        return connected, took, got[0]
    finally:
        srv.close()


@pytest.fixture
def link():
    if sys.platform != "linux":
        pytest.fail("the emulator needs Linux namespaces and TUN devices")
    lk = CellularLink(Profile(rate_kbps=1000, rtt_ms=300, loss=0.02)).start()
    yield lk
    lk.stop()


def test_rate_delay_and_loss_as_the_profile_says(link):
    connected, took, got = send(link, 400_000)
    assert got == 400_000  # TCP got everything through the losses
    assert connected >= 0.3  # a SYN and its answer: one round trip
    assert took >= 400_000 * 8 / 1_000_000  # no faster than the rate
    s = link.stats()
    up = s["up"]
    assert up["delivered"] + up["random_loss"] <= up["packets"]  # the rest still in flight
    assert 0.005 <= up["random_loss"] / up["packets"] <= 0.06, up
    assert s["down"]["packets"] > 0  # the acks came back over the same link
    # what one TCP connection can carry there (Mathis): the bench compares with it
    assert 300_000 < mathis_bps(1448, 0.3, 0.02) < 350_000


def test_bursts_outages_and_a_new_profile(link):
    link.set_profile(Profile(rate_kbps=2000, rtt_ms=100, burst_enter=0.03, burst_exit=0.4))
    _c, _t, got = send(link, 300_000)
    assert got == 300_000 and link.stats()["up"]["burst_loss"] > 0

    link.cut()  # nothing passes: a connection cannot even start
    with pytest.raises(ConnectionError):
        send(link, 1000, timeout=1.5)
    assert link.stats()["up"]["outage_drop"] > 0
    link.restore()

    slow = profile_with(link.profile, rate_kbps=256.0, burst_enter=0.0)
    link.set_profile(slow)
    _c, took, got = send(link, 64_000)
    assert got == 64_000 and took >= 64_000 * 8 / 256_000  # the new rate, at once

    # a regular outage: down for the last 1 s of every 2 s
    link.set_profile(profile_with(slow, rate_kbps=4000.0, outage_every_s=2.0, outage_s=1.0))
    downs = []
    for _ in range(20):
        downs.append(link.is_down())
        time.sleep(0.1)
    assert any(downs) and not all(downs)
