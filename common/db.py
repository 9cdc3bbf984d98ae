"""SQLite as both sides use it: one way to open an index, and the append-only audit
table."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Generator
from pathlib import Path

import sqlite_utils


class Database(sqlite_utils.Database):
    """sqlite-utils' Database whose transactions take the write lock when they begin
    (``BEGIN IMMEDIATE``). With a deferred BEGIN, a transaction that reads and then
    writes fails at once with "database is locked" when another connection wrote in
    between (WAL's stale snapshot; the busy timeout does not apply), so a box with
    several connections (receiver, sync agent, printer, web) would drop a write."""

    @contextlib.contextmanager
    def atomic(self) -> Generator[sqlite_utils.Database, None, None]:
        if self.conn.in_transaction:  # nested: sqlite-utils' savepoints
            with super().atomic() as db:
                yield db
            return
        self.conn.execute("BEGIN IMMEDIATE")  # waits up to the connection's timeout
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise


def open_db(path: Path) -> sqlite_utils.Database:
    """An index connection: WAL, full sync on commit, waits for other writers."""
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    db = Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


def create_audit_table(db: sqlite_utils.Database, *extra_columns: str) -> None:
    """The audit log (box and hub alike): who did what to which study, when, from
    where. Triggers refuse every UPDATE and DELETE: rows are only ever added."""
    extra = "".join(f"{c}, " for c in extra_columns)
    db.execute(f"""
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, username TEXT NOT NULL,
            {extra}action TEXT NOT NULL, study_uid TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT '', address TEXT NOT NULL DEFAULT ''
        )""")
    for verb in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit "
            "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
        )
