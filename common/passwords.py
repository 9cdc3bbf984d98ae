"""Password hashes for the box's and the hub's accounts: scrypt (hashlib, no extra
package), a 16-byte random salt per password, parameters kept in the hash so they can
be raised later without breaking old ones."""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

N, R, P = 2**14, 8, 1
MIN_LENGTH = 10


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return f"scrypt${N}${R}${P}${salt.hex()}${digest.hex()}"


def check_password(stored: str, password: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


_DUMMY = hash_password("timing only")


def check_unknown(password: str) -> None:
    """Spend the same time as a real check, for a user that does not exist."""
    check_password(_DUMMY, password)


def session_key(data_dir: Path) -> str:
    """The key that signs a web app's session cookies: made once, kept in the data
    folder with mode 0600 (never in the repository), the same for every worker."""
    key_file = Path(data_dir) / "session.key"
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    return key_file.read_text().strip()


def local_next(target: str) -> str | None:
    """Where to go after a login: a path on this site only (no open redirect). Browsers
    drop tabs and newlines from a URL and read a backslash as a slash, so
    ``/\t/evil.example`` and ``/\\evil.example`` would leave the site: refused."""
    if (
        not target.startswith("/")
        or any(c in target for c in "\\\t\r\n")
        or not target.isprintable()
    ):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return None
    return target


def read_password(name: str) -> str:
    """A new account's password: asked for on a terminal, else one line of stdin."""

    if sys.stdin.isatty():
        return getpass.getpass(f"password for {name}: ")
    return sys.stdin.readline().rstrip("\n")


def csrf_token(session: Any) -> str:
    """The session's CSRF token (made on first use) for the page's forms and scripts."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def csrf_sent(session: Any, form: Any, headers: Any) -> bool:
    """Did the request carry its session's CSRF token (form field ``csrf`` or header
    ``X-CSRF-Token``)? Compared in constant time."""
    sent = form.get("csrf") or headers.get("X-CSRF-Token", "")
    return bool(sent) and secrets.compare_digest(str(sent), str(session.get("csrf", "")))
