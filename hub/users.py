"""Hub accounts: names, roles and scrypt password hashes (hashlib, no extra package).

Roles: ``radiologist`` reads and reports; ``operator`` watches the fleet; ``admin``
manages accounts. Issue 6 checks roles on every page and API call; the reading
room's pages already need a radiologist's (or admin's) login.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from edge.store import utcnow
from hub.store import FileHubStore

ROLES = ("radiologist", "operator", "admin")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
N, R, P = 2**14, 8, 1


class UserError(ValueError):
    """A name, role or password that cannot be used; the message says why."""


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


def add(store: FileHubStore, username: str, role: str, password: str) -> None:
    if not _NAME.match(username):
        raise UserError("a user name is 2-64 lower-case letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < 10:
        raise UserError("a password needs at least 10 characters")
    store.db.execute(
        "INSERT INTO users(username, role, password_hash, created_at) VALUES (?,?,?,?) "
        "ON CONFLICT(username) DO UPDATE SET role=excluded.role, "
        "password_hash=excluded.password_hash",
        [username, role, hash_password(password), utcnow()],
    )


def authenticate(store: FileHubStore, username: str, password: str) -> str | None:
    """The user's role when the password is right, else None (same time either way)."""
    row = store.db.execute(
        "SELECT role, password_hash FROM users WHERE username=?", [username]
    ).fetchone()
    if row is None:
        check_password(hash_password("timing"), password)  # do not tell who exists
        return None
    return str(row[0]) if check_password(row[1], password) else None
