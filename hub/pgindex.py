"""The hub's index in PostgreSQL (``[index] url = "postgresql://..."``), for hubs whose
processes run on several machines; SQLite stays the default.

The hub speaks to its index through the few calls it makes of sqlite-utils' Database
(``execute``, ``query``, ``atomic``, ``conn.close``); ``PgDatabase`` answers the same
calls over psycopg 3, and ``translate`` turns the hub's SQL (SQLite's dialect, written
to be portable) into PostgreSQL's: ``?`` placeholders, the column types of the
migrations, the audit log's append-only triggers. The same migrations run on both
engines, recorded in ``radsetu_migrations``.

Transactions: a block under ``atomic()`` takes one transaction-level advisory lock
first, so such blocks run one at a time across every process and machine, as SQLite's
``BEGIN IMMEDIATE`` makes them run one at a time on one machine; single statements
commit on their own, as in SQLite. Nothing that SQLite made safe becomes a race.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from common.clock import utcnow

#: the advisory lock every atomic block takes (any fixed number; "RADSETU" in ASCII)
ATOMIC_LOCK = 0x52414453455455

_TRIGGER = re.compile(
    r"CREATE TRIGGER (\w+) BEFORE (UPDATE|DELETE) ON (\w+) "
    r"BEGIN SELECT RAISE\(ABORT, '([^']*)'\); END",
    re.S,
)
_REFUSE = """
CREATE OR REPLACE FUNCTION radsetu_refuse() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0];
END
$fn$"""


def _ddl(sql: str) -> list[str]:
    """A migration's statement in PostgreSQL's words (one or more statements)."""
    m = _TRIGGER.search(sql)
    if m:
        name, verb, table, message = m.groups()
        return [
            _REFUSE,
            f"CREATE TRIGGER {name} BEFORE {verb} ON {table} FOR EACH ROW "
            f"EXECUTE FUNCTION radsetu_refuse('{message}')",
        ]
    sql = re.sub(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b", "BIGSERIAL PRIMARY KEY", sql)
    sql = re.sub(r"\bINTEGER\b", "BIGINT", sql)
    sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql)
    return [sql]


_JSON_EXTRACT = re.compile(r"json_extract\((\w+), '\$\.([\w.]+)'\)")


def translate(sql: str, with_params: bool) -> str:
    """SQLite's SQL to psycopg's: ``json_extract(col, '$.a.b')`` (a number) becomes
    ``(col::jsonb #>> '{a,b}')::bigint``; ``?`` outside string literals becomes ``%s``
    and, when there are parameters, a literal ``%`` is doubled."""
    sql = _JSON_EXTRACT.sub(
        lambda m: f"(({m[1]})::jsonb #>> '{{{m[2].replace('.', ',')}}}')::bigint", sql
    )
    out = []
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if with_params and ch == "%":
            out.append("%%")
        elif ch == "?" and not quoted:
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


def _params(params: Sequence[Any] | dict[str, Any] | None) -> Any:
    """SQLite stores booleans as 0/1 in INTEGER columns; so does the index here."""
    if params is None:
        return None
    if isinstance(params, dict):
        return {k: int(v) if isinstance(v, bool) else v for k, v in params.items()}
    return [int(v) if isinstance(v, bool) else v for v in params]


def _named(sql: str, params: Any) -> str:
    """``:name`` placeholders (used with a dict) to psycopg's ``%(name)s``."""
    if isinstance(params, dict):
        return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)
    return sql


_POOLS: dict[tuple[int, str], Any] = {}
_POOLS_LOCK = threading.Lock()


def _pool(url: str, size: int) -> Any:
    """This process's pool of connections to ``url`` (made on first use; keyed by pid,
    so a pool is never shared across gunicorn's fork)."""
    key = (os.getpid(), url)
    with _POOLS_LOCK:
        if key not in _POOLS:
            from psycopg_pool import ConnectionPool

            _POOLS[key] = ConnectionPool(
                url,
                min_size=1,
                max_size=size,
                kwargs={"autocommit": True},
                name="radsetu-index",
                open=True,
            )
        return _POOLS[key]


def close_pools() -> None:
    """Close this process's pools (their connections and threads)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.close()


class PgDatabase:
    """A PostgreSQL connection with the calls the hub makes of its index. ``pool_size``:
    borrow the connection from this process's pool of that size and give it back on
    ``close`` (the web's per-request stores), instead of a connection of its own (the
    ingest's long-lived one)."""

    def __init__(self, url: str, pool_size: int = 0):
        import psycopg  # only a hub with a PostgreSQL index needs it

        self._pool = _pool(url, pool_size) if pool_size else None
        self.conn = self._pool.getconn() if self._pool else psycopg.connect(url, autocommit=True)
        self._lock = threading.RLock()  # one connection, shared by a process's threads
        self._depth = 0

    def close(self) -> None:
        if self._pool is None:
            self.conn.close()
        else:
            self._pool.putconn(self.conn)

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        p = _params(params)
        with self._lock:
            cur = self.conn.cursor()
            cur.execute(_named(translate(sql, p is not None), p), p)  # type: ignore[arg-type]
            return cur

    def query(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        from psycopg.rows import dict_row

        p = _params(params)
        with self._lock:
            with self.conn.cursor(row_factory=dict_row) as cur:
                cur.execute(_named(translate(sql, p is not None), p), p)  # type: ignore[arg-type]
                rows = cur.fetchall() if cur.description else []
        yield from rows

    @contextmanager
    def atomic(self, key: str = "") -> Generator[PgDatabase, None, None]:
        """A transaction under an advisory lock: the one every ``atomic()`` takes, or,
        with ``key``, one for that key only (a transfer's chunks, one at a time)."""
        with self._lock:
            if self._depth:  # nested: a savepoint, as sqlite-utils does
                with self.conn.transaction():
                    yield self
                return
            self._depth += 1
            try:
                with self.conn.transaction():
                    if key:
                        self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [key])
                    else:
                        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", [ATOMIC_LOCK])
                    yield self
            finally:
                self._depth -= 1

    def migrate(self, migrations: Any) -> None:
        """Apply ``migrations`` (a sqlite-utils Migrations set) that are not applied yet,
        each with its record in one transaction; one process at a time."""
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS radsetu_migrations (migration_set TEXT NOT NULL, "
            "name TEXT NOT NULL, applied_at TEXT NOT NULL, PRIMARY KEY (migration_set, name))"
        )
        ddl = _DdlView(self)
        with self.atomic():
            done = {
                r["name"]
                for r in self.query(
                    "SELECT name FROM radsetu_migrations WHERE migration_set=?", [migrations.name]
                )
            }
            for m in migrations._migrations:  # noqa: SLF001 - sqlite-utils keeps them there
                if m.name in done:
                    continue
                m.fn(ddl)
                self.execute(
                    "INSERT INTO radsetu_migrations VALUES (?,?,?)",
                    [migrations.name, m.name, utcnow()],
                )


class _DdlView:
    """What a migration function is given: ``execute`` with SQLite's DDL translated."""

    def __init__(self, db: PgDatabase):
        self.db = db

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        if params is None and re.match(r"\s*(CREATE|ALTER)\b", sql):
            cur = None
            for stmt in _ddl(sql):
                cur = self.db.execute(stmt)
            return cur
        return self.db.execute(sql, params)
