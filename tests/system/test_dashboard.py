"""The operators' dashboard in a real browser, against a real broker, hub and box: a
box that goes offline shows so within the stated time, a backlog that keeps growing
raises an alert, and /metrics (parsed by the Prometheus client) says what the
dashboard says."""

from __future__ import annotations

import time
import urllib.request

from devkit.broker import Broker, Hub
from devkit.relay import Relay
from tests.conftest import screenshots, storescu, until, wait_for
from tests.helpers import make_study, start_box
from tests.system.test_metrics import scrape

KEEPALIVE = 3  # the broker publishes the box's last will ~1.5 keepalives after it dies
REFRESH = 10  # the fleet page's own refresh


def metrics(hub: Hub, token: str) -> dict:  # type: ignore[type-arg]
    return scrape(hub.web_port, token)


def test_operator_sees_a_box_go_offline_and_a_growing_backlog(tmp_path, browser, boxes):
    from selenium.webdriver.common.by import By

    broker = Broker(tmp_path / "broker").start()
    hub = Hub(
        tmp_path / "hub",
        broker.mqtt_config("hub"),
        sections={"alerts": {"offline_seconds": 5, "backlog_growth_seconds": 60}},
    ).start()
    try:
        operator = hub.add_user("ops", "operator", "correct horse battery")
        radiologist = hub.add_user("dr-rao", "radiologist", "correct horse battery")
        # a link so thin that what the box takes in piles up: its backlog grows
        relay = Relay(broker.port).start()  # the clinic's cellular link
        box = start_box(
            boxes,
            tmp_path / "box",
            {**broker.mqtt_config(), "port": relay.port, "keepalive": KEEPALIVE},
            clinic="Bagalkot <b>General</b>",
            sync={"max_bytes_per_second": 2000, "status_seconds": 1},
        )
        b = browser
        base = f"http://127.0.0.1:{hub.web_port}"
        b.get(base + "/fleet")
        assert "/login" in b.current_url
        b.find_element(By.ID, "username").send_keys("ops")
        b.find_element(By.ID, "password").send_keys("correct horse battery")
        b.find_element(By.ID, "login").click()
        until(b, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr.box[data-box="test-box"]'), 30)
        row = b.find_element(By.CSS_SELECTOR, 'tr.box[data-box="test-box"]')
        assert row.find_element(By.CSS_SELECTOR, ".online").text == "online"
        assert "Bagalkot <b>General</b>" in row.text  # shown as text

        # three studies, a few seconds apart: the backlog only grows
        for i in range(3):
            files, _uid = make_study(tmp_path, f"s{i}", 2)
            storescu(box.dicom_port, files)
            time.sleep(4)

        def alert_shown(d):  # type: ignore[no-untyped-def]
            d.refresh()
            return d.find_elements(By.CSS_SELECTOR, '.alert[data-kind="backlog_growing"]')

        until(b, alert_shown, 60)
        screenshots(b, "fleet-backlog-alert")
        fleet = hub.api("/api/fleet", token=operator)
        (row_json,) = fleet["boxes"]
        assert row_json["backlog_studies"] == 3 and row_json["online"]
        # /metrics parses, and says what the dashboard says
        m = metrics(hub, operator)
        key = (("box", "test-box"),)
        for name, field in (
            ("radsetu_box_online", "online"),
            ("radsetu_box_backlog_studies", "backlog_studies"),
            ("radsetu_box_disk_free_bytes", "disk_free_bytes"),
        ):
            assert m[(name, key)] == float(row_json[field]), name
        assert m[("radsetu_alerts", (("box", "test-box"), ("kind", "backlog_growing")))] == 1
        # a radiologist may not see the fleet
        try:
            metrics(hub, radiologist)
            raise AssertionError("a radiologist read /metrics")
        except urllib.error.HTTPError as exc:
            assert exc.code == 403

        # the link dies without a word to either end: the broker notices after 1.5
        # keepalives and publishes the box's last will; the page shows it at its next
        # refresh. (A box killed outright closes its socket: the will goes at once.)
        b.get(base + "/fleet")
        relay.cut()
        died = time.monotonic()

        def offline(d):  # type: ignore[no-untyped-def]
            return (
                "offline"
                in d.find_element(By.CSS_SELECTOR, 'tr.box[data-box="test-box"] .online').text
            )

        # the page refreshes itself every 10 s: no reload from the test
        until(b, offline, 1.5 * KEEPALIVE + REFRESH + 10)
        took = time.monotonic() - died
        print(f"dashboard showed the box offline {took:.1f} s after its link died")
        assert took <= 1.5 * KEEPALIVE + REFRESH + 10
        wait_for(
            lambda: any(a["kind"] == "offline" for a in hub.api("/api/fleet")["alerts"]),
            30,
            "the offline alert",
        )
        until(b, lambda d: d.find_elements(By.CSS_SELECTOR, '.alert[data-kind="offline"]'), 30)
        screenshots(b, "fleet-offline")
        m = metrics(hub, operator)
        assert m[("radsetu_box_online", (("box", "test-box"),))] == 0.0

        # the box's own page: transfers with progress, and its charts
        b.find_element(By.LINK_TEXT, "test-box").click()
        until(b, lambda d: len(d.find_elements(By.CSS_SELECTOR, "svg.chart")) == 3)
        assert b.find_elements(By.CSS_SELECTOR, "#transfers progress")
        assert b.find_elements(By.CSS_SELECTOR, "svg.chart polyline")
        screenshots(b, "fleet-box")
    finally:
        hub.stop()
        broker.stop()
