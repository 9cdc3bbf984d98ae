"""The clinic's accounts on the box, and its append-only audit log.

Roles: ``staff`` (reception, technicians: studies, uploads, STAT, reports, printing)
and ``admin`` (the same, and the audit log). Each account has its page language.
"""

from __future__ import annotations

import re
from typing import Any

import sqlite_utils

from common import sessions
from common.clock import utcnow
from common.passwords import MIN_LENGTH, check_password, check_unknown, hash_password

ROLES = ("staff", "admin")
LANGUAGES = ("en", "hi", "kn")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


class AccountError(ValueError):
    """A name, role, language or password that cannot be used; the message says why."""


def add_user(
    db: sqlite_utils.Database,
    username: str,
    role: str,
    password: str,
    language: str = "en",
    must_change: bool = False,
) -> None:
    """Add the account, or change an existing one (its sessions end: a demoted or
    re-passworded account logs in again). ``must_change``: the password was set by
    provisioning and is changed at the first login."""
    if not _NAME.match(username):
        raise AccountError("a user name is 2-64 lower-case letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if language not in LANGUAGES:
        raise AccountError(f"language must be one of {', '.join(LANGUAGES)}")
    _check_password(password)
    db.execute(
        "INSERT INTO users(username, role, language, password_hash, created_at, must_change) "
        "VALUES (?,?,?,?,?,?) ON CONFLICT(username) DO UPDATE SET role=excluded.role, "
        "language=excluded.language, password_hash=excluded.password_hash, disabled=0, "
        "must_change=excluded.must_change",
        [username, role, language, hash_password(password), utcnow(), int(must_change)],
    )
    sessions.end_all(db, username)


def _check_password(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise AccountError(f"a password needs at least {MIN_LENGTH} characters")
    if password != password.strip() or not password.isprintable():
        raise AccountError("a password has no spaces at either end and no control characters")


def set_password(db: sqlite_utils.Database, username: str, password: str) -> None:
    """A new password chosen by the user; every session of the account ends."""
    _check_password(password)
    db.execute(
        "UPDATE users SET password_hash=?, must_change=0 WHERE username=?",
        [hash_password(password), username],
    )
    sessions.end_all(db, username)


def disable_user(db: sqlite_utils.Database, username: str) -> int:
    """The account can no longer log in and its sessions end; how many ended."""
    cur = db.execute("UPDATE users SET disabled=1 WHERE username=?", [username])
    if not cur.rowcount:
        raise AccountError(f"no account {username!r} on this box")
    return sessions.end_all(db, username)


def authenticate(db: sqlite_utils.Database, username: str, password: str) -> dict | None:
    """{"role", "language"} when the password is right, else None (same time either way)."""
    row = db.execute(
        "SELECT role, language, password_hash FROM users WHERE username=? AND disabled=0",
        [username],
    ).fetchone()
    if row is None:
        check_unknown(password)
        return None
    if not check_password(row[2], password):
        return None
    return {"role": row[0], "language": row[1]}


def set_language(db: sqlite_utils.Database, username: str, language: str) -> None:
    if language not in LANGUAGES:
        raise AccountError(f"language must be one of {', '.join(LANGUAGES)}")
    db.execute("UPDATE users SET language=? WHERE username=?", [language, username])


def audit(
    db: sqlite_utils.Database,
    username: str,
    action: str,
    study_uid: str = "",
    detail: str = "",
    address: str = "",
) -> None:
    db.execute(
        "INSERT INTO audit(at, username, action, study_uid, detail, address) VALUES (?,?,?,?,?,?)",
        [utcnow(), username or "system", action, study_uid, detail[:500], address],
    )


def audit_rows(db: sqlite_utils.Database, limit: int = 500, action: str = "") -> list[dict]:
    where, args = ("WHERE action=?", [action]) if action else ("", [])
    rows: list[dict[str, Any]] = [
        dict(r)
        for r in db.query(f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?", [*args, limit])
    ]
    return rows
