"""A real SMS gateway for tests: Kannel's bearerbox and smsbox (Debian's ``kannel``) with
``fakesmsc`` (``kannel-extras``) standing in for the operator's SMS centre, as plain
processes on free ports. What the gateway delivered to phones is read from fakesmsc's
output; a phone's reply is sent through a new fakesmsc (the fake centre takes one
connection at a time; messages wait in bearerbox meanwhile).

The smsbox passes replies to ``inbound_url`` (Kannel's ``get-url``, with ``%p`` the
sender and ``%a`` the text)."""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import socket
import urllib.parse
from pathlib import Path

from devkit.box import free_port
from devkit.servers import end_group, spawn, until_ready

BEARERBOX = "/usr/sbin/bearerbox"
SMSBOX = "/usr/sbin/smsbox"
FAKESMSC = "/usr/lib/kannel/test/fakesmsc"
_GOT = re.compile(r"Got message \d+: <(\S+) (\S+) (\S+) ([^>]*)>")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _text(data: str, ucs2: bool | None) -> str:
    """fakesmsc's url-encoded message data as text; ``ucs2`` None: UCS-2 when it holds
    bytes below 0x20 (its NUL and Kannada's 0x0C high bytes), plain text never does."""
    raw = urllib.parse.unquote_to_bytes(data.replace("+", " "))
    if ucs2 is None:
        ucs2 = any(b < 0x20 for b in raw)
    return raw.decode("utf-16-be") if ucs2 else raw.decode("latin-1")


class Kannel:
    def __init__(self, workdir: Path, inbound_url: str = ""):
        for tool in (BEARERBOX, SMSBOX, FAKESMSC):
            if not Path(tool).exists():
                raise RuntimeError(f"{tool} is missing (make test installs kannel, kannel-extras)")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.admin, self.box_port, self.smsc_port, self.sendsms_port = (
            free_port(), free_port(), free_port(), free_port(),
        )  # fmt: skip
        self.username, self.password = "radsetu", secrets.token_urlsafe(12)
        self.inbound_url = inbound_url
        self.procs: dict[str, object] = {}
        self.phones: list[Path] = []

    @property
    def sendsms_url(self) -> str:
        return f"http://127.0.0.1:{self.sendsms_port}/cgi-bin/sendsms"

    def _config(self) -> Path:
        spool = self.dir / "spool"
        spool.mkdir(exist_ok=True)
        groups = [
            {"group": "core", "admin-port": self.admin, "admin-password": secrets.token_hex(8),
             "smsbox-port": self.box_port, "box-allow-ip": "127.0.0.1",
             "admin-allow-ip": "127.0.0.1", "log-level": 1,
             "log-file": self.dir / "bearerbox.log", "store-type": "spool",
             "store-location": spool},
            {"group": "smsc", "smsc": "fake", "smsc-id": "fake", "port": self.smsc_port,
             "connect-allow-ip": "127.0.0.1"},
            {"group": "smsbox", "bearerbox-host": "127.0.0.1", "bearerbox-port": self.box_port,
             "sendsms-port": self.sendsms_port, "log-level": 1,
             "log-file": self.dir / "smsbox.log", "mo-recode": "true"},
            {"group": "sendsms-user", "username": self.username, "password": self.password,
             "max-messages": 6, "concatenation": "true"},
        ]  # fmt: skip
        if self.inbound_url:
            groups.append({"group": "sms-service", "keyword": "default", "catch-all": "true",
                           "get-url": self.inbound_url, "max-messages": 1})  # fmt: skip
        text = ""
        for g in groups:
            for k, v in g.items():
                quoted = isinstance(v, str | Path) and k != "group"
                text += f'{k} = "{v}"\n' if quoted else f"{k} = {v}\n"
            text += "\n"
        conf = self.dir / "kannel.conf"
        conf.write_text(text)
        return conf

    def start(self) -> Kannel:
        conf = self._config()
        log = self.dir / "bearerbox.out"
        bb = spawn([BEARERBOX, str(conf)], log)
        self.procs["bearerbox"] = bb
        until_ready(bb, lambda: _listening(self.smsc_port), 20, "bearerbox", log)
        self.phone()  # the operator's centre, connected before any message goes
        log = self.dir / "smsbox.out"
        sb = spawn([SMSBOX, str(conf)], log)
        self.procs["smsbox"] = sb
        until_ready(sb, lambda: _listening(self.sendsms_port), 20, "smsbox", log)
        return self

    def phone(self, reply: tuple[str, str, str] | None = None) -> None:
        """(Re)connect the fake SMS centre; with ``reply`` (from, to, text) it first
        delivers that message from a phone to the gateway."""
        old = self.procs.pop("fakesmsc", None)
        if old is not None:
            end_group(old, signal.SIGTERM, 5)  # type: ignore[arg-type]
        log = self.dir / f"fakesmsc-{len(self.phones)}.out"
        self.phones.append(log)
        cmd = [FAKESMSC, "-H", "127.0.0.1", "-r", str(self.smsc_port), "-i", "0.2"]
        if reply:
            cmd += ["-m", "1", f"{reply[0]} {reply[1]} text {reply[2]}"]
        else:
            cmd += ["-m", "0", "nobody none text none"]
        self.procs["fakesmsc"] = spawn(cmd, log)

    def delivered(self) -> list[tuple[str, str, str]]:
        """(from, to, text) of every message the gateway handed to the SMS centre, a long
        one's parts (concatenated SMS: a user data header per part) joined again."""
        out: list[tuple[str, str, str]] = []
        parts: dict[tuple[str, str, int], dict[int, str]] = {}
        for log in self.phones:
            text = log.read_text(errors="replace") if log.exists() else ""
            for sender, to, kind, rest in _GOT.findall(text):
                if kind != "udh":
                    out.append((sender, to, _text(rest, kind == "ucs-2")))
                    continue
                udh, _, data = rest.partition(" data ")
                _len, _iei, _n, ref, total, seq = urllib.parse.unquote_to_bytes(udh)[:6]
                got = parts.setdefault((sender, to, ref), {})
                got[seq] = _text(data, None)
                if len(got) == total:
                    out.append((sender, to, "".join(got[i] for i in sorted(got))))
                    del parts[(sender, to, ref)]
        return out

    def stop(self) -> None:
        for name in ("smsbox", "fakesmsc", "bearerbox"):
            end_group(self.procs.pop(name, None), signal.SIGTERM, 10)  # type: ignore[arg-type]

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
