"""Hub accounts: names, roles and scrypt password hashes (hashlib, no extra package).

Roles: ``radiologist`` reads and reports; ``operator`` watches the fleet; ``admin``
manages accounts and reads the audit log. ``hub/access.py`` checks the role on every
page and API call.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from common import sessions
from common.clock import utcnow
from common.passwords import MIN_LENGTH, check_password, check_unknown, hash_password
from hub.store import FileHubStore

ROLES = ("radiologist", "operator", "admin")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


class UserError(ValueError):
    """A name, role or password that cannot be used; the message says why."""


def add(
    store: FileHubStore, username: str, role: str, password: str, must_change: bool = False
) -> None:
    """Add the account, or change an existing one: its sessions end (a demoted
    radiologist's open pages stop working at once)."""
    if not _NAME.match(username):
        raise UserError("a user name is 2-64 lower-case letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    _check_password(password)
    store.db.execute(
        "INSERT INTO users(username, role, password_hash, created_at, must_change) "
        "VALUES (?,?,?,?,?) ON CONFLICT(username) DO UPDATE SET role=excluded.role, "
        "password_hash=excluded.password_hash, disabled=0, must_change=excluded.must_change",
        [username, role, hash_password(password), utcnow(), int(must_change)],
    )
    sessions.end_all(store.db, username)


def _check_password(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise UserError(f"a password needs at least {MIN_LENGTH} characters")
    if password != password.strip() or not password.isprintable():
        raise UserError("a password has no spaces at either end and no control characters")


def set_password(store: FileHubStore, username: str, password: str) -> None:
    """A new password chosen by the user; every session of the account ends."""
    _check_password(password)
    store.db.execute(
        "UPDATE users SET password_hash=?, must_change=0 WHERE username=?",
        [hash_password(password), username],
    )
    sessions.end_all(store.db, username)


def disable(store: FileHubStore, username: str) -> int:
    """The account can no longer log in, its sessions end and its API tokens stop
    working; how many sessions ended."""
    cur = store.db.execute("UPDATE users SET disabled=1 WHERE username=?", [username])
    if not cur.rowcount:
        raise UserError(f"no account {username!r} at this hub")
    return sessions.end_all(store.db, username)


def authenticate(store: FileHubStore, username: str, password: str) -> str | None:
    """The user's role when the password is right, else None (same time either way)."""
    row = store.db.execute(
        "SELECT role, password_hash FROM users WHERE username=? AND disabled=0", [username]
    ).fetchone()
    if row is None:
        check_unknown(password)  # do not tell who exists
        return None
    return str(row[0]) if check_password(row[1], password) else None


def session_key(store: FileHubStore, data_dir: Path) -> str:
    """The key that signs the pages' session cookies: made once per hub and kept in its
    index, so that every web process on every machine signs and checks cookies alike
    (no sticky sessions). A hub that kept it in its data folder (``session.key``)
    carries that one over: nobody is logged out by the change."""
    query = "SELECT value FROM hub_keys WHERE name='session'"
    row = store.db.execute(query).fetchone()
    if row:
        return str(row[0])
    old = Path(data_dir) / "session.key"
    value = old.read_text().strip() if old.is_file() else secrets.token_hex(32)
    store.db.execute(
        "INSERT INTO hub_keys(name, value) VALUES ('session', ?) ON CONFLICT(name) DO NOTHING",
        [value],
    )
    return str(store.db.execute(query).fetchone()[0])  # the first process's, if it raced
