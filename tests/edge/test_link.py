"""The box's TCP congestion control on its broker connection (``mqtt.congestion_control``),
on real loopback sockets."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from edge.link import Link, use_congestion_control

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "TCP_CONGESTION"), reason="no TCP_CONGESTION on this platform"
)


@pytest.fixture
def connection():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    yield client
    for s in (client, peer, server):
        s.close()


def test_the_box_asks_for_its_congestion_control_and_reports_it(connection):
    assert use_congestion_control(connection, "reno") == "reno"  # built into every kernel
    raw = connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    assert raw.rstrip(b"\0") == b"reno"
    assert use_congestion_control(connection, "") == "reno"  # empty: left as it is


def test_a_refused_one_leaves_the_connection_as_it_was_and_says_so(connection, caplog):
    use_congestion_control(connection, "reno")
    with caplog.at_level(logging.WARNING, logger="radsetu.sync"):
        assert use_congestion_control(connection, "nosuchcc") == "reno"
    assert "'nosuchcc' refused" in caplog.text and "field-engineer.md" in caplog.text


def test_the_box_says_it_once_not_at_every_reconnection(connection, caplog):
    link = Link("box-1", {"congestion_control": "nosuchcc"}, {"reconnect_min_seconds": 1},
                threading.Event(), on_up=lambda c: None, on_down=lambda: None,
                note_error=lambda why: None)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="radsetu.sync"):
        for _ in range(3):  # three connections
            link._on_socket_open(None, None, connection)
    assert caplog.text.count("refused") == 1 and link.congestion_refused
    assert link.congestion == use_congestion_control(connection, "")
