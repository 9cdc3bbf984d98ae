"""The box's connection to its broker: connect, notice a loss (a refused CONNECT, a
silent broker, a dead socket), and reconnect with a growing back-off with jitter, so
that a fleet does not come back in lockstep."""

from __future__ import annotations

import errno
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from common.mqtt import connect_properties, mqtt_client
from wire import frames

log = logging.getLogger("radsetu.sync")

LOCAL_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}
LOCAL_RETRY_SECONDS = 5.0


def use_congestion_control(sock: Any, name: str) -> str:
    """Ask the kernel for ``name`` as the connection's TCP congestion control (empty:
    leave the system's). Returns the one in use, "" where there is no such option.
    A name the kernel refuses (not loaded, or not allowed to this user) leaves the
    system's, and says so: the link works either way."""
    if not hasattr(socket, "TCP_CONGESTION"):
        return ""
    if name:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
        except OSError as exc:
            log.warning("TCP congestion control %r refused (%s): the system's is used; "
                        "docs/field-engineer.md says how to allow it", name, exc)  # fmt: skip
    try:
        used: bytes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    except OSError:
        return ""
    return used.split(b"\0", 1)[0].decode(errors="replace")


class Link:
    def __init__(
        self,
        box_id: str,
        m: dict[str, Any],
        s: dict[str, Any],
        stop_event: threading.Event,
        *,
        on_up: Callable[[mqtt.Client], None],
        on_down: Callable[[], None],
        note_error: Callable[[str | None], None],
    ):
        self.box_id, self.m, self.s, self.stop_event = box_id, m, s, stop_event
        self.on_up, self.on_down, self.note_error = on_up, on_down, note_error
        self.client: mqtt.Client | None = None
        self.connected = False
        self.connecting_since: float | None = None
        self.ever_connected = False
        self.backoff = float(s["reconnect_min_seconds"])
        self.next_attempt = 0.0
        self.last_why: str | None = None
        self.congestion = ""  # the connection's TCP congestion control
        self.congestion_refused = False

    def make_client(self, on_message: Any, on_publish: Any) -> mqtt.Client:
        """The box's paho client, its last will saying "offline" (retained)."""
        c = mqtt_client(f"radsetu-box-{self.box_id}", self.m)
        c.max_inflight_messages_set(self.s["window"] + 4)  # chunks + manifests + status
        c.will_set(
            frames.topic(self.box_id, frames.STATUS),
            json.dumps(
                {
                    "box_id": self.box_id,
                    "online": False,
                    "link": "down",
                    "reason": "connection lost",
                }
            ),
            qos=1,
            retain=True,
        )
        c.on_socket_open = self._on_socket_open
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = on_message
        c.on_publish = on_publish
        self.client = c
        return c

    def step(self, now: float) -> None:
        """Connect when due, and let paho read and write; notice a dead link."""
        assert self.client is not None
        self._maybe_connect(now)
        if self.connected or self.connecting_since is not None:
            rc = self.client.loop(timeout=0.01)
            if rc is not MQTTErrorCode.MQTT_ERR_SUCCESS and (
                self.connected or self.connecting_since is not None
            ):
                self._lost(f"network: {mqtt.error_string(rc)}")

    def _maybe_connect(self, now: float) -> None:
        assert self.client is not None
        if self.connecting_since is not None and now - self.connecting_since > max(
            10.0, 1.5 * self.m["keepalive"]
        ):
            self._lost("the broker did not answer CONNECT")
        if self.connected or self.connecting_since is not None or now < self.next_attempt:
            return
        try:
            if self.ever_connected:
                self.client.reconnect()
            else:
                self.client.connect(
                    self.m["host"],
                    self.m["port"],
                    keepalive=self.m["keepalive"],
                    clean_start=False,
                    properties=connect_properties(self.m),
                )
                self.ever_connected = True
            self.connecting_since = now
        except (OSError, ssl.SSLError, ValueError) as exc:
            # no route: the box's own link is down and nothing reached the broker, so
            # looking again soon costs the broker nothing and finds the link sooner
            local = getattr(exc, "errno", None) in LOCAL_ERRNOS
            self._retry_later(
                f"cannot reach the broker {self.m['host']}:{self.m['port']}: {exc}",
                cap=LOCAL_RETRY_SECONDS if local else None,
            )

    def _retry_later(self, why: str, cap: float | None = None) -> None:
        backoff = min(self.backoff, cap) if cap else self.backoff
        delay = backoff / 2 + random.uniform(0, backoff / 2)  # equal jitter
        self.next_attempt = time.monotonic() + delay
        self.backoff = min(self.backoff * 2, float(self.s["reconnect_max_seconds"]))
        if why != self.last_why:
            log.warning("%s; trying again in %.1f s", why, delay)
        self.last_why = why
        self.note_error(why)

    def _lost(self, why: str, refused: bool = False) -> None:
        """The link is gone (``refused``: the broker answered CONNECT with a refusal)."""
        was = self.connected
        if not was and self.connecting_since is not None and not refused:
            why = (
                f"the broker closed the connection before accepting the box ({why}): with "
                "TLS, check [mqtt] cert_file, key_file and ca_file"
            )
        self.connected = False
        self.connecting_since = None
        self.on_down()  # reconnect() closes whatever socket is left
        if self.stop_event.is_set():
            return
        if was:
            log.warning("link to the broker lost (%s)", why)
        self._retry_later(why)

    def _on_socket_open(self, _c: Any, _u: Any, sock: Any) -> None:
        want = "" if self.congestion_refused else self.m["congestion_control"]
        self.congestion = use_congestion_control(sock, want)  # refused: said once
        if want:
            self.congestion_refused = self.congestion != want

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        self.connecting_since = None
        if rc.is_failure:
            self._lost(
                f"the broker refused the box: {rc} (check [mqtt] username and password, "
                "or the box's certificate)",
                refused=True,
            )
            return
        self.connected = True
        self.backoff = float(self.s["reconnect_min_seconds"])
        self.last_why = None
        self.note_error(None)
        log.info(
            "connected to the broker %s:%s (session %s, TCP congestion control %s)",
            self.m["host"],
            self.m["port"],
            "resumed" if flags.session_present else "new",
            self.congestion or "unknown",
        )
        self.on_up(client)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.connected or self.connecting_since is not None:
            self._lost(f"disconnected: {rc}")
