"""Where each study is, and the box's health, in the clinic's words: received ->
waiting -> sending (with progress) -> at the hub -> being read -> reported ->
printed; what cannot be sent, and why."""

from __future__ import annotations

import math
import time
from typing import Any

from flask import current_app

from edge import catalog
from edge.pages import _

STATE_ORDER = ["received", "waiting", "sending", "at the hub", "being read", "reported", "printed"]


def sending_progress(db: Any) -> dict[str, dict[str, Any]]:
    """Per study being sent: bytes left and an estimate from the rate so far."""
    out: dict[str, dict[str, Any]] = {}
    now = time.time()
    for t in catalog.transfers(db, limit=100):
        if t["state"] in ("verified",) or not t["chunk_count"]:
            continue
        total = t["stream_bytes"] or 0
        done = min(total, t["chunks_acked"] * (t["chunk_size"] or 0))
        left = max(0, total - done)
        eta = None
        started = catalog.iso_ts(t["first_sent_at"])
        if started and done and now > started:
            eta = left / (done / (now - started))
        cur = out.setdefault(t["study_uid"], {"total": 0, "done": 0, "eta": 0.0})
        cur["total"] += total
        cur["done"] += done
        cur["eta"] = max(cur["eta"], eta or 0.0) if eta is not None else cur["eta"]
    return out


def where(study: dict[str, Any], sending: dict[str, Any], reported: dict[str, Any]) -> str:
    uid = study["study_uid"]
    rep = reported.get(uid)
    if rep is not None:
        return "printed" if rep["printed"] else "reported"
    if study.get("hub_state") == "being read":
        return "being read"
    if study["state"] == "delivered":
        return "at the hub"
    if study["state"] == "sending" or uid in sending:
        return "sending"
    if study["state"] == "ready":
        return "waiting"
    return "received"


def today(db: Any) -> list[dict[str, Any]]:
    """The studies of the last 24 hours, each with where it is."""
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    return studies_view(db, catalog.list_studies(db, since=since))


def studies_view(db: Any, studies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``studies`` (catalog rows) with where each one is, its step and its progress."""
    sending = sending_progress(db)
    reported: dict[str, dict[str, Any]] = {}
    for uid, printed in db.execute(
        "SELECT study_uid, max(printed_at IS NOT NULL) FROM reports GROUP BY study_uid"
    ).fetchall():
        reported[uid] = {"printed": bool(printed)}
    held = held_by_study(db)
    out = []
    for s in studies:
        s["problem"] = held.get(s["study_uid"])
        s["where"] = where(s, sending, reported)
        s["where_label"] = _(s["where"])
        s["step"] = STATE_ORDER.index(s["where"])
        prog = sending.get(s["study_uid"])
        if s["where"] == "sending" and prog:
            s["progress"] = {
                "percent": round(100 * prog["done"] / prog["total"]) if prog["total"] else 0,
                "left_mb": round((prog["total"] - prog["done"]) / 1e6, 1),
                "eta_minutes": max(1, math.ceil(prog["eta"] / 60)) if prog["eta"] else None,
            }
        out.append(s)
    return out


def held_by_study(db: Any) -> dict[str, str]:
    """A sentence per study that has something the box cannot send, and why."""
    out: dict[str, str] = {}
    for uid, n, reason in db.execute(
        "SELECT study_uid, sum(instance_id != 0), min(reason) FROM held GROUP BY study_uid"
    ).fetchall():
        out[uid] = (
            _(
                "%(n)s images cannot be sent (%(reason)s). Call your field engineer.",
                n=n,
                reason=reason,
            )
            if n
            else _("This study cannot be packed (%(reason)s). It is tried again.", reason=reason)
        )
    return out


def health(db: Any) -> list[tuple[str, str]]:
    """The box's state in words for the reception desk: (css class, sentence)."""
    agent = current_app.config.get("RADSETU_AGENT")
    store = current_app.config["RADSETU_STORE"]
    free_gb = store.free_bytes() / 1e9
    if agent is None:
        lines = [("warn", _("Sync is off on this box: studies stay here."))]
    else:
        lines = _sync_health(agent.status(db))
    low = store.free_bytes() < max(store.reserve_bytes * 2, 5e9)
    lines.append(
        (
            "bad" if low else "ok",
            _("Disk space is low: %(gb)s GB free. Call your field engineer.", gb=f"{free_gb:.1f}")
            if low
            else _("Disk space: %(gb)s GB free.", gb=f"{free_gb:.1f}"),
        )
    )
    return lines


def local_time(iso: str | None) -> str | None:
    """The box's own clock, as the clinic reads it (HH:MM, day month)."""
    ts = catalog.iso_ts(iso)
    return time.strftime("%H:%M, %d %b", time.localtime(ts)) if ts else None


def _sync_health(st: dict[str, Any]) -> list[tuple[str, str]]:
    """The link, the backlog, what cannot be sent and the last sync, from the agent's
    status."""
    lines: list[tuple[str, str]] = []
    if st["link"] == "up":
        lines.append(("ok", _("Link to the hub: working.")))
    else:
        lines.append(
            (
                "bad",
                _(
                    "Link to the hub: down. Studies wait safely on this box and go "
                    "when it comes back."
                ),
            )
        )
    lines.append(
        (
            "ok" if not st["backlog_studies"] else "warn",
            _(
                "Waiting to send: %(n)s studies (%(mb)s MB).",
                n=st["backlog_studies"],
                mb=f"{st['backlog_bytes'] / 1e6:.1f}",
            ),
        )
    )
    if st["held_studies"]:
        lines.append(
            (
                "bad",
                _(
                    "%(n)s studies have images that cannot be sent. Call your field engineer.",
                    n=st["held_studies"],
                ),
            )
        )
    last = local_time(st.get("last_sync"))
    lines.append(
        (
            "ok",
            _("Last successful sync: %(when)s.", when=last)
            if last
            else _("No successful sync yet."),
        )
    )
    return lines
