"""The operators' pages: the fleet table with its alerts, a page per box with its
transfers and charts, ``/metrics`` for Prometheus, and the admin's audit log."""

from __future__ import annotations

from itertools import chain
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request, session

from common.metrics import exposition
from common.passwords import csrf_token
from hub import access, fleet
from hub import metrics as hub_metrics
from hub.db import request_store

ops = Blueprint("ops", __name__, template_folder="pages")
admin = Blueprint("admin", __name__, template_folder="pages")

COLUMNS = [
    ("box_id", "Box"),
    ("clinic", "Clinic"),
    ("online", "Online"),
    ("seconds_since_seen", "Last seen"),
    ("backlog_studies", "Backlog studies"),
    ("backlog_bytes", "Backlog"),
    ("oldest_pending_age_seconds", "Oldest pending"),
    ("throughput_bytes_per_second", "Throughput (1 h)"),
    ("disk_free_bytes", "Disk free"),
    ("version", "Version"),
]
REFRESH_SECONDS = 10


def _fleet() -> dict[str, Any]:
    return fleet.fleet(request_store(), current_app.config["RADSETU"]["alerts"])


@ops.get("/fleet")
def fleet_page() -> Any:
    data = _fleet()
    key = request.args.get("sort", "box_id")
    if key not in dict(COLUMNS):
        key = "box_id"
    desc = request.args.get("dir") == "desc"
    data["boxes"].sort(key=lambda b: (b[key] is None, b[key]), reverse=desc)
    return render_template(
        "fleet.html",
        title="Fleet",
        csrf=csrf_token(session),
        data=data,
        columns=COLUMNS,
        sort=key,
        desc=desc,
        refresh=REFRESH_SECONDS,
    )


@ops.get("/fleet/<box_id>")
def box_page(box_id: str) -> Any:
    data = _fleet()
    box = next((b for b in data["boxes"] if b["box_id"] == box_id), None)
    if box is None:
        abort(404)
    days = min(max(float(request.args.get("days", 7) or 7), 0.1), 90)
    hist = fleet.history(request_store(), box_id, days)
    transfers = request_store().transfers(box_id, limit=50)
    charts = [
        fleet.svg_chart(
            [(s["at"], s["backlog_bytes"] / 1e6) for s in hist["samples"]], "Backlog", "MB"
        ),
        # a young box has an hour or two of traffic: per minute says more then
        fleet.svg_chart(
            [(t["hour_start"], t["bytes_per_second"] / 1e3) for t in hist["throughput_hourly"]],
            "Throughput per hour",
            "kB/s",
        )
        if len(hist["throughput_hourly"]) >= 3
        else fleet.svg_chart(
            [(t["minute_start"], t["bytes_per_second"] / 1e3) for t in hist["throughput_minutely"]],
            "Throughput per minute",
            "kB/s",
        ),
        fleet.svg_chart(
            [(s["at"], 1.0 if s["online"] else 0.0) for s in hist["samples"]],
            "Online (1) / offline (0)",
            "",
            step=True,
        ),
    ]
    return render_template(
        "box.html",
        title=f"Box {box_id}",
        csrf=csrf_token(session),
        box=box,
        transfers=transfers,
        charts=charts,
        online_fraction=hist["online_fraction"],
        days=days,
        refresh=REFRESH_SECONDS,
    )


@ops.get("/metrics")
def metrics() -> Any:
    """The fleet's figures and the hub's own, for Prometheus (hub/metrics.py)."""
    store = request_store()
    return exposition(
        current_app,
        lambda: chain(hub_metrics.fleet_families(_fleet()), hub_metrics.hub_families(store)),
    )


@admin.get("/admin/audit")
def audit_page() -> Any:
    rows = access.audit_rows(request_store(), action=request.args.get("action", ""))
    return render_template("audit.html", title="Audit log", csrf=csrf_token(session), rows=rows)
