"""Jobs that run once across the hub's processes, on any number of machines.

A lease is a row in the index (``leases``): the job, the process that holds it and
until when. A process renews its lease each round it runs the job; another process
takes it only once it has run out. One statement takes or renews it, on SQLite and
PostgreSQL alike (an upsert whose update applies only when the row is ours or
expired), so two processes never both hold a job. A process killed with -9 renews
nothing: its job moves to another process within ``seconds``.

A lease says who should do the work; it is not what keeps the work from being done
twice. A paused process may wake after its lease ran out: each job's own claims (e.g.
hub.reports.due marking a delivery sent in the statement that picks it) keep that
harmless.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

#: how long a lease lasts without renewal: a dead holder's job waits at most this long
LEASE_SECONDS = 15.0


def holder_id() -> str:
    """This process, as the leases table names it: host, pid and a random part (a pid
    is reused after a restart; a lease must not pass to the new process silently)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def take(
    store: Any, job: str, holder: str, seconds: float = LEASE_SECONDS, now: float | None = None
) -> bool:
    """Take or renew ``job``'s lease for ``holder``; whether ``holder`` now holds it."""
    now = time.time() if now is None else now
    cur = store.db.execute(
        "INSERT INTO leases(job, holder, held_until, held_since) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(job) DO UPDATE SET "
        "held_since = CASE WHEN leases.holder = excluded.holder THEN leases.held_since "
        "ELSE excluded.held_since END, "
        "holder = excluded.holder, held_until = excluded.held_until "
        "WHERE leases.holder = excluded.holder OR leases.held_until < ?",
        [job, holder, now + seconds, now, now],
    )
    return bool(cur.rowcount == 1)


def release(store: Any, job: str, holder: str) -> None:
    """Give ``job`` up at once (a clean shutdown): another process takes it next round."""
    store.db.execute("DELETE FROM leases WHERE job=? AND holder=?", [job, holder])


def holders(store: Any, now: float | None = None) -> list[dict[str, Any]]:
    """Every job's lease: its holder, since and until when, and whether it is live."""
    now = time.time() if now is None else now
    rows = store.db.query("SELECT job, holder, held_since, held_until FROM leases ORDER BY job")
    return [{**r, "live": r["held_until"] >= now} for r in rows]
