"""Request bodies at the clinic's page (issue 14, point 12), against a running box:
before a login the box reads at most 1 MiB of any request, so a stranger's 300 MB
POST is refused before it is read; after a login the configured limit applies, and
what is read is spooled on the data disk, never in /tmp."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from devkit.box import Box
from edge.webserver import PRE_LOGIN_BYTES
from tests.helpers import box_login

PASSWORD = "correct horse battery"
REFUSED = b"HTTP/1.1 413 (or the connection closed before it could be read)"


@pytest.fixture
def box(tmp_path: Path):
    b = Box(tmp_path / "box", quiet_seconds=1)
    b.start(env={"RADSETU_WEB_MAX_UPLOAD_BYTES": str(40 << 20)})
    b.add_user("asha", PASSWORD)
    yield b
    b.stop()


def login(port: int) -> str:
    return box_login(port, "asha", PASSWORD)


def post_headers(length: int, cookie: str = "") -> bytes:
    lines = [
        "POST /upload HTTP/1.1",
        "Host: box",
        "Content-Type: multipart/form-data; boundary=xyz",
        f"Content-Length: {length}",
    ]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


FILE_PART = (
    b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="junk.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)
END = b"\r\n--xyz--\r\n"


def body_piece(offset: int, size: int, total: int) -> bytes:
    """Bytes ``offset`` to ``offset + size`` of a multipart body of ``total`` bytes: one
    file part of zeros."""
    whole_start, whole_end = FILE_PART, END
    out = bytearray(size)
    for i, src in ((0, whole_start), (total - len(whole_end), whole_end)):
        for j, byte in enumerate(src):
            if offset <= i + j < offset + size:
                out[i + j - offset] = byte
    return bytes(out)


def answer_while_sending(port: int, head: bytes, body_bytes: int) -> tuple[bytes, int]:
    """Send ``head`` and then the body until the box answers or ``body_bytes`` are sent;
    (the answer's first bytes, how much of the body went out before it)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(head)
    sent = 0
    s.setblocking(False)
    answer = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not answer:
        try:
            answer = s.recv(4096) or REFUSED  # closed: the answer was lost in the reset

        except BlockingIOError:
            pass
        except ConnectionResetError:  # it closed with our bytes unread: refused too
            answer = REFUSED
            break
        if sent < body_bytes and not answer:
            try:
                sent += s.send(body_piece(sent, min(64 << 10, body_bytes - sent), body_bytes))
            except (BlockingIOError, ConnectionResetError, BrokenPipeError):
                time.sleep(0.01)
        else:
            time.sleep(0.01)
    s.close()
    return answer, sent


def test_a_large_body_before_a_login_is_refused_unread(box):
    # 30 MB: within web.max_upload_bytes (40 MB here), so only the login is missing
    answer, sent = answer_while_sending(box.web_port, post_headers(30 << 20), 30 << 20)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 10 << 20, f"the box read {sent} bytes before it refused"
    assert "before a login" in box.log_text()
    # a forged cookie is no login
    forged = "session=eyJzaWQiOiJ4In0.forged.signature"
    answer, sent = answer_while_sending(box.web_port, post_headers(30 << 20, forged), 30 << 20)
    assert answer.startswith(b"HTTP/1.1 413") and sent < 10 << 20
    # a small request still reaches the app (which asks for a login)
    small = PRE_LOGIN_BYTES // 2
    answer, _ = answer_while_sending(box.web_port, post_headers(small), small)
    assert answer.startswith(b"HTTP/1.1 400") or b" 302 " in answer[:20], answer[:200]


def spooled_where(pid: int) -> list[str]:
    """The files the box's process has open that are deleted temporaries."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith("(deleted)"):
            out.append(target)
    return out


def test_after_a_login_the_configured_limit_applies_and_spools_on_the_data_disk(box):
    cookie = login(box.web_port)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.extend(spooled_where(box.proc.pid))
            time.sleep(0.02)

    t = threading.Thread(target=watch)
    t.start()
    try:
        # 30 MB of a logged-in upload is read whole (it is junk, so the app refuses it)
        answer, sent = answer_while_sending(box.web_port, post_headers(30 << 20, cookie), 30 << 20)
    finally:
        stop.set()
        t.join()
    assert sent >= 30 << 20 and not answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert seen, "the body was never spooled to a file"
    data = str(box.data_dir)
    assert all(p.startswith(data) for p in seen), seen
    # past the configured limit (40 MB here) it is refused, logged in or not
    answer, sent = answer_while_sending(box.web_port, post_headers(50 << 20, cookie), 50 << 20)
    assert answer.startswith(b"HTTP/1.1 413") and sent < 10 << 20
