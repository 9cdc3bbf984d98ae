"""What the box's own ``/metrics`` says, read at each scrape: the sync agent's status
(the figures the clinic's page and ``/api/sync`` show, and what the hub is told), the
studies and instances in the store, and the reports received and printed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, current_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from common.metrics import exposition
from edge.catalog import iso_ts
from edge.db import get_db

metrics = Blueprint("metrics", __name__)

# (name after radsetu_, the status field, help)
STATUS_GAUGES = [
    ("backlog_studies", "backlog_studies", "studies on the box not yet delivered to the hub"),
    ("backlog_bytes", "backlog_bytes", "bytes of instances not yet delivered to the hub"),
    ("held_studies", "held_studies", "studies with something that cannot be sent"),
    ("held_instances", "held_instances", "instances that cannot be sent (gone or damaged)"),
    ("disk_free_bytes", "disk_free", "free space on the data folder's disk"),
    ("disk_reserve_bytes", "reserve_bytes", "space kept free: below it, new studies are refused"),
]
STATUS_COUNTERS = [
    ("chunks_sent", "chunks_sent", "chunks published to the broker since the box started"),
    ("chunks_resent", "chunks_resent", "chunks published again (no acknowledgement in time)"),
    ("sent_bytes", "bytes_sent", "bytes of chunks published since the box started"),
]


@metrics.get("/metrics")
def scrape() -> Any:
    """For Prometheus: open to the box itself while ``web.trust_loopback``, as ``/api``
    is; from the LAN after a login (edge/clinic.py)."""
    agent = current_app.config.get("RADSETU_AGENT")
    db = get_db()
    status = agent.status(db) if agent is not None else None
    return exposition(current_app, lambda: box_families(status, db, time.time()))


def box_families(status: dict[str, Any] | None, db: Any, now: float) -> Iterator[Metric]:
    """``status``: the sync agent's (None when sync is off on this box)."""
    if status is not None:
        yield GaugeMetricFamily(
            "radsetu_link_up", "1 while the box is connected to its broker",
            value=1.0 if status["link"] == "up" else 0.0,
        )  # fmt: skip
        for name, field, text in STATUS_GAUGES:
            yield GaugeMetricFamily(f"radsetu_{name}", text, value=float(status[field] or 0))
        for name, field, text in STATUS_COUNTERS:
            yield CounterMetricFamily(f"radsetu_{name}", text, value=float(status[field] or 0))
        oldest = iso_ts(status.get("oldest_pending"))
        yield GaugeMetricFamily(
            "radsetu_oldest_pending_age_seconds",
            "age of the oldest study not yet delivered (0: none)",
            value=max(0.0, now - oldest) if oldest else 0.0,
        )
        last = iso_ts(status.get("last_sync"))
        yield GaugeMetricFamily(
            "radsetu_last_sync_timestamp_seconds",
            "when the hub last acknowledged a chunk (0: not since the box started)",
            value=last or 0.0,
        )
    yield from _store_families(db)


def _store_families(db: Any) -> Iterator[Metric]:
    studies = GaugeMetricFamily(
        "radsetu_studies", "studies on the box, by state and priority", labels=["state", "priority"]
    )
    for state, priority, n in db.execute(
        "SELECT state, priority, count(*) FROM studies GROUP BY state, priority "
        "ORDER BY state, priority"
    ).fetchall():
        studies.add_metric([state, priority], float(n))
    yield studies
    count, size = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM instances").fetchone()
    yield GaugeMetricFamily("radsetu_instances", "instances kept on the box", value=float(count))
    yield GaugeMetricFamily("radsetu_instance_bytes", "bytes of instances kept", value=float(size))
    got, printed, failed, critical = db.execute(
        "SELECT count(*), coalesce(sum(printed_at IS NOT NULL), 0), "
        "coalesce(sum(print_error IS NOT NULL AND printed_at IS NULL), 0), "
        "coalesce(sum(critical), 0) FROM reports"
    ).fetchone()
    yield GaugeMetricFamily("radsetu_reports", "reports received from the hub", value=float(got))
    yield GaugeMetricFamily(
        "radsetu_reports_critical", "reports received flagged critical", value=float(critical)
    )
    yield GaugeMetricFamily("radsetu_reports_printed", "reports printed", value=float(printed))
    yield GaugeMetricFamily(
        "radsetu_reports_print_failed",
        "reports not printed whose last try failed (the page says why)",
        value=float(failed),
    )
