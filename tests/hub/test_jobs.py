"""The hub's periodic jobs run once across its processes (hub/leases.py, hub/jobs.py):
a lease has one holder, a killed holder's job passes on, and several processes sending
at once send each report once. On SQLite and, in make test's second pass, on
PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from devkit.corpus import data_file
from hub import config as hub_config
from hub import leases, reports
from hub.ingest import take_chunk, take_manifest
from hub.jobs import Jobs
from hub.store import FileHubStore
from wire.codec import pack_bytes
from wire.manifest import Priority


def test_a_lease_has_one_holder_until_it_runs_out(tmp_path):
    store = FileHubStore(tmp_path / "hub")
    t = 1000.0
    assert leases.take(store, "job", "a", seconds=10, now=t)
    assert not leases.take(store, "job", "b", seconds=10, now=t + 1)
    assert leases.take(store, "job", "a", seconds=10, now=t + 9)  # renewed to t+19
    assert not leases.take(store, "job", "b", seconds=10, now=t + 18)
    assert leases.take(store, "job", "b", seconds=10, now=t + 20)  # ran out: b's now
    assert not leases.take(store, "job", "a", seconds=10, now=t + 21)
    assert leases.take(store, "other", "a", seconds=10, now=t + 21)  # jobs are apart
    (row,) = [r for r in leases.holders(store, now=t + 21) if r["job"] == "job"]
    assert row["holder"] == "b" and row["held_since"] == t + 20 and row["live"]
    leases.release(store, "job", "a")  # not a's: nothing happens
    assert not leases.take(store, "job", "a", seconds=10, now=t + 22)
    leases.release(store, "job", "b")
    assert leases.take(store, "job", "a", seconds=10, now=t + 22)
    store.close()


HOLDER = """
import sys, time
from pathlib import Path
from hub import leases
from hub.store import FileHubStore
store = FileHubStore(Path(sys.argv[1]), prepare=False)
assert leases.take(store, "deliver:fleet", "doomed", seconds=2)
print("held", flush=True)
time.sleep(600)
"""


def test_a_killed_holders_job_passes_to_another_process(tmp_path):
    store = FileHubStore(tmp_path / "hub")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "hub")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        assert not leases.take(store, "deliver:fleet", "survivor")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not leases.take(store, "deliver:fleet", "survivor"):
            assert time.monotonic() < deadline, "the dead process's lease never ran out"
            time.sleep(0.2)
        # within the lease's length (2 s) and a round, not later
        assert time.monotonic() < deadline - 7
    finally:
        proc.kill()
        proc.wait()
    store.close()


def a_study_with_reports(root, versions: int) -> FileHubStore:
    """A study from box-1 at the hub with one report signed and ``versions - 1``
    addenda: ``versions`` deliveries pending."""
    store = FileHubStore(root)
    inst = [("1.2.3.1", data_file("693_UNCI.dcm").read_bytes())]
    meta = {"box_id": "box-1", "study_uid": "1.2.3", "priority": Priority.ROUTINE}
    m, chunks = pack_bytes(inst, chunk_size=1 << 20, transfer_id="t1", pixel_effort=0, **meta)
    take_manifest(store, m.to_json(), "test")
    for i, c in enumerate(chunks):
        take_chunk(store, "t1", i, c, "test")
    body = {"findings": "f", "impression": "i", "radiologist": "dr"}
    rid = reports.create_draft(store, "1.2.3", body)["report_id"]
    reports.sign(store, rid, "dr")
    for n in range(versions - 1):
        reports.add_addendum(store, rid, {"findings": f"addendum {n}", "radiologist": "dr"})
    return store


SENDER = """
import json, sys, time
from pathlib import Path
from hub import reports
from hub.store import FileHubStore
from wire.report import decode_report
store = FileHubStore(Path(sys.argv[1]), prepare=False)
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
sent = []
for _ in range(50):
    for box, payload in reports.due(store, time.time(), 3600):
        message, _pdf = decode_report(payload)
        sent.append([box, message["report_id"], message["version"]])
print(json.dumps(sent))
"""


def test_three_processes_sending_at_once_send_each_report_once(tmp_path):
    """Even without the lease (a paused holder whose lease ran out wakes beside the new
    one), each delivery is claimed by one sender: 3 processes, 12 deliveries, each sent
    exactly once."""
    store = a_study_with_reports(tmp_path / "hub", 12)
    start = time.time() + 2
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SENDER, str(tmp_path / "hub"), str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    sent = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        sent += [tuple(s) for s in json.loads(out)]
    assert sorted(v for _box, _rid, v in sent) == list(range(1, 13))
    attempts = [r[0] for r in store.db.execute("SELECT attempts FROM deliveries").fetchall()]
    assert attempts == [1] * 12
    store.close()


def test_one_jobs_runner_sends_and_prunes_while_another_waits(tmp_path):
    store = a_study_with_reports(tmp_path / "hub", 2)
    cfg = {"retention": {"box_history_days": 90}}
    now = time.time()
    for age_days in (200, 100, 89, 1):
        store.db.execute(
            "INSERT INTO box_history(box_id, at, online, backlog_studies, backlog_bytes, "
            "disk_free) VALUES ('box-1', ?, 1, 0, 0, 0)",
            [now - age_days * 86400],
        )
    published: dict[str, list[str]] = {"a": [], "b": []}
    a, b = (
        Jobs(store, cfg, lambda t, _b, n=n: published[n].append(t), lambda: True, None, True)
        for n in ("a", "b")
    )
    a.tick(now)
    b.tick(now)
    assert published == {"a": ["radsetu/v1/box-1/down/report"] * 2, "b": []}
    left = sorted(r[0] for r in store.db.execute("SELECT at FROM box_history").fetchall())
    assert [round((now - at) / 86400) for at in left] == [89, 1]
    # a's clean stop hands both jobs to b at its next tick
    a.release()
    store.db.execute("UPDATE deliveries SET last_sent_at=0")
    b.tick(now + 1)
    assert len(published["b"]) == 2
    assert {r["job"]: r["holder"] for r in leases.holders(store)} == {
        "deliver:fleet": b.holder,
        "retention": b.holder,
    }
    store.close()


def test_retention_days_are_checked(tmp_path):
    import pytest

    from common.config import ConfigError

    cfg = tmp_path / "hub.toml"
    assert hub_config.load(None, env={})["retention"]["box_history_days"] == 90
    cfg.write_text("[retention]\nbox_history_days = 0\n")
    with pytest.raises(ConfigError, match="retention.box_history_days"):
        hub_config.load(cfg, env={})
