"""The clinic's accounts on the box, and its append-only audit log.

Roles: ``staff`` (reception, technicians: studies, uploads, STAT, reports, printing)
and ``admin`` (the same, and the audit log). Each account has its page language.
"""

from __future__ import annotations

import re
from typing import Any

import sqlite_utils

from common.clock import utcnow
from common.passwords import MIN_LENGTH, check_password, check_unknown, hash_password

ROLES = ("staff", "admin")
LANGUAGES = ("en", "hi", "kn")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


class AccountError(ValueError):
    """A name, role, language or password that cannot be used; the message says why."""


def add_user(
    db: sqlite_utils.Database, username: str, role: str, password: str, language: str = "en"
) -> None:
    if not _NAME.match(username):
        raise AccountError("a user name is 2-64 lower-case letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if language not in LANGUAGES:
        raise AccountError(f"language must be one of {', '.join(LANGUAGES)}")
    if len(password) < MIN_LENGTH:
        raise AccountError(f"a password needs at least {MIN_LENGTH} characters")
    db.execute(
        "INSERT INTO users(username, role, language, password_hash, created_at) "
        "VALUES (?,?,?,?,?) ON CONFLICT(username) DO UPDATE SET role=excluded.role, "
        "language=excluded.language, password_hash=excluded.password_hash",
        [username, role, language, hash_password(password), utcnow()],
    )


def authenticate(db: sqlite_utils.Database, username: str, password: str) -> dict | None:
    """{"role", "language"} when the password is right, else None (same time either way)."""
    row = db.execute(
        "SELECT role, language, password_hash FROM users WHERE username=?", [username]
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
