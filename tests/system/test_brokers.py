"""Several brokers (scale-out by assignment): each box is on one of two real Mosquitto
brokers, the hub listens on both (``mqtt.other_brokers``), and what goes down to a box
(reports) goes through the broker the box is on. A broker killed with SIGKILL takes
only its own boxes offline; they carry on where they were once it is back."""

from __future__ import annotations

from devkit.broker import Broker, Hub
from tests.conftest import storescu, wait_for
from tests.helpers import delivered, make_study, sign_report, start_box
from wire import frames


def test_boxes_on_two_brokers_and_one_broker_down(tmp_path, boxes):
    one = Broker(tmp_path / "broker-1").start()
    two = Broker(tmp_path / "broker-2").start()
    mqtt = {**one.mqtt_config("hub"), "other_brokers": [f"127.0.0.1:{two.port}"]}
    hub = Hub(tmp_path / "hub", mqtt).start()
    try:
        a = start_box(boxes, tmp_path / "a", one.mqtt_config(), box_id="box-a",
                      sync={"ack_timeout_seconds": 5})  # fmt: skip
        b = start_box(boxes, tmp_path / "b", two.mqtt_config(), box_id="box-b",
                      sync={"ack_timeout_seconds": 5})  # fmt: skip
        uids = {}
        for box, name in ((a, "a1"), (b, "b1")):
            files, uids[name] = make_study(tmp_path, name, 3)
            storescu(box.dicom_port, files)
        wait_for(lambda: delivered(a, uids["a1"]) and delivered(b, uids["b1"]), 60,
                 "both boxes' studies at the hub")  # fmt: skip
        on = {x["box_id"]: x["broker"] for x in hub.api("/api/boxes")["boxes"]}
        assert on == {"box-a": f"127.0.0.1:{one.port}", "box-b": f"127.0.0.1:{two.port}"}

        # each box gets its report through its own broker, once
        ra, rb = sign_report(hub, uids["a1"], "a first"), sign_report(hub, uids["b1"], "b first")
        wait_for(lambda: hub.api(f"/api/reports/{ra}")["delivery"]["state"] == "acked"
                 and hub.api(f"/api/reports/{rb}")["delivery"]["state"] == "acked", 60,
                 "both reports acknowledged")  # fmt: skip
        assert [r["report_id"] for r in a.api("/api/reports")["reports"]] == [ra]
        assert [r["report_id"] for r in b.api("/api/reports")["reports"]] == [rb]
        # and only through its own: broker one never carried box B's report, nor two A's
        assert frames.topic("box-b", frames.DOWN_REPORT) not in one.log.read_text()
        assert frames.topic("box-a", frames.DOWN_REPORT) not in two.log.read_text()
        assert frames.topic("box-a", frames.DOWN_REPORT) in one.log.read_text()

        # broker two dies: box A's work goes on; box B's waits, and nothing is lost
        two.kill()
        files_a, uids["a2"] = make_study(tmp_path, "a2", 3)
        files_b, uids["b2"] = make_study(tmp_path, "b2", 3)
        storescu(a.dicom_port, files_a)
        storescu(b.dicom_port, files_b)
        rb2 = sign_report(hub, uids["b1"], "b addendum-like second report")
        wait_for(lambda: delivered(a, uids["a2"]), 60, "box A's study with broker two down")
        assert not delivered(b, uids["b2"])
        assert hub.api(f"/api/reports/{rb2}")["delivery"]["state"] == "pending"

        two.start()  # the same port and persistence folder
        wait_for(lambda: delivered(b, uids["b2"]), 120, "box B's study once its broker is back")
        wait_for(lambda: hub.api(f"/api/reports/{rb2}")["delivery"]["state"] == "acked", 120,
                 "box B's report once its broker is back")  # fmt: skip
        assert sorted(r["report_id"] for r in b.api("/api/reports")["reports"]) == sorted([rb, rb2])
        assert [r["report_id"] for r in a.api("/api/reports")["reports"]] == [ra]
        for uid in uids.values():  # every instance once at the hub
            sops = [i["sop_instance_uid"] for i in hub.api(f"/api/studies/{uid}")["instances"]]
            assert len(sops) == len(set(sops)) == 3
    finally:
        hub.stop()
        one.stop()
        two.stop()
