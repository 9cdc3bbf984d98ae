"""Hub accounts: names, roles and scrypt password hashes (hashlib, no extra package).

Roles: ``radiologist`` reads and reports; ``operator`` watches the fleet; ``admin``
manages accounts and reads the audit log. ``hub/access.py`` checks the role on every
page and API call.
"""

from __future__ import annotations

import re

from common.clock import utcnow
from common.passwords import MIN_LENGTH, check_password, check_unknown, hash_password
from hub.store import FileHubStore

ROLES = ("radiologist", "operator", "admin")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


class UserError(ValueError):
    """A name, role or password that cannot be used; the message says why."""


def add(store: FileHubStore, username: str, role: str, password: str) -> None:
    if not _NAME.match(username):
        raise UserError("a user name is 2-64 lower-case letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_LENGTH:
        raise UserError(f"a password needs at least {MIN_LENGTH} characters")
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
        check_unknown(password)  # do not tell who exists
        return None
    return str(row[0]) if check_password(row[1], password) else None
