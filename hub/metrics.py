"""What the hub's ``/metrics`` says, read from the index at each scrape (so every web
process of a cluster gives the same figures): each box's state as the fleet dashboard
shows it (``radsetu_box_*``, from `hub.fleet`), and the hub's own work: what came in,
what waits (transfers, the worklist, report deliveries, notices) and what went out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from hub.store import FileHubStore

# (name after radsetu_box_, the fleet's field, help)
BOX_GAUGES = [
    ("online", "online", "1 when the box is online (from its status and its last will)"),
    ("last_seen_timestamp_seconds", "last_seen_ts", "when the hub last heard from the box"),
    ("backlog_studies", "backlog_studies", "studies on the box not yet delivered"),
    ("backlog_bytes", "backlog_bytes", "bytes on the box not yet delivered"),
    (
        "oldest_pending_age_seconds",
        "oldest_pending_age_seconds",
        "age of the oldest study not yet delivered",
    ),
    (
        "throughput_bytes_per_second",
        "throughput_bytes_per_second",
        "bytes per second that reached the hub, last hour",
    ),
    ("disk_free_bytes", "disk_free_bytes", "free disk on the box"),
    ("held_instances", "held_instances", "instances on the box that cannot be sent"),
]


def fleet_families(data: dict[str, Any]) -> Iterator[Metric]:
    """The fleet dashboard's figures (``hub.fleet.fleet``'s answer), a series per box."""
    for name, field, text in BOX_GAUGES:
        fam = GaugeMetricFamily(f"radsetu_box_{name}", text, labels=["box"])
        for b in data["boxes"]:
            fam.add_metric([b["box_id"]], float(b[field]))
        yield fam
    info = GaugeMetricFamily(
        "radsetu_box_info", "the box's version and clinic", labels=["box", "clinic", "version"]
    )
    for b in data["boxes"]:
        info.add_metric([b["box_id"], b["clinic"], b["version"]], 1.0)
    yield info
    kinds: dict[tuple[str, str], int] = {}
    for a in data["alerts"]:
        kinds[(a["box_id"], a["kind"])] = kinds.get((a["box_id"], a["kind"]), 0) + 1
    alerts = GaugeMetricFamily("radsetu_alerts", "alerts now open, by kind", labels=["box", "kind"])
    for (box, kind), n in sorted(kinds.items()):
        alerts.add_metric([box, kind], float(n))
    yield alerts


def _one(store: FileHubStore, sql: str) -> tuple[Any, ...]:
    return tuple(store.db.execute(sql).fetchone())


def hub_families(store: FileHubStore) -> Iterator[Metric]:
    """The hub's own work, counted in the index."""
    chunks, dupes, verified, moving = _one(
        store,
        "SELECT coalesce(sum(chunks_received), 0), coalesce(sum(duplicates), 0), "
        "coalesce(sum(CASE WHEN state='verified' THEN 1 ELSE 0 END), 0), "
        "coalesce(sum(CASE WHEN state='verified' THEN 0 ELSE 1 END), 0) FROM transfers",
    )
    instances, stored = _one(store, "SELECT count(*), coalesce(sum(size), 0) FROM instances")
    yield CounterMetricFamily(
        "radsetu_hub_chunks_received", "chunks taken from the boxes", value=chunks
    )
    yield CounterMetricFamily(
        "radsetu_hub_chunk_duplicates", "chunks that came a second time (dropped)", value=dupes
    )
    yield CounterMetricFamily(
        "radsetu_hub_studies_verified", "transfers complete and verified", value=verified
    )
    yield CounterMetricFamily(
        "radsetu_hub_instances_stored", "instances stored (byte-identical)", value=instances
    )
    yield CounterMetricFamily("radsetu_hub_stored_bytes", "bytes of instances stored", value=stored)
    yield GaugeMetricFamily(
        "radsetu_hub_transfers_in_progress", "transfers begun, not yet verified", value=moving
    )
    yield from _queues(store)


def _queues(store: FileHubStore) -> Iterator[Metric]:
    worklist = GaugeMetricFamily(
        "radsetu_hub_worklist_studies",
        "studies on the worklist: unread, being read (claimed), signed",
        labels=["state", "priority"],
    )
    for state, priority, n in store.db.execute(
        "SELECT CASE WHEN signed_at IS NOT NULL THEN 'signed' "
        "WHEN claimed_by IS NOT NULL THEN 'reading' ELSE 'unread' END AS s, priority, count(*) "
        "FROM hub_studies GROUP BY s, priority ORDER BY s, priority"
    ).fetchall():
        worklist.add_metric([state, priority], float(n))
    yield worklist
    deliveries = GaugeMetricFamily(
        "radsetu_hub_report_deliveries",
        "signed reports by delivery state (pending: not yet acknowledged by the box)",
        labels=["state"],
    )
    found = dict(
        store.db.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall()
    )
    for state in sorted({"pending", "acked", *found}):
        deliveries.add_metric([state], float(found.get(state, 0)))
    yield deliveries
    (attempts,) = _one(store, "SELECT coalesce(sum(attempts), 0) FROM deliveries")
    yield CounterMetricFamily(
        "radsetu_hub_report_sends", "reports handed to a broker (each try)", value=attempts
    )
    (unsent,) = _one(store, "SELECT count(*) FROM notices WHERE sent_at IS NULL")
    yield GaugeMetricFamily(
        "radsetu_hub_notices_pending", "word for the boxes not yet handed to a broker", value=unsent
    )
    yield from _critical(store)
    (rejected,) = _one(store, "SELECT coalesce(sum(rejected), 0) FROM boxes")
    yield CounterMetricFamily(
        "radsetu_hub_messages_rejected",
        "messages from boxes refused as protocol errors",
        value=rejected,
    )


def _critical(store: FileHubStore) -> Iterator[Metric]:
    """Critical results open and confirmed, and what became of their messages."""
    results = GaugeMetricFamily(
        "radsetu_hub_critical_results", "critical results by state (open: not yet confirmed)",
        labels=["state"],
    )  # fmt: skip
    found = dict(
        store.db.execute("SELECT state, count(*) FROM critical_results GROUP BY state").fetchall()
    )
    for state in sorted({"open", "confirmed", *found}):
        results.add_metric([state], float(found.get(state, 0)))
    yield results
    sent = GaugeMetricFamily(
        "radsetu_hub_notifications",
        "messages about critical results, by channel (sms, email) and outcome "
        "(pending, sent, failed after every try)",
        labels=["channel", "state"],
    )
    rows = store.db.execute(
        "SELECT channel, state, count(*) FROM notifications GROUP BY channel, state"
    ).fetchall()
    counts = {(c, st): n for c, st, n in rows}
    for channel in ("sms", "email"):
        for state in ("pending", "sent", "failed"):
            sent.add_metric([channel, state], float(counts.get((channel, state), 0)))
    yield sent
