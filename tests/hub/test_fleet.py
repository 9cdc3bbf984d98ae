"""The fleet's figures and alerts on a real hub store, with the clock moved by hand:
offline only after the threshold, a growing backlog, low disk, a stalled transfer,
and charts and /metrics drawn from the same rows."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from hub import fleet, metrics
from hub.store import FileHubStore

CFG = {"offline_seconds": 600, "backlog_growth_seconds": 1800, "low_disk_bytes": 5e9,
       "stall_seconds": 900}  # fmt: skip


def kinds(data) -> set:  # type: ignore[no-untyped-def,type-arg]
    return {(a["box_id"], a["kind"]) for a in data["alerts"]}


def exposed(data: dict) -> str:  # type: ignore[type-arg]
    """The fleet's figures as /metrics writes them (the client library's text format)."""
    registry = CollectorRegistry()

    class Fleet(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            yield from metrics.fleet_families(data)

    registry.register(Fleet())
    return generate_latest(registry).decode()


def test_alerts_and_metrics(tmp_path):
    store = FileHubStore(tmp_path / "hub")
    now = time.time()
    # a healthy box, then one whose disk runs low
    store.put_box_status("ok-box", {"disk_free": 50e9, "backlog_bytes": 0}, True)
    store.put_box_status("full-box", {"disk_free": 1e9, "backlog_bytes": 10}, True)
    assert kinds(fleet.fleet(store, CFG, now)) == {("full-box", "low_disk")}

    # a box that stops: offline at once, an alert only after the threshold
    store.put_box_status("gone-box", {"disk_free": 50e9, "backlog_bytes": 5}, False)
    data = fleet.fleet(store, CFG, now + 60)
    gone = next(b for b in data["boxes"] if b["box_id"] == "gone-box")
    assert not gone["online"] and gone["backlog_bytes"] == 5
    assert ("gone-box", "offline") not in kinds(data)
    assert ("gone-box", "offline") in kinds(fleet.fleet(store, CFG, now + 601))

    # a backlog that only grows over the window (three reports or more)
    for i, size in enumerate((100, 100, 250, 400)):
        store.put_box_status("slow-box", {"disk_free": 50e9, "backlog_bytes": size}, True)
        store.db.execute(  # the report just made (the latest) moved into the past
            "UPDATE box_history SET at=? WHERE box_id=? AND at=(SELECT max(at) FROM "
            "box_history WHERE box_id=?)",
            [now - 300 + i * 60, "slow-box", "slow-box"],
        )
    assert ("slow-box", "backlog_growing") in kinds(fleet.fleet(store, CFG, now))
    store.put_box_status("slow-box", {"disk_free": 50e9, "backlog_bytes": 50}, True)
    assert ("slow-box", "backlog_growing") not in kinds(fleet.fleet(store, CFG, now))

    # a transfer of an online box that has not moved for longer than stall_seconds
    store.db.execute(
        "INSERT INTO transfers(transfer_id, box_id, study_uid, priority, state, reception, "
        "chunk_count, chunks_held, payload_bytes, source, first_seen, updated) "
        "VALUES ('t1','ok-box','1.2.3','routine','receiving','{}',10,3,1000,'test',"
        "'2026-01-01T00:00:00Z','2026-01-01T00:00:00Z')"
    )
    assert ("ok-box", "stalled_transfer") in kinds(fleet.fleet(store, CFG, now))

    # throughput: bytes that reached the hub in the last hour
    store.count_traffic("ok-box", 3_600_000)
    data = fleet.fleet(store, CFG, time.time())
    ok = next(b for b in data["boxes"] if b["box_id"] == "ok-box")
    assert ok["throughput_bytes_per_second"] == 1000.0

    # /metrics: parses, and every figure is the dashboard's
    parsed = {
        (s.name, s.labels.get("box"), s.labels.get("kind")): s.value
        for fam in text_string_to_metric_families(exposed(data))
        for s in fam.samples
    }
    for b in data["boxes"]:
        assert parsed[("radsetu_box_backlog_bytes", b["box_id"], None)] == b["backlog_bytes"]
        assert parsed[("radsetu_box_online", b["box_id"], None)] == float(b["online"])
        assert parsed[("radsetu_box_disk_free_bytes", b["box_id"], None)] == b["disk_free_bytes"]
    for a in data["alerts"]:
        assert parsed[("radsetu_alerts", a["box_id"], a["kind"])] >= 1

    # the charts' history, and the charts themselves (inline SVG, no script)
    hist = fleet.history(store, "slow-box", 1)
    assert [s["backlog_bytes"] for s in hist["samples"]][-2:] == [400, 50]
    svg = fleet.svg_chart([(s["at"], s["backlog_bytes"]) for s in hist["samples"]], "B<a>", "B")
    assert svg.startswith("<svg") and "<polyline" in svg and "B&lt;a>" in svg
    assert "<script" not in svg
    store.close()


def test_a_status_and_its_history_are_kept_together(tmp_path, hub_index):
    """When the history row cannot be written, the status is not kept either (one
    transaction), and the next status goes through whole."""
    import sqlite3

    import pytest

    store = FileHubStore(tmp_path / "hub")
    store.put_box_status("box-1", {"backlog_studies": 1}, True)
    if hub_index == "postgres":  # the failure, as each engine lets a trigger make it
        import psycopg

        store.db.execute(
            "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS "
            "$f$ BEGIN RAISE EXCEPTION 'disk full'; END $f$"
        )
        store.db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON box_history FOR EACH ROW "
            "WHEN (NEW.backlog_studies = 2) EXECUTE FUNCTION disk_full()"
        )
        refused: type[Exception] = psycopg.errors.RaiseException
    else:
        store.db.execute(
            "CREATE TEMP TRIGGER refuse BEFORE INSERT ON box_history WHEN "
            "NEW.backlog_studies = 2 BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        refused = sqlite3.IntegrityError
    with pytest.raises(refused):
        store.put_box_status("box-1", {"backlog_studies": 2}, True)
    status = store.db.execute("SELECT status FROM boxes WHERE box_id='box-1'").fetchone()[0]
    assert '"backlog_studies": 1' in status
    history = [r[0] for r in store.db.execute("SELECT backlog_studies FROM box_history")]
    assert history == [1]
    store.put_box_status("box-1", {"backlog_studies": 3}, True)
    assert [r[0] for r in store.db.execute("SELECT backlog_studies FROM box_history")] == [1, 3]
    store.close()
