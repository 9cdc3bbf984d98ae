"""The fleet as operators see it: one row per box, the alerts, each box's history, and
the same figures for Prometheus. One function (``fleet``) feeds the dashboard, the
JSON API and ``/metrics``, so the three can never disagree."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from hub import critical
from hub.store import FileHubStore

HOUR = 3600.0


def _ts(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _throughput(store: FileHubStore, box_id: str, now: float) -> float:
    """Bytes per second that reached the hub from the box over the last hour."""
    since = int((now - HOUR) // 60)
    (total,) = store.db.execute(
        "SELECT coalesce(sum(bytes), 0) FROM box_traffic WHERE box_id=? AND minute > ?",
        [box_id, since],
    ).fetchone()
    return float(total) / HOUR


def _growing(store: FileHubStore, box_id: str, now: float, window: float) -> bool:
    """The backlog grew over the whole window: at least three reports in it, each at
    least the one before, the last above the first."""
    rows = [
        r[0]
        for r in store.db.execute(
            "SELECT backlog_bytes FROM box_history WHERE box_id=? AND at >= ? AND online=1 "
            "AND backlog_bytes IS NOT NULL ORDER BY at",
            [box_id, now - window],
        ).fetchall()
    ]
    if len(rows) < 3:
        return False
    return all(b >= a for a, b in zip(rows, rows[1:], strict=False)) and rows[-1] > rows[0]


def fleet(store: FileHubStore, alerts_cfg: dict[str, Any], now: float | None = None) -> dict:
    now = time.time() if now is None else now
    boxes, alerts = [], []
    for row in store.db.query("SELECT * FROM boxes ORDER BY box_id"):
        st = json.loads(row["status"] or "{}")
        last_seen = _ts(row["last_seen"]) or 0.0
        oldest = _ts(st.get("oldest_pending"))
        box = {
            "box_id": row["box_id"],
            "clinic": str(st.get("clinic") or ""),
            "online": bool(row["online"]),
            "last_seen": row["last_seen"],
            "last_seen_ts": last_seen,
            "seconds_since_seen": max(0.0, now - last_seen),
            "backlog_studies": int(st.get("backlog_studies") or 0),
            "backlog_bytes": int(st.get("backlog_bytes") or 0),
            "oldest_pending_age_seconds": max(0.0, now - oldest) if oldest else 0.0,
            "throughput_bytes_per_second": round(_throughput(store, row["box_id"], now), 3),
            "disk_free_bytes": int(st.get("disk_free") or 0),
            "version": str(st.get("version") or ""),
            "rejected": int(row["rejected"] or 0),
            "held_studies": _count(st.get("held_studies")),
            "held_instances": _count(st.get("held_instances")),
            "held": _held(st.get("held")),
        }
        box["alerts"] = _alerts(store, box, alerts_cfg, now)
        alerts.extend(box["alerts"])
        boxes.append(box)
    for uid, first, other in store.db.execute(
        "SELECT study_uid, first_box, other_box FROM uid_conflicts ORDER BY at"
    ).fetchall():
        alerts.append({"box_id": other, "kind": "uid_conflict", "text": (
            f"{other} sent study {uid}, which {first} had sent first: kept apart as "
            f"{uid}~{other}; find out why (see docs/hub.md, study UID conflicts)")})  # fmt: skip
    return {"boxes": boxes, "alerts": alerts, "at": now}


def _count(value: Any) -> int:
    """A count from a box's status; anything but a whole number counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _held(value: Any) -> list[dict[str, str]]:
    """The box's list of what it cannot send, as text only (it is shown on pages)."""
    if not isinstance(value, list):
        return []
    keys = ("study_uid", "sop_instance_uid", "reason", "since")
    return [
        {k: str(item.get(k) or "")[:500] for k in keys}
        for item in value[:10]
        if isinstance(item, dict)
    ]


def _alerts(store: FileHubStore, box: dict, cfg: dict[str, Any], now: float) -> list[dict]:
    out = []
    b = box["box_id"]

    def alert(kind: str, text: str) -> None:
        out.append({"box_id": b, "kind": kind, "text": text})

    if not box["online"] and box["seconds_since_seen"] > cfg["offline_seconds"]:
        alert("offline", f"{b} offline for {_human(box['seconds_since_seen'])}")
    if box["online"] and _growing(store, b, now, cfg["backlog_growth_seconds"]):
        alert(
            "backlog_growing",
            f"{b}: backlog keeps growing ({box['backlog_bytes'] / 1e6:.1f} MB, "
            f"{box['backlog_studies']} studies)",
        )
    if box["held_instances"] or box["held_studies"]:
        first = box["held"][0] if box["held"] else {}
        what = (
            f"{box['held_instances']} instances in {box['held_studies']} studies"
            if box["held_instances"]
            else f"{box['held_studies']} studies"
        )
        alert(
            "held",
            f"{b}: {what} cannot be sent"
            + (
                f" (e.g. {first.get('sop_instance_uid') or first.get('study_uid')}: "
                f"{first.get('reason')})"
                if first
                else ""
            )
            + "; see docs/field-engineer.md, held instances",
        )
    if box["disk_free_bytes"] and box["disk_free_bytes"] < cfg["low_disk_bytes"]:
        alert("low_disk", f"{b}: only {box['disk_free_bytes'] / 1e9:.1f} GB free")
    for rid, study, opened in critical.unconfirmed(store, b):
        alert("critical_unconfirmed", f"{b}: critical result of study {study} (report {rid}) "
              f"not confirmed since {opened}: call the clinic")  # fmt: skip
    cutoff = now - cfg["stall_seconds"]
    for study, updated, state in store.db.execute(
        "SELECT study_uid, updated, state FROM transfers WHERE box_id=? AND state != 'verified'",
        [b],
    ).fetchall():
        t = _ts(updated)
        if box["online"] and t is not None and t < cutoff:
            why = (
                ": every chunk is in, and it waits for the preview its records complete "
                "(see docs/preview.md)"
                if state == "complete"
                else ""
            )
            alert(
                "stalled_transfer", f"{b}: transfer of study {study} stalled since {updated}{why}"
            )
    return out


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * HOUR:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / HOUR:.1f} h"


def history(store: FileHubStore, box_id: str, days: float, now: float | None = None) -> dict:
    """Backlog and online state over time, and throughput per hour, for the charts."""
    now = time.time() if now is None else now
    since = now - days * 86400
    samples = [
        {"at": at, "online": bool(on), "backlog_bytes": bb or 0}
        for at, on, bb in store.db.execute(
            "SELECT at, online, backlog_bytes FROM box_history WHERE box_id=? AND at>=? "
            "ORDER BY at",
            [box_id, since],
        ).fetchall()
    ]
    hourly: dict[int, int] = {}
    minutely = []
    for minute, nbytes in store.db.execute(
        "SELECT minute, bytes FROM box_traffic WHERE box_id=? AND minute>=? ORDER BY minute",
        [box_id, int(since // 60)],
    ).fetchall():
        hour = int(minute // 60)
        hourly[hour] = hourly.get(hour, 0) + nbytes
        minutely.append({"minute_start": minute * 60.0, "bytes_per_second": nbytes / 60.0})
    online_s = total_s = 0.0
    for a, b in zip(samples, samples[1:], strict=False):
        span = b["at"] - a["at"]
        total_s += span
        online_s += span if a["online"] else 0.0
    return {
        "samples": samples,
        "throughput_hourly": [
            {"hour_start": h * HOUR, "bytes_per_second": v / HOUR}
            for h, v in sorted(hourly.items())
        ],
        "throughput_minutely": minutely,
        "online_fraction": (online_s / total_s) if total_s else None,
    }


def svg_chart(points: list[tuple[float, float]], title: str, unit: str, step: bool = False) -> str:
    """A small line chart as inline SVG (no script, no library): x is time."""
    w, h, pad = 600, 160, 30
    esc = title.replace("&", "&amp;").replace("<", "&lt;")
    if len(points) < 2:
        return (
            f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{esc}" class="chart">'
            f'<text x="10" y="20">{esc}: not enough data yet</text></svg>'
        )
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs) or 1
    top = max(ys) or 1.0

    def sx(x: float) -> float:
        return pad + (x - x0) / ((x1 - x0) or 1) * (w - 2 * pad)

    def sy(y: float) -> float:
        return h - pad - y / top * (h - 2 * pad)

    coords = []
    for i, (x, y) in enumerate(points):
        if step and i:
            coords.append(f"{sx(x):.1f},{sy(points[i - 1][1]):.1f}")
        coords.append(f"{sx(x):.1f},{sy(y):.1f}")
    start = datetime.fromtimestamp(x0, UTC).strftime("%d %b %H:%M")
    end = datetime.fromtimestamp(x1, UTC).strftime("%d %b %H:%M")
    return (
        f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{esc}" class="chart">'
        f'<text x="{pad}" y="16">{esc} (max {top:.3g} {unit})</text>'
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>'
        f'<polyline fill="none" stroke="#1565c0" stroke-width="2" points="{" ".join(coords)}"/>'
        f'<text x="{pad}" y="{h - 8}" font-size="11">{start} UTC</text>'
        f'<text x="{w - pad}" y="{h - 8}" font-size="11" text-anchor="end">{end} UTC</text>'
        "</svg>"
    )
