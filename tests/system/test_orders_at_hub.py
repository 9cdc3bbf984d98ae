"""An order made at the clinic reaches the hub's reading room before its images, on a
real Mosquitto: STAT first, gone when reception cancels it or when its study arrives;
one made while the broker is down, on a box then killed, goes once both are back; what
a box sends on ``up/order`` that is not an order is refused, and nothing stops."""

from __future__ import annotations

import json
import re

import paho.mqtt.client as mqtt
import pydicom
import requests

from tests.conftest import storescu, wait_for
from tests.helpers import delivered, make_study, start_box
from wire import frames

PASSWORD = "correct horse battery"


def _csrf(s: requests.Session, url: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', s.get(url).text)
    assert found
    return found[1]


def coming(hub) -> dict[str, dict]:  # type: ignore[no-untyped-def, type-arg]
    return {o["accession"]: o for o in hub.api("/api/orders/expected")["orders"]}


def test_orders_reach_the_reading_room_before_their_images(tmp_path, broker, hub, boxes):
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config())
    box.add_user("reception", PASSWORD)
    base = f"http://127.0.0.1:{box.web_port}"
    s = requests.Session()
    s.post(base + "/login", data={"username": "reception", "password": PASSWORD,
                                  "csrf": _csrf(s, base + "/login")})  # fmt: skip
    made = []
    for name, stat in (("Meena Kumari", "on"), ("Ravi Patil", ""), ("Wrong Entry", "")):
        form = {"name_latin": name, "patient_id": f"VJP-{len(made)}", "sex": "F",
                "birth_date": "1980-02-29", "modality": "CT", "body_part": "HEAD",
                "question": "Fall from a bus, drowsy", "stat": stat}  # fmt: skip
        r = s.post(base + "/orders", data={**form, "csrf": _csrf(s, base + "/orders")})
        assert r.ok and name in r.text
        made.append(re.search(rf'data-accession="(\d+)"[^>]*>(?:(?!</tr>).)*{name}', r.text,
                              re.S)[1])  # fmt: skip
    got = wait_for(lambda: len(coming(hub)) == 3 and coming(hub), 30, "the orders at the hub")
    assert list(got) == [made[0], made[1], made[2]]  # STAT first
    assert got[made[0]]["priority"] == "stat" and got[made[0]]["box_id"] == box.box_id
    assert got[made[0]]["question"] == "Fall from a bus, drowsy"

    # cancelled at the clinic: gone from the reading room
    r = s.post(f"{base}/orders/{made[2]}/cancel", data={"csrf": _csrf(s, base + "/orders")})
    assert r.ok
    wait_for(lambda: made[2] not in coming(hub), 30, "the cancelled order gone")

    # the broker down, an order made, the box killed: the order goes once both are back
    broker.kill()
    form = {"name_latin": "Asha Devi", "patient_id": "VJP-9", "sex": "F",
            "birth_date": "1975-06-01", "modality": "CR", "body_part": "CHEST",
            "question": "Cough for a month", "stat": ""}  # fmt: skip
    r = s.post(base + "/orders", data={**form, "csrf": _csrf(s, base + "/orders")})
    made.append(re.search(r'data-accession="(\d+)"[^>]*>(?:(?!</tr>).)*Asha Devi', r.text,
                          re.S)[1])  # fmt: skip
    box.kill()
    broker.start()
    box.start()
    wait_for(lambda: made[3] in coming(hub), 60, "the order made while the broker was down")
    assert coming(hub)[made[3]]["modality"] == "CR"

    # not orders, on the box's own topic: refused and logged; the hub carries on
    evil = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="evil", protocol=mqtt.MQTTv5)
    evil.connect("127.0.0.1", broker.port)
    evil.loop_start()
    topic = frames.topic(box.box_id, frames.UP_ORDER)
    good = dict(got[made[1]])
    for payload in (b"not json", json.dumps({**good, "state": "done"}).encode(),
                    json.dumps({**good, "accession": "../../etc"}).encode(),
                    b"[" * (1 << 20)):  # fmt: skip
        evil.publish(topic, payload, qos=1).wait_for_publish(10)
    evil.loop_stop()
    evil.disconnect()
    wait_for(lambda: "order: state 'done' is not known" in hub.log_text(), 30, "refused")
    assert "order: accession missing or malformed" in hub.log_text()

    # the modality used the worklist: the study has the order's UID and leaves the list
    uid = coming(hub)[made[0]]["study_uid"]
    files, _ = make_study(tmp_path, "ct", 2)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.PatientID, ds.AccessionNumber = uid, "VJP-0", made[0]
        ds.save_as(f)
    storescu(box.dicom_port, files)
    wait_for(lambda: delivered(box, uid), 60, "the study delivered")
    wait_for(lambda: list(coming(hub)) == [made[1], made[3]], 30, "the routine orders left")
