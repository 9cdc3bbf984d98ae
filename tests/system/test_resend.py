"""A hub rebuilt on an empty disk gets the box's delivered studies again, through
``radsetu edge resend`` at the box or ``radsetu hub resend`` at the hub, on a real
Mosquitto with the box serving all along."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import paho.mqtt.client as mqtt

from tests.conftest import storescu, wait_for
from tests.helpers import assert_same_at_hub, delivered, hub_study, make_study, start_box
from wire import frames


def resend(box, *args: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "radsetu", "edge", "resend", *args, "--config", str(box.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def hub_resend(hub, *args: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "radsetu", "hub", *args, "--config", str(hub.config)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def delivered_then_hub_rebuilt(tmp_path, broker, hub, boxes):  # type: ignore[no-untyped-def]
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config())
    uids = []
    for name in ("a", "b"):
        files, uid = make_study(tmp_path, name, 3)
        storescu(box.dicom_port, files)
        uids.append(uid)
    for uid in uids:
        wait_for(lambda uid=uid: delivered(box, uid), 60, f"{uid} delivered")
        assert_same_at_hub(box, hub, uid)
    hub.stop()
    shutil.rmtree(hub.data_dir)  # the hub's disk is replaced
    hub.token = ""
    hub.start()
    assert [hub_study(hub, uid) for uid in uids] == [[], []]
    return box, uids


def arrive_again(box, hub, uids: list[str]) -> None:  # type: ignore[no-untyped-def]
    for uid in uids:
        wait_for(lambda uid=uid: delivered(box, uid), 60, f"{uid} delivered again")
        wait_for(lambda uid=uid: hub_study(hub, uid), 30, f"{uid} at the rebuilt hub")
        assert_same_at_hub(box, hub, uid)


def test_the_hub_asks_the_box_for_its_delivered_studies_again(tmp_path, broker, hub, boxes):
    box, uids = delivered_then_hub_rebuilt(tmp_path, broker, hub, boxes)
    r = hub_resend(hub, "resend", "--box", box.box_id)
    assert r.returncode == 2 and "name the studies to send again, or give --all" in r.stderr
    r = hub_resend(hub, "resend", "--box", "no-such-box", "--all")
    assert r.returncode == 2 and "no box 'no-such-box' has been heard from" in r.stderr
    r = hub_resend(hub, "resend", "--box", box.box_id, "../../etc")
    assert r.returncode == 2 and "not a UID" in r.stderr, r.stderr

    # what is not a request is refused by the box, which keeps serving
    evil = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="evil", protocol=mqtt.MQTTv5)
    evil.connect("127.0.0.1", broker.port)
    evil.loop_start()
    down = frames.topic(box.box_id, frames.DOWN_RESEND)
    for payload in (
        b"not json",
        json.dumps({"request_id": "x1", "study_uids": ["<b>1.2</b>"]}).encode(),
        json.dumps({"request_id": "../x", "study_uids": [], "every": True}).encode(),
        b"[" * (1 << 20),
    ):
        evil.publish(down, payload, qos=1).wait_for_publish(5)
    evil.loop_stop()
    evil.disconnect()
    wait_for(lambda: box.log_text().count("refused a resend request from the hub") == 4, 30,
             "the box refusing each")  # fmt: skip

    # by name, with a study the box never had: the box answers for each
    heard = lambda: [b for b in hub.api("/api/boxes")["boxes"] if b["box_id"] == box.box_id]  # noqa: E731
    wait_for(heard, 30, "the rebuilt hub hears of the box")
    r = hub_resend(hub, "resend", "--box", box.box_id, uids[0], "1.2.3.4", "--wait", "60")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"study {uids[0]}: queued: 3 instances" in r.stdout
    assert "study 1.2.3.4: not on this box" in r.stdout
    assert "1 studies queued to be sent again, 1 could not be" in r.stdout
    wait_for(lambda: delivered(box, uids[0]), 60, "the first study delivered again")
    assert_same_at_hub(box, hub, uids[0])
    assert hub_study(hub, uids[1]) == []

    r = hub_resend(hub, "resend", "--box", box.box_id, "--all", "--wait", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 studies queued to be sent again, 0 could not be" in r.stdout
    arrive_again(box, hub, uids)

    # the operator's listing: both requests, newest first, the refusal named
    r = hub_resend(hub, "resends", "--box", box.box_id)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.index("every delivered study") < r.stdout.index("for 2 studies")
    assert "study 1.2.3.4: not on this box" in r.stdout
    assert f"study {uids[0]}:" not in r.stdout  # the listing names only the refusals
    with sqlite3.connect(box.data_dir / "index.db") as db:
        asked = db.execute("SELECT study_uid FROM audit WHERE action='resend' AND username='hub'")
        assert sorted(r[0] for r in asked) == sorted([uids[0], *uids])


def test_a_hub_rebuilt_on_an_empty_disk_gets_the_delivered_studies_again(
    tmp_path, broker, hub, boxes
):
    box, uids = delivered_then_hub_rebuilt(tmp_path, broker, hub, boxes)
    # asked for by name, a study the box never had, and no study at all
    r = resend(box, uids[0], "1.2.3.4")
    assert r.returncode == 1, r.stderr
    assert f"study {uids[0]}: queued: 3 instances" in r.stdout
    assert "study 1.2.3.4: not on this box" in r.stdout
    assert "1 of 2 studies queued" in r.stdout
    r = resend(box)
    assert r.returncode == 2 and "name the studies to send again, or give --all" in r.stderr
    wait_for(lambda: delivered(box, uids[0]), 60, "the first study delivered again")
    assert_same_at_hub(box, hub, uids[0])
    assert hub_study(hub, uids[1]) == []

    # every delivered study: the first goes a third time, and the hub keeps it once
    r = resend(box, "--all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 of 2 studies queued" in r.stdout
    arrive_again(box, hub, uids)
    transfers = box.api("/api/transfers")["transfers"]
    assert sorted(t["state"] for t in transfers) == ["verified"] * 5
