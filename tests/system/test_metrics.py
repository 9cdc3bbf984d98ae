"""``/metrics`` at both ends, through the Prometheus client library, against a real
broker, hub (two gunicorn workers) and box: parsed by the client's own parser, the figures
are the ones the pages and APIs show; a request counted by any worker is in every
scrape; the box's own ``/metrics`` is open to the box itself only (or after a login)."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from devkit.box import Box
from devkit.broker import Broker, Hub
from tests.conftest import storescu, wait_for
from tests.helpers import box_login, delivered, make_study, sign_report, start_box

PASSWORD = "correct horse battery"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None  # a redirect to the login page is an answer, not a page to follow


def scrape(port: int, token: str = "", cookie: str = "") -> dict:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if cookie:
        headers["Cookie"] = cookie
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.build_opener(_NoRedirect).open(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def at(m: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return float(m[(name, tuple(sorted(labels.items())))])


def test_metrics_at_both_ends_say_what_the_pages_say(tmp_path, boxes):
    broker = Broker(tmp_path / "broker").start()
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub"), workers=2).start()
    try:
        operator = hub.add_user("ops", "operator", "correct horse battery")
        box = start_box(boxes, tmp_path / "box", broker.mqtt_config(), sync={"status_seconds": 1})
        files, uid = make_study(tmp_path, "m", 3)
        storescu(box.dicom_port, files)
        wait_for(lambda: delivered(box, uid), 60, "the study at the hub")
        rid = sign_report(hub, uid)
        wait_for(lambda: box.api("/api/reports")["reports"], 30, "the report at the box")
        acked = "radsetu_hub_report_deliveries"
        wait_for(lambda: at(scrape(hub.web_port, operator), acked, state="acked"), 30, "the ack")

        # the box: its /metrics and its /api/sync, from the box itself (loopback)
        m = scrape(box.web_port)
        sync = box.api("/api/sync")
        assert m[("radsetu_link_up", ())] == 1.0
        for name, field in (
            ("radsetu_backlog_studies", "backlog_studies"),
            ("radsetu_backlog_bytes", "backlog_bytes"),
            ("radsetu_held_instances", "held_instances"),
            ("radsetu_chunks_sent_total", "chunks_sent"),
            ("radsetu_sent_bytes_total", "bytes_sent"),
        ):
            assert m[(name, ())] == float(sync[field]), name
        assert m[("radsetu_chunks_sent_total", ())] >= 1
        studies = box.api("/api/studies")["studies"]
        assert m[("radsetu_studies", (("priority", "routine"), ("state", "delivered")))] == len(
            [s for s in studies if s["state"] == "delivered"]
        ) == 1  # fmt: skip
        assert m[("radsetu_instances", ())] == 3.0
        assert m[("radsetu_reports", ())] == len(box.api("/api/reports")["reports"]) == 1
        count = "radsetu_request_duration_seconds_count"
        m = scrape(box.web_port)  # the /api/sync call above is in it now
        assert at(m, count, endpoint="api.sync_status", method="GET", status="200") == 1

        # the hub: the fleet's figures as /api/fleet gives them, and its own work
        fleet = hub.api("/api/fleet", token=operator)
        h = scrape(hub.web_port, operator)
        (row,) = fleet["boxes"]
        for name, field in (
            ("radsetu_box_online", "online"),
            ("radsetu_box_backlog_studies", "backlog_studies"),
            ("radsetu_box_held_instances", "held_instances"),
        ):
            assert h[(name, (("box", "test-box"),))] == float(row[field]), name
        at_hub = hub.api(f"/api/studies/{uid}")["instances"]
        assert h[("radsetu_hub_instances_stored_total", ())] == len(at_hub) == 3
        assert h[("radsetu_hub_studies_verified_total", ())] == 1.0
        assert h[("radsetu_hub_chunks_received_total", ())] >= 1
        assert h[("radsetu_hub_transfers_in_progress", ())] == 0.0
        assert at(h, "radsetu_hub_worklist_studies", priority="routine", state="signed") == 1.0
        assert h[("radsetu_hub_report_deliveries", (("state", "pending"),))] == 0.0
        assert h[("radsetu_hub_report_sends_total", ())] >= 1
        assert hub.api(f"/api/reports/{rid}")["state"] == "signed"

        # request figures from both web workers, summed in every scrape: 30 calls on
        # fresh connections (the kernel hands them to either worker) all counted
        key = ("radsetu_hub_request_duration_seconds_count",
               (("endpoint", "hub_api.fleet"), ("method", "GET"), ("status", "200")))  # fmt: skip
        before = h[key]
        for _ in range(30):
            hub.api("/api/fleet", token=operator)
        for _ in range(4):  # whichever worker answers the scrape
            assert scrape(hub.web_port, operator)[key] == before + 30
        pids = {w.name for w in (tmp_path / "hub" / "data" / "run" / "metrics").iterdir()}
        assert len(pids) >= 2, pids  # both workers keep their figures there

        # who may read them: not a radiologist at the hub
        radiologist = hub.add_user("dr-rao", "radiologist", "correct horse battery")
        try:
            scrape(hub.web_port, radiologist)
            raise AssertionError("a radiologist read the hub's /metrics")
        except urllib.error.HTTPError as exc:
            assert exc.code == 403
    finally:
        hub.stop()
        broker.stop()


def test_box_metrics_need_a_login_unless_from_the_box_itself(tmp_path):
    from edge.config import load
    from edge.web import create_app

    # from the clinic's LAN: refused, never the figures
    cfg = load(None, env={"RADSETU_DATA_DIR": str(tmp_path / "data")})
    lan = (
        create_app(cfg).test_client().get("/metrics", environ_base={"REMOTE_ADDR": "192.168.1.40"})
    )
    assert lan.status_code == 401, lan.status_code  # a machine's path: no login page
    assert b"radsetu_" not in lan.data

    # a box that trusts nobody: from the box itself too, a login first
    box = Box(tmp_path / "box")
    box.start(env={"RADSETU_WEB_TRUST_LOOPBACK": "false"})
    try:
        box.add_user("asha", PASSWORD)
        try:
            scrape(box.web_port)
            raise AssertionError("the box's /metrics answered without a login")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401, exc.code
        m = scrape(box.web_port, cookie=box_login(box.web_port, "asha", PASSWORD))
        assert m[("radsetu_instances", ())] == 0.0
    finally:
        box.stop()
