"""The clinic page's HTTP server: waitress, with a guard on request bodies.

Waitress reads a whole request body (into a temporary file past 512 KiB) before the
app sees the request, so the app's login check comes too late to stop a stranger on
the LAN from filling the disk. The guard looks at each request as soon as its headers
are in: a body of more than ``PRE_LOGIN_BYTES`` (or of unknown length) is refused
with 413 and never read unless the request carries a live session (or is an API call
from the box itself while ``web.trust_loopback``). After a login the limit is
``web.max_upload_bytes``. The bodies that are read are spooled under the data
folder's ``tmp/``, on the data disk, never in ``/tmp``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import tempfile
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any

from flask import Flask
from waitress import create_server
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.utilities import RequestEntityTooLarge

from common import sessions
from edge.config import Config
from edge.store import reader

log = logging.getLogger("radsetu.web")

PRE_LOGIN_BYTES = 1 << 20  # a login form, a JSON call: far less
MULTIPART_SLACK = 1 << 20  # the form's boundaries and headers around the files

Guard = Callable[[str, dict[str, str], str], bool]


class _Discard:
    """A refused body's remaining bytes, read and dropped (never stored), so that the
    413 reaches the client: a proxy still sending the body (nginx, unbuffered) would
    otherwise see the connection reset and answer 502 instead."""

    completed = False

    def __init__(self, remain: int, error: Exception):
        self.remain = remain
        self.refusal = error
        self.error: Exception | None = None if remain > 0 else error
        self.completed = remain <= 0

    def received(self, data: bytes) -> int:
        n = min(len(data), self.remain)
        self.remain -= n
        if self.remain <= 0:
            self.error = self.refusal  # the parser completes with the 413
        return n

    def __len__(self) -> int:
        return 0


class GuardedParser(HTTPRequestParser):  # type: ignore[misc]
    """Waitress's request parser, asking ``guard`` before it reads a large body."""

    def __init__(self, adj: Any, guard: Guard, peer: str, drain: bool = False):
        super().__init__(adj)
        self._guard = guard
        self._peer = peer
        self._drain = drain  # the box's own TLS proxy is sending: drain, then refuse

    def received(self, data: bytes) -> int:
        was = self.headers_finished
        consumed: int = super().received(data)
        if was or not self.headers_finished or self.completed or self.error is not None:
            return consumed
        if self.chunked or self.content_length > PRE_LOGIN_BYTES:
            if not self._guard(self.path, self.headers, self._peer):
                log.warning(
                    "refused a %s-byte body for %s from %s before a login",
                    "chunked" if self.chunked else self.content_length,
                    self.path,
                    self._peer,
                )
                refusal = RequestEntityTooLarge(
                    f"log in first: at most {PRE_LOGIN_BYTES} bytes are read before a login"
                )
                remain = getattr(self.body_rcv, "remain", None)
                too_big = remain is None or remain > self.adj.max_request_body_size
                if not self._drain or self.chunked or too_big:
                    self.error = refusal  # answered at once, the connection closed
                    self.completed = True
                else:  # no bigger than an upload the config allows: drained, not kept
                    self.body_rcv = _Discard(remain, refusal)
                    if self.body_rcv.error is not None:
                        self.error = refusal
                        self.completed = True
        return consumed


class GuardedChannel(HTTPChannel):  # type: ignore[misc]
    def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None):
        super().__init__(server, sock, addr, adj, map)
        peer = addr[0] if isinstance(addr, tuple) else ""
        drain = getattr(server, "drain_refused", False) and peer in ("127.0.0.1", "::1")
        self.parser_class = functools.partial(
            GuardedParser, guard=server.body_guard, peer=peer, drain=drain
        )


def session_guard(app: Flask, config: Config) -> Guard:
    """May this request send a large body? Yes with a live session in its cookie, or
    for /api/ from the box itself while ``web.trust_loopback``."""
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    cookie_name = app.config["SESSION_COOKIE_NAME"]
    max_age = int(app.permanent_session_lifetime.total_seconds())

    def allowed(path: str, headers: dict[str, str], peer: str) -> bool:
        if config["web"]["trust_loopback"] and path.startswith("/api/"):
            try:
                if ipaddress.ip_address(peer).is_loopback:
                    return True
            except ValueError:
                pass
        try:
            morsel = SimpleCookie(headers.get("COOKIE", "")).get(cookie_name)
            data = serializer.loads(morsel.value, max_age=max_age) if morsel else None
        except (CookieError, ValueError, TypeError):
            return False  # itsdangerous' BadSignature is a ValueError
        if not isinstance(data, dict) or not data.get("sid"):
            return False
        with reader(config.data_dir) as db:
            return sessions.lookup(db, str(data["sid"])) is not None

    return allowed


def make_server(app: Flask, config: Config, spool: Path) -> Any:
    """The waitress server for ``app``, its bodies guarded and spooled to ``spool``."""
    tempfile.tempdir = str(spool)  # waitress' overflow buffers are TemporaryFile()s
    w = config["web"]
    # waitress drops X-Forwarded-* unless it trusts the sender; behind the box's TLS
    # proxy (nginx on the same machine) it trusts that one hop on loopback, no other
    proxy: dict[str, Any] = {}
    if w.get("behind_tls_proxy"):
        proxy = {
            "trusted_proxy": "127.0.0.1",
            "trusted_proxy_count": 1,
            "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"},
        }
    server = create_server(
        app,
        host=w["host"],
        port=w["port"],
        threads=4,
        max_request_body_size=w["max_upload_bytes"] + MULTIPART_SLACK,
        **proxy,
    )
    server.body_guard = session_guard(app, config)
    # a direct client's refused body is never read; the TLS proxy's is read and dropped
    # (it streams the body on, and would turn a reset into 502 for the person)
    server.drain_refused = bool(proxy)
    server.channel_class = GuardedChannel
    return server
