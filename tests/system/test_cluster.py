"""The hub as a cluster on loopback: two hub "machines" (each ``radsetu hub serve``: two
web workers and an ingest process) and a third ingest worker share one index on a real
PostgreSQL and one bucket on a real SeaweedFS, and listen on two real Mosquitto
brokers with a box on each. While studies are on their way an ingest worker, a web
worker, a broker (started again) and a whole machine are killed with SIGKILL; then the
process holding the report sender's lease is killed before reports are signed.
Nothing is lost and nothing is counted, kept or delivered twice (the counters in the
index say so, not only the end state); a person's session works on either machine."""

from __future__ import annotations

import http.cookiejar
import itertools
import os
import re
import signal
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg

from devkit.broker import Broker, Hub
from devkit.servers import kill_group, spawn
from hub.jobs import REPORT_RETRY_SECONDS
from tests.conftest import storescu, wait_for
from tests.helpers import delivered, make_study, sign_report, start_box
from wire import frames

PASSWORD = "a long enough password"


def rows(url: str, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    with psycopg.connect(url) as c:
        return c.execute(sql).fetchall()


def ingest_pid(hub: Hub) -> int:
    """The pid of the ingest process that this hub machine's ``hub serve`` started (0:
    none, or not yet)."""
    if hub.proc is None or hub.proc.poll() is not None:
        return 0
    # the ingest's parent is the thread that watches it: look under every thread
    tasks = Path(f"/proc/{hub.proc.pid}/task").iterdir()
    for pid in (p for t in tasks for p in (t / "children").read_text().split()):
        if b"ingest" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    return 0


def web_worker(hub: Hub) -> int:
    """A gunicorn worker of this machine's web (forked by its main thread)."""
    assert hub.proc is not None
    kids = Path(f"/proc/{hub.proc.pid}/task/{hub.proc.pid}/children").read_text().split()
    return int(kids[0])


def session_on_both(a: Hub, b: Hub) -> None:
    """Log in on machine A's page, with the form posted to machine B; then the pages of
    both know the person (a load balancer without sticky sessions)."""
    jar = http.cookiejar.CookieJar()
    web = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = web.open(f"http://127.0.0.1:{a.web_port}/login", timeout=30).read().decode()
    csrf = re.search(r'name="csrf" (?:value|content)="([^"]+)"', page)[1]  # type: ignore[index]
    form = urllib.parse.urlencode({"csrf": csrf, "username": "dr-cluster", "password": PASSWORD})
    r = web.open(f"http://127.0.0.1:{b.web_port}/login", form.encode(), timeout=30)
    assert "/login" not in r.url, "the login posted to the other machine was refused"
    for hub in (a, b):
        r = web.open(f"http://127.0.0.1:{hub.web_port}/", timeout=30)
        assert "/login" not in r.url and "Log in" not in r.read().decode()


def test_a_hub_cluster_loses_nothing_and_doubles_nothing(tmp_path, postgres_server, seaweed, boxes):
    url = postgres_server.create_database("cluster")
    one = Broker(tmp_path / "broker-1").start()
    two = Broker(tmp_path / "broker-2").start()
    shared = {"index": {"url": url}, "objects": seaweed.objects_config("cluster")}

    def machine(name: str) -> Hub:
        # a dead worker's session (and its share of the group's messages) goes after
        # 5 s here, as after mqtt.session_expiry_seconds' 5 minutes in the field
        mqtt = {**one.mqtt_config("hub"), "client_id": f"hub-{name}", "session_expiry_seconds": 5,
                "other_brokers": [f"127.0.0.1:{two.port}"]}  # fmt: skip
        return Hub(tmp_path / f"hub-{name}", mqtt, workers=2, sections=shared)

    a = machine("a").start()
    b = machine("b")
    b.token = a.token  # one hub: its accounts and tokens are in the shared index
    b.start()
    c = machine("c")  # a third ingest worker alone, as on a machine of its own
    third = spawn([sys.executable, "-m", "radsetu", "hub", "ingest", "--config", str(c.config)],
                  c.log)  # fmt: skip
    hubs = {"a": a, "b": b}
    try:
        slow = {"ack_timeout_seconds": 5, "chunk_bytes": 16384, "max_bytes_per_second": 250_000}
        box_a = start_box(boxes, tmp_path / "box-a", one.mqtt_config(), box_id="box-a", sync=slow)
        box_b = start_box(boxes, tmp_path / "box-b", two.mqtt_config(), box_id="box-b", sync=slow)
        studies = []
        for box, name in ((box_a, "a1"), (box_b, "b1")):
            files, uid = make_study(tmp_path, name, 10)
            storescu(box.dicom_port, files)
            studies.append((box, uid, len(files)))

        def held() -> int:
            return int(rows(url, "SELECT coalesce(sum(chunks_held), 0) FROM transfers")[0][0])

        def after_more_chunks() -> None:
            before = held()
            wait_for(lambda: held() > before + 15, 90, "chunks arriving")

        # mid-transfer, SIGKILL to: one ingest worker; one web worker (gunicorn starts
        # another, and the API answers on); one broker, started again; then a whole
        # machine (its web and its ingest), started again
        after_more_chunks()
        kill_group(third)
        after_more_chunks()
        os.kill(web_worker(a), signal.SIGKILL)
        wait_for(lambda: a.api("/api/transfers")["transfers"], 30, "machine A's API")
        after_more_chunks()
        two.kill()
        time.sleep(2)
        two.start()
        after_more_chunks()
        b.kill()
        b.start()
        for box, name in ((box_a, "a2"), (box_b, "b2")):
            files, uid = make_study(tmp_path, name, 2)
            storescu(box.dicom_port, files)
            studies.append((box, uid, len(files)))
        for box, uid, _n in studies:
            wait_for(lambda box=box, uid=uid: delivered(box, uid), 180, f"study {uid} at the hub")

        # nothing lost, nothing counted or kept twice
        transfers = rows(url, "SELECT state, chunk_count, chunks_held, chunks_received, "
                              "duplicates FROM transfers")  # fmt: skip
        assert len(transfers) == 4
        for state, count, chunks_held, received, dups in transfers:
            assert state == "verified" and chunks_held == count
            assert received == count + dups
        for box, uid, n in studies:
            at_box = sorted((i["sop_instance_uid"], i["sha256"])
                            for i in box.api(f"/api/studies/{uid}")["instances"])  # fmt: skip
            for hub in (a, b):  # either machine's API answers the same
                at_hub = [(i["sop_instance_uid"], i["sha256"])
                          for i in hub.api(f"/api/studies/{uid}")["instances"]]  # fmt: skip
                assert sorted(at_hub) == at_box and len(at_hub) == n
        print("cluster: chunks per transfer, resent and taken twice:",
              [(count, dups) for _s, count, _h, _r, dups in transfers])  # fmt: skip
        ((kept, distinct),) = rows(url, "SELECT count(*), count(DISTINCT sop_instance_uid) "
                                        "FROM instances")  # fmt: skip
        assert kept == distinct == sum(n for _b, _u, n in studies)

        # the person's session, on either machine
        a.add_user("dr-cluster", "radiologist", PASSWORD)
        session_on_both(a, b)

        # the report sender's holder for broker one dies before the reports are signed
        job = f"deliver:127.0.0.1:{one.port}"

        def sender() -> str | None:
            """The machine whose live ingest holds the job (a killed one's lease may
            still be running out)."""
            found = rows(url, f"SELECT holder FROM leases WHERE job='{job}'")
            pid = int(found[0][0].split(":")[1]) if found else 0
            return next((n for n, h in hubs.items() if ingest_pid(h) == pid), None)

        leader = wait_for(sender, 40, "a live process sending the reports")
        other = "b" if leader == "a" else "a"
        hubs[leader].kill()
        killed = time.monotonic()
        ids = {sign_report(hubs[other], uid): box for box, uid, _n in studies[:2]}
        wait_for(lambda: sender() == other, 40, "the other machine taking the report sender")
        print(f"cluster: the report sender moved from {leader} to {other} in "
              f"{time.monotonic() - killed:.1f} s")  # fmt: skip
        hubs[leader].start()  # back, as its service manager would have it
        for rid in ids:
            wait_for(lambda rid=rid: hubs[other].api(f"/api/reports/{rid}")["delivery"]["state"]
                     == "acked", 90, "the report delivered")  # fmt: skip
        for box in (box_a, box_b):
            got = [r["report_id"] for r in box.api("/api/reports")["reports"]]
            assert len(got) == 1 and ids[got[0]] is box
        # never two senders at once: every publish of a report is a claimed attempt,
        # and a second one only a retry after REPORT_RETRY_SECONDS (the box's ack can
        # sit in the dead machine's share at the broker: Mosquitto keeps a shared
        # subscription's messages for a member's session until it comes back)
        attempts = dict(rows(url, "SELECT box_id, attempts FROM deliveries"))
        for broker, box_id in ((one, "box-a"), (two, "box-b")):
            topic = frames.topic(box_id, frames.DOWN_REPORT)
            at = [int(line.split(":", 1)[0]) for line in broker.log.read_text().splitlines()
                  if "Received PUBLISH from hub-" in line and topic in line]  # fmt: skip
            assert len(at) == attempts[box_id] >= 1
            assert all(later - earlier >= REPORT_RETRY_SECONDS - 1
                       for earlier, later in itertools.pairwise(at))  # fmt: skip
    finally:
        kill_group(third)
        for hub in (a, b):
            hub.stop()
        one.stop()
        two.stop()
