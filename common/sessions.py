"""Web sessions kept on the server, and login throttling, for the box's and the hub's
pages alike.

The browser's cookie (Flask's signed session) holds a random session id; the server
keeps only its SHA-256 with the account and the expiry. Every request looks the id up
and reads the account's role from the ``users`` table, so a session ends for good at
logout, at expiry, and when the account is disabled, demoted or given a new password
(``end_all``): a copied cookie is worth nothing after that.

Throttling counts failed logins per account and address, per address and per account
in a window; past a limit that key is locked for a while and no password is even
checked.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils

# failed logins in WINDOW_SECONDS before a key is locked for LOCK_SECONDS: an account
# from one address, one address for any accounts, an account from anywhere. The first
# is the one a person mistyping meets; a guesser elsewhere on the LAN locks only
# itself out, until it has tried an account PER_USER times (then everyone waits).
log = logging.getLogger("radsetu.access")

PER_USER_ADDRESS = 5
PER_ADDRESS = 20
PER_USER = 50
WINDOW_SECONDS = 15 * 60
LOCK_SECONDS = 15 * 60
TOUCH_SECONDS = 60  # how often a session's last use is written


def create_session_tables(db: sqlite_utils.Database) -> None:
    """The sessions and the failed-login counters; ``users`` gains ``disabled`` and
    ``must_change`` (a password set by provisioning, to be changed at first login)."""
    db.execute("""
        CREATE TABLE web_sessions (
            sid_sha256 TEXT PRIMARY KEY, username TEXT NOT NULL,
            created REAL NOT NULL, seen REAL NOT NULL, expires REAL NOT NULL,
            address TEXT NOT NULL DEFAULT ''
        )""")
    db.execute("CREATE INDEX web_sessions_user ON web_sessions(username)")
    db.execute("""
        CREATE TABLE login_failures (
            key TEXT PRIMARY KEY, failures INTEGER NOT NULL, first REAL NOT NULL,
            locked_until REAL NOT NULL DEFAULT 0
        )""")
    db.execute("ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE users ADD COLUMN must_change INTEGER NOT NULL DEFAULT 0")


def _hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


@dataclass(frozen=True)
class Who:
    """The account behind a live session, as the ``users`` table says now."""

    username: str
    role: str
    must_change: bool


def start(db: sqlite_utils.Database, username: str, seconds: float, address: str = "") -> str:
    """A new session for ``username``; returns the id for the cookie (kept only hashed)."""
    sid = secrets.token_urlsafe(32)
    now = time.time()
    db.execute(
        "INSERT INTO web_sessions(sid_sha256, username, created, seen, expires, address) "
        "VALUES (?,?,?,?,?,?)",
        [_hash(sid), username, now, now, now + seconds, address],
    )
    return sid


def lookup(db: sqlite_utils.Database, sid: str) -> Who | None:
    """The live session's account, or None (unknown, ended, expired, or its account
    disabled or gone)."""
    if not sid:
        return None
    digest = _hash(sid)
    row = db.execute(
        "SELECT s.username, u.role, u.must_change, s.seen, s.expires FROM web_sessions s "
        "JOIN users u USING(username) WHERE s.sid_sha256=? AND u.disabled=0",
        [digest],
    ).fetchone()
    now = time.time()
    if row is None or row[4] <= now:
        return None
    if now - row[3] >= TOUCH_SECONDS:
        db.execute("UPDATE web_sessions SET seen=? WHERE sid_sha256=?", [now, digest])
    return Who(str(row[0]), str(row[1]), bool(row[2]))


def end(db: sqlite_utils.Database, sid: str) -> None:
    db.execute("DELETE FROM web_sessions WHERE sid_sha256=?", [_hash(sid)])


def end_all(db: sqlite_utils.Database, username: str) -> int:
    """End every session of ``username``; how many there were."""
    cur = db.execute("DELETE FROM web_sessions WHERE username=?", [username])
    db.execute("DELETE FROM web_sessions WHERE expires <= ?", [time.time()])
    return cur.rowcount


def _keys(username: str, address: str) -> list[tuple[str, int]]:
    return [
        (f"user:{username}@{address}", PER_USER_ADDRESS),
        (f"addr:{address}", PER_ADDRESS),
        (f"user:{username}", PER_USER),
    ]


def locked(db: sqlite_utils.Database, username: str, address: str) -> float:
    """Seconds until a login for ``username`` from ``address`` may be tried (0: now)."""
    return max(key_locked(db, k) for k, _ in _keys(username, address))


def key_locked(db: sqlite_utils.Database, key: str) -> float:
    """Seconds until ``key`` (a login's, or any other guess's) may try again (0: now)."""
    row = db.execute("SELECT locked_until FROM login_failures WHERE key=?", [key]).fetchone()
    return max((row[0] - time.time()) if row else 0.0, 0.0)


def key_failed(db: sqlite_utils.Database, key: str, limit: int) -> bool:
    """Count a wrong guess under ``key``: ``limit`` of them within WINDOW_SECONDS lock
    it for LOCK_SECONDS. True when this one locked it."""
    now = time.time()
    row = db.execute("SELECT failures, first FROM login_failures WHERE key=?", [key]).fetchone()
    failures, first = (row[0] + 1, row[1]) if row and now - row[1] < WINDOW_SECONDS else (1, now)
    until = now + LOCK_SECONDS if failures >= limit else 0
    db.execute(
        "INSERT INTO login_failures(key, failures, first, locked_until) VALUES (?,?,?,?) "
        "ON CONFLICT(key) DO UPDATE SET failures=excluded.failures, first=excluded.first, "
        "locked_until=excluded.locked_until",
        [key, 0 if until else failures, now if until else first, until],
    )
    return bool(until)


def key_cleared(db: sqlite_utils.Database, key: str) -> None:
    db.execute("DELETE FROM login_failures WHERE key=?", [key])


def failed(db: sqlite_utils.Database, username: str, address: str) -> bool:
    """Count a failed login; True when it locked a key."""
    return any([key_failed(db, key, limit) for key, limit in _keys(username, address)])


def succeeded(db: sqlite_utils.Database, username: str, address: str) -> None:
    key_cleared(db, f"user:{username}@{address}")


@dataclass(frozen=True)
class Login:
    """What a login attempt came to. ``named`` is the account's name when it exists,
    else ``?``: what the log and the audit may say (a password typed into the name
    field is never written down)."""

    sid: str  # the new session's id; empty when refused
    named: str
    wait: float = 0.0  # refused unchecked: locked for this many more seconds
    locked_now: bool = False  # this failure locked the account or the address


def log_in(
    db: sqlite_utils.Database,
    username: str,
    address: str,
    check: Callable[[], bool],
    seconds: float,
) -> Login:
    """Throttle, check the password (``check``), count the failure or start a session."""
    known = db.execute("SELECT 1 FROM users WHERE username=?", [username]).fetchone()
    named = username if known else "?"
    wait = locked(db, username, address)
    if wait > 0:
        log.warning("login for %s from %s refused: locked %d s more", named, address, wait)
        return Login("", named, wait=wait)
    if not check():
        locked_now = failed(db, username, address)
        log.warning(
            "failed login for %s from %s%s", named, address, " (now locked)" if locked_now else ""
        )
        return Login("", named, locked_now=locked_now)
    succeeded(db, username, address)
    return Login(start(db, username, seconds, address), named)


def change_password(
    db: sqlite_utils.Database,
    username: str,
    form: dict[str, str],
    check: Callable[[str], bool],
    store_new: Callable[[str], None],
    address: str,
    seconds: float,
) -> tuple[str, str]:
    """A person changing their own password from a form (``current``, ``new``,
    ``again``): ``check`` tells whether a password is theirs, ``store_new`` keeps the
    new one (ending every session of the account, or raising ValueError with why it
    cannot be used). Returns (what went wrong: ``wrong_current``, ``differ``,
    ``unusable`` with the reason, or ``""``; the new session's id when it worked)."""
    new = form.get("new", "")
    if not check(form.get("current", "")):
        return "wrong_current", ""
    if new != form.get("again", ""):
        return "differ", ""
    try:
        store_new(new)
    except ValueError as exc:
        return f"unusable: {exc}", ""
    return "", start(db, username, seconds, address)
