"""What the clinic does after the study went reaches the hub, on a real Mosquitto: a
STAT mark and a clinical note (the worklist), and the print of its report (the
turnaround's last step). Also when they were made while the broker was down, on a
box then killed: the box sends them until the hub answers that it has them
(``down/kept``); answers that are not the hub's change nothing."""

from __future__ import annotations

import re
import sqlite3
import subprocess

import paho.mqtt.client as mqtt
import requests

from devkit.broker import Broker, Hub
from tests.conftest import printed, storescu, wait_for
from tests.helpers import delivered, make_study, start_box
from wire import frames
from wire.messages import Kept

PASSWORD = "correct horse battery"


def at_hub(hub, uid: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    rows = [s for s in hub.api("/api/worklist")["studies"] if s["study_uid"] == uid]
    return rows[0] if rows else {}


def pending(box) -> int:  # type: ignore[no-untyped-def]
    with sqlite3.connect(f"file:{box.data_dir / 'index.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT sum(update_pending) FROM studies").fetchone()[0])


def save(s: requests.Session, base: str, uid: str, note: str, stat: bool) -> None:
    page = s.get(f"{base}/study/{uid}").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf
    form = {"csrf": csrf[1], "clinical_note": note, **({"stat": "on"} if stat else {})}
    assert s.post(f"{base}/study/{uid}", data=form).ok


def test_a_stat_mark_made_with_the_broker_down_reaches_the_hub(tmp_path, boxes):
    # a broker that keeps nothing across a restart: the hub's session and what was
    # queued for it are gone, as on a broker that lost its disk or had no persistence
    broker = Broker(tmp_path / "broker", persistence=False).start()
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    try:
        run(tmp_path, boxes, broker, hub)
    finally:
        hub.stop()
        broker.stop()


def published(broker: Broker, leaf: str) -> int:
    lines = broker.log.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if "Received PUBLISH" in line and f"/{leaf}'" in line)


def run(tmp_path, boxes, broker: Broker, hub: Hub) -> None:  # type: ignore[no-untyped-def]
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config())
    box.add_user("reception", PASSWORD)
    base = f"http://127.0.0.1:{box.web_port}"
    s = requests.Session()
    login = s.get(base + "/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', login)
    assert csrf
    s.post(base + "/login", data={"username": "reception", "password": PASSWORD,
                                  "csrf": csrf[1]})  # fmt: skip
    files, uid = make_study(tmp_path, "a", 2)
    storescu(box.dicom_port, files)
    wait_for(lambda: delivered(box, uid), 60, "the study at the hub")
    assert at_hub(hub, uid)["priority"] == "routine"

    # connected: the note is at the hub within seconds, and cleared at the box
    save(s, base, uid, "Cough for a month", stat=False)
    wait_for(lambda: at_hub(hub, uid)["clinical_note"] == "Cough for a month", 30, "the note")
    wait_for(lambda: pending(box) == 0, 30, "the note cleared at the box")

    # the broker down: the study is marked STAT and the box killed; the broker and the
    # box come back, and the box sends the mark before the hub is back
    broker.kill()
    save(s, base, uid, "Now drowsy, <b>GCS 9</b>", stat=True)
    assert pending(box) == 1
    box.kill()
    hub.stop()
    before = published(broker, frames.UP_STUDY)
    broker.start()
    box.start()
    wait_for(lambda: published(broker, frames.UP_STUDY) > before, 30, "the mark sent")
    hub.start()
    wait_for(lambda: at_hub(hub, uid)["priority"] == "stat", 60, "the STAT mark at the hub")
    assert at_hub(hub, uid)["clinical_note"] == "Now drowsy, <b>GCS 9</b>"
    wait_for(lambda: pending(box) == 0, 30, "the mark cleared at the box")

    # answers not from the hub: malformed ones are logged; one for another version of
    # the update (a digest that is not its own) clears nothing
    evil = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="evil", protocol=mqtt.MQTTv5)
    evil.connect("127.0.0.1", broker.port)
    evil.loop_start()
    hub.stop()  # so that only the forged answer comes
    save(s, base, uid, "Now drowsy, GCS 7", stat=True)
    topic = frames.topic(box.box_id, frames.DOWN_KEPT)
    for payload in (Kept(frames.UP_STUDY, uid, "0" * 32).encode(), b"not json",
                    b"[" * (1 << 16)):  # fmt: skip
        evil.publish(topic, payload, qos=1).wait_for_publish(10)
    # taken in order: once both malformed ones are logged, the forged one was taken
    wait_for(lambda: box.log_text().count("malformed answer from the hub") == 2, 30, "logged")
    assert pending(box) == 1
    evil.loop_stop()
    evil.disconnect()
    hub.start()
    wait_for(lambda: at_hub(hub, uid).get("clinical_note") == "Now drowsy, GCS 7", 90,
             "the newer note once the hub is back")  # fmt: skip
    wait_for(lambda: pending(box) == 0, 30, "cleared at the box")


def test_a_print_made_with_the_broker_down_reaches_the_hub(tmp_path, broker, hub, boxes,
                                                            cups_printer):  # fmt: skip
    queue, out = cups_printer
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config(), printer=queue)
    files, uid = make_study(tmp_path, "a", 2)
    storescu(box.dicom_port, files)
    wait_for(lambda: delivered(box, uid), 60, "the study at the hub")
    subprocess.run(["cupsreject", queue], check=True)  # the printer is out of paper
    try:
        r = hub.api(f"/api/studies/{uid}/reports", {"findings": "No fracture.",
                                                    "radiologist": "Dr Rao"})  # fmt: skip
        hub.api(f"/api/reports/{r['report_id']}/sign", {})
        wait_for(lambda: (box.api("/api/reports")["reports"] or [{}])[0].get("print_error"),
                 60, "the print refused")  # fmt: skip
    finally:
        subprocess.run(["cupsaccept", queue], check=True)

    def acks_pending() -> int:
        with sqlite3.connect(f"file:{box.data_dir / 'index.db'}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT sum(print_ack_pending) FROM reports").fetchone()[0])

    # the broker down: printed again from the clinic's page, then the box killed
    broker.kill()
    box.api(f"/api/reports/{r['report_id']}/print", {})
    wait_for(lambda: printed(out, r["report_id"]), 60, "the printed PDF")
    wait_for(lambda: acks_pending() == 1, 10, "the print noted for the hub")
    box.kill()
    broker.start()
    box.start()

    def printed_at() -> str | None:
        return hub.api(f"/api/studies/{uid}/turnaround")["times"]["printed_at"]  # type: ignore[no-any-return]

    wait_for(printed_at, 60, "the print at the hub")
    wait_for(lambda: acks_pending() == 0, 30, "the print cleared at the box")
