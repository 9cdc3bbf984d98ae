"""Sync end to end on a real Mosquitto: storescu → box → MQTT → hub, and back the acks.

Every test here runs real processes: Mosquitto on a free port, ``radsetu hub serve``
(gunicorn and its MQTT ingest) and ``radsetu edge serve``. Faults are real too: the
broker and the hub are SIGKILLed, the box is SIGKILLed, the link is cut by a relay
that stops carrying bytes.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from devkit.box import Box
from devkit.broker import Broker, Hub
from devkit.corpus import dataset_bytes
from devkit.relay import Relay
from tests.conftest import acked_files, storescu, wait_for
from tests.helpers import (
    assert_same_at_hub,
    box_state,
    delivered,
    hub_study,
    hub_transfers,
    make_study,
    start_box,
)

# -- the plain path ---------------------------------------------------------------------


def test_storescu_to_hub_byte_identical(tmp_path, broker, hub, boxes, wire_copy):
    """Real samples in several transfer syntaxes: each arrives at the hub with the box's
    SHA-256, and its dataset bytes are the bytes storescu put on the wire."""
    import pydicom

    from devkit.corpus import SAMPLES, sample_path

    box = start_box(boxes, tmp_path / "box", broker.mqtt_config())
    uids = set()
    for origin, name, flags in SAMPLES[:8]:
        path = sample_path(origin, name)
        storescu(box.dicom_port, [path], flags)
        storescu(wire_copy.port, [path], flags)
        uids.add(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    studies = wait_for(
        lambda: (s := box.api("/api/studies")["studies"]) and len(s) == len(uids) and s,
        30,
        "the box to hold every study",
    )
    for s in studies:
        wait_for(lambda s=s: delivered(box, s["study_uid"]), 60, f"{s['study_uid']} delivered")
        assert_same_at_hub(box, hub, s["study_uid"])
        for inst in box.api(f"/api/studies/{s['study_uid']}")["instances"]:
            sha = inst["sha256"]
            stored = hub.data_dir / "objects" / sha[:2] / f"{sha}.dcm"
            assert dataset_bytes(stored) == wire_copy(
                inst["sop_instance_uid"], inst["transfer_syntax"]
            )
    boxes_at_hub = hub.api("/api/boxes")["boxes"]
    assert [b["box_id"] for b in boxes_at_hub] == ["test-box"]
    status = boxes_at_hub[0]
    wait_for(
        lambda: hub.api("/api/boxes")["boxes"][0]["status"].get("backlog_studies") == 0,
        40,
        "status with an empty backlog",
    )
    status = hub.api("/api/boxes")["boxes"][0]
    assert status["online"] is True
    for key in ("backlog_bytes", "oldest_pending", "last_sync", "link", "disk_free", "version"):
        assert key in status["status"], key
    assert all(t["state"] == "verified" and t["resent_held"] == 0 for t in hub_transfers(hub))
    # a clean stop says offline (retained), and the hub shows it
    box.stop()
    wait_for(lambda: hub.api("/api/boxes")["boxes"][0]["online"] is False, 20, "offline at the hub")


def test_last_will_marks_a_killed_box_offline(tmp_path, broker, hub, boxes):
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config())
    wait_for(lambda: (b := hub.api("/api/boxes")["boxes"]) and b[0]["online"], 20, "box online")
    box.kill()
    # keepalive 5 s: the broker gives up after 1.5 x keepalive and publishes the will
    wait_for(lambda: hub.api("/api/boxes")["boxes"][0]["online"] is False, 20, "the last will")
    assert hub.api("/api/boxes")["boxes"][0]["status"]["reason"] == "connection lost"


def test_follow_up_merges_at_the_hub(tmp_path, broker, hub, boxes):
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config())
    files, uid = make_study(tmp_path, "study", 6)
    storescu(box.dicom_port, files[:4])
    wait_for(lambda: delivered(box, uid), 40, "the first part delivered")
    assert len(hub_study(hub, uid)) == 4
    storescu(box.dicom_port, files[2:])  # two again (duplicates) and two new
    assert box_state(box, uid) in ("receiving", "ready", "sending")
    wait_for(lambda: delivered(box, uid), 40, "the follow-up delivered")
    assert_same_at_hub(box, hub, uid)
    transfers = box.api(f"/api/studies/{uid}")["transfers"]
    assert len(transfers) == 2
    newer, older = transfers
    assert newer["follow_up_of"] == older["transfer_id"] and newer["instance_count"] == 2
    assert {t["state"] for t in hub_transfers(hub, uid)} == {"verified"}


# -- faults ------------------------------------------------------------------------------

SLOW = {"max_bytes_per_second": 1_500_000, "pixel_effort": 0, "chunk_bytes": 65536}


def midway(hub: Hub, uid: str) -> bool:
    t = hub_transfers(hub, uid)
    return bool(t) and 0 < t[0]["chunks_held"] < t[0]["chunk_count"] // 2


def slow_transfer_half_way(boxes: list, tmp_path: Path, mqtt: dict, hub: Hub) -> tuple[Box, str]:  # type: ignore[type-arg]
    """A box sending a 30-slice CT study slowly, caught with under half of it at the hub."""
    box = start_box(boxes, tmp_path / "box", mqtt, sync=SLOW)
    files, uid = make_study(tmp_path, "study", 30)
    storescu(box.dicom_port, files)
    wait_for(lambda: midway(hub, uid), 60, "the transfer half way")
    return box, uid


def finish_and_check(box: Box, hub: Hub, uid: str, timeout: float = 120) -> dict:  # type: ignore[type-arg]
    wait_for(lambda: delivered(box, uid), timeout, "the study delivered after the fault")
    assert_same_at_hub(box, hub, uid)
    (t,) = hub_transfers(hub, uid)
    assert t["state"] == "verified"
    # the box never resent a chunk the hub held (and so had acknowledged)
    assert t["resent_held"] == 0, t
    return t


def test_broker_killed_mid_transfer(tmp_path, boxes):
    broker = Broker(tmp_path / "broker", persistence=False).start()
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    try:
        box, uid = slow_transfer_half_way(boxes, tmp_path, broker.mqtt_config(), hub)
        broker.kill()  # everything the broker held in memory is gone
        time.sleep(3)
        broker.start()
        t = finish_and_check(box, hub, uid)
        assert t["duplicates"] <= 2 * SLOW_WINDOW, t
    finally:
        hub.stop()
        broker.stop()


SLOW_WINDOW = 8  # the default [sync] window


def test_hub_killed_mid_transfer(tmp_path, broker, boxes):
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    try:
        box, uid = slow_transfer_half_way(boxes, tmp_path, broker.mqtt_config(), hub)
        hub.kill()
        time.sleep(3)
        hub.start()
        t = finish_and_check(box, hub, uid)
        assert t["duplicates"] <= SLOW_WINDOW, t
    finally:
        hub.stop()


def test_box_killed_mid_transfer(tmp_path, broker, hub, boxes):
    box, uid = slow_transfer_half_way(boxes, tmp_path, broker.mqtt_config(), hub)
    held_before = hub_transfers(hub, uid)[0]["chunks_held"]
    box.kill()
    box.start()
    t = finish_and_check(box, hub, uid)
    assert t["duplicates"] <= SLOW_WINDOW, t
    # the restarted box resumed: it did not send the study again from the start
    (bt,) = box.api(f"/api/studies/{uid}")["transfers"]
    assert bt["chunks_sent"] < bt["chunk_count"] + SLOW_WINDOW + 1, bt
    assert held_before > 0


def test_link_cut_longer_than_keepalive(tmp_path, broker, hub, boxes):
    relay = Relay(broker.port).start()
    try:
        mqtt = {**broker.mqtt_config(), "port": relay.port}  # keepalive 5 s
        box, uid = slow_transfer_half_way(boxes, tmp_path, mqtt, hub)
        relay.cut()
        wait_for(lambda: box.api("/api/sync")["link"] == "down", 20, "the box to see the link down")
        time.sleep(2)
        relay.restore()
        t = finish_and_check(box, hub, uid)
        assert t["duplicates"] <= SLOW_WINDOW, t
        assert "link to the broker lost" in box.log_text()
    finally:
        relay.stop()


# -- priority ----------------------------------------------------------------------------


def test_stat_overtakes_a_routine_backlog(tmp_path, broker, hub, boxes):
    """About 300 MB of routine CT queued first; a STAT study (by the calling AE title
    rule) sent later is whole at the hub first. The bound: at most one window of
    routine chunks (those already handed to MQTT) reaches the hub after the STAT
    manifest and before the last STAT chunk."""
    window = 4
    box = start_box(
        boxes,
        tmp_path / "box",
        broker.mqtt_config(),
        # the lossless order alone (the preview's own: tests/system/test_preview.py)
        sync={
            "max_bytes_per_second": 2_000_000,
            "pixel_effort": 0,
            "window": window,
            "preview": "off",
        },  # fmt: skip
        stat={"calling_ae_titles": ["EMERGENCY"]},
    )
    routine, r_uid = make_study(tmp_path, "routine", 600)
    assert sum(p.stat().st_size for p in routine) > 300e6
    storescu(box.dicom_port, routine)
    wait_for(lambda: midway(hub, r_uid), 120, "the routine transfer under way")
    stat_files, s_uid = make_study(tmp_path, "stat", 8, src="MR2_UNCR.dcm")
    storescu(box.dicom_port, stat_files, aet="EMERGENCY")
    assert box.api(f"/api/studies/{s_uid}")["priority"] == "stat"
    seen_at_stat_manifest = None
    while True:
        rows = {t["study_uid"]: t for t in hub_transfers(hub)}
        if s_uid in rows and seen_at_stat_manifest is None:
            seen_at_stat_manifest = rows[r_uid]["chunks_held"]
        if s_uid in rows and rows[s_uid]["state"] == "verified":
            routine_after = rows[r_uid]["chunks_held"]
            break
        time.sleep(0.02)
    assert rows[r_uid]["state"] != "verified", "the routine study finished first"
    assert routine_after - seen_at_stat_manifest <= window + 1, (
        seen_at_stat_manifest,
        routine_after,
    )
    assert_same_at_hub(box, hub, s_uid)


def test_a_person_raises_priority(tmp_path, broker, hub, boxes):
    box = start_box(
        boxes,
        tmp_path / "box",
        broker.mqtt_config(),
        sync={"window": 2, "max_bytes_per_second": 1_000_000, "pixel_effort": 0},
    )
    first, a_uid = make_study(tmp_path, "a", 40)
    second, b_uid = make_study(tmp_path, "b", 6)
    storescu(box.dicom_port, first)
    storescu(box.dicom_port, second)
    wait_for(lambda: midway(hub, a_uid), 60, "study a under way")
    r = box.api(
        f"/api/studies/{b_uid}/priority", {"priority": "stat", "reason": "<b>chest pain</b>"}
    )
    assert r["priority"] == "stat"
    study = box.api(f"/api/studies/{b_uid}")
    assert study["priority"] == "stat" and study["priority_reason"] == "<b>chest pain</b>"
    wait_for(lambda: delivered(box, b_uid), 60, "study b delivered")
    assert box_state(box, a_uid) != "delivered"
    # bad requests get a reason; unknown studies 404
    import urllib.error

    for path, body, code in (
        (f"/api/studies/{b_uid}/priority", {"priority": "urgent"}, 400),
        ("/api/studies/1.2.3.4/priority", {"priority": "stat"}, 404),
    ):
        with pytest.raises(urllib.error.HTTPError) as e:
            box.api(path, body)
        assert e.value.code == code


# -- retention ---------------------------------------------------------------------------


def test_retention_purges_only_verified_oldest_first(tmp_path, broker, boxes, small_disk):
    import shutil

    disk = small_disk(48)
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config(), data_dir=disk / "data")
    a, a_uid = make_study(tmp_path, "a", 6)
    b, b_uid = make_study(tmp_path, "b", 6)
    storescu(box.dicom_port, a)
    wait_for(lambda: delivered(box, a_uid), 40, "a delivered")
    storescu(box.dicom_port, b)
    wait_for(lambda: delivered(box, b_uid), 40, "b delivered")
    hub.stop()  # from here on nothing is verified
    box.stop()
    study_bytes = sum(p.stat().st_size for p in a)
    free = shutil.disk_usage(disk).free
    # room for one more study above the reserve, not two; nothing new gets packed
    reserve = free - int(1.5 * study_bytes)
    boxes.remove(box)
    box = Box(
        box.workdir,
        mqtt=broker.mqtt_config(),
        data_dir=disk / "data",
        reserve_bytes=reserve,
        quiet_seconds=3600,
    )
    boxes.append(box.start())
    c, c_uid = make_study(tmp_path, "c", 6)
    d, d_uid = make_study(tmp_path, "d", 6)
    e, _ = make_study(tmp_path, "e", 6)
    f, _ = make_study(tmp_path, "f", 6)
    storescu(box.dicom_port, c)
    storescu(box.dicom_port, d)  # needs a purge: a goes (delivered first)
    assert box_state(box, a_uid) == "purged" and box_state(box, b_uid) == "delivered"
    storescu(box.dicom_port, e)  # b goes
    assert box_state(box, b_uid) == "purged"
    r = storescu(box.dicom_port, f, check=False)  # nothing verified is left: refused
    assert "Refused: OutOfResources" in r.stderr  # 0xA700
    assert len(acked_files(r.stderr)) < len(f)
    purges = box.api("/api/purges")["purges"]
    assert [p["study_uid"] for p in reversed(purges)] == [a_uid, b_uid]
    assert all("reserve" in p["reason"] for p in purges)
    for uid, files in ((c_uid, c), (d_uid, d)):  # unverified: every one kept
        study = box.api(f"/api/studies/{uid}")
        assert study["state"] != "purged" and study["instance_count"] == len(files)
        for inst in study["instances"]:
            path = box.data_dir / "objects" / inst["sha256"][:2] / f"{inst['sha256']}.dcm"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == inst["sha256"]


def test_retention_days(tmp_path, broker, hub, boxes):
    from datetime import UTC, datetime, timedelta

    from edge.store import Store

    box = start_box(boxes, tmp_path / "box", broker.mqtt_config())
    a, a_uid = make_study(tmp_path, "a", 3)
    storescu(box.dicom_port, a)
    wait_for(lambda: delivered(box, a_uid), 40, "a delivered")
    a_bytes = box.api(f"/api/studies/{a_uid}")["bytes"]
    hub.stop()
    b, b_uid = make_study(tmp_path, "b", 3)
    storescu(box.dicom_port, b)
    box.stop()
    store = Store(box.data_dir)
    try:
        assert store.purge_expired(30, now=datetime.now(UTC) + timedelta(days=29)) == 0
        freed = store.purge_expired(30, now=datetime.now(UTC) + timedelta(days=31))
        assert freed == a_bytes
        states = dict(store.db.execute("SELECT study_uid, state FROM studies").fetchall())
        assert states[a_uid] == "purged" and states[b_uid] != "purged"
        (reason,) = store.db.execute("SELECT reason FROM purges").fetchone()
        assert "30 days" in reason
    finally:
        store.close()
    con = sqlite3.connect(box.data_dir / "index.db")
    assert (
        con.execute("SELECT count(*) FROM instances WHERE study_uid=?", [b_uid]).fetchone()[0] == 3
    )
    con.close()


# -- TLS ---------------------------------------------------------------------------------


def test_tls_with_client_certificates_and_passwords(tmp_path, boxes):
    from devkit.broker import make_certs

    certs = make_certs(tmp_path / "certs")
    broker = Broker(
        tmp_path / "broker", tls_dir=certs, users={"test-box": "box-pw", "hub": "hub-pw"}
    ).start()
    hub = Hub(
        tmp_path / "hub", {**broker.mqtt_config("hub"), "username": "hub", "password": "hub-pw"}
    ).start()
    try:
        mqtt = {**broker.mqtt_config("box"), "username": "test-box", "password": "box-pw"}
        box = start_box(boxes, tmp_path / "box", mqtt)
        files, uid = make_study(tmp_path, "study", 3)
        storescu(box.dicom_port, files)
        wait_for(lambda: delivered(box, uid), 40, "delivered over TLS")
        assert_same_at_hub(box, hub, uid)
        assert "(TLS)" in box.log_text()
        # a box with a wrong password is refused, says why, and keeps its studies
        bad = start_box(boxes, tmp_path / "bad", {**mqtt, "password": "wrong"}, box_id="other-box")
        storescu(bad.dicom_port, files[:1])
        wait_for(lambda: "refused" in (bad.api("/api/sync")["last_error"] or ""), 20, "a refusal")
        assert bad.api("/api/sync")["link"] == "down"
        (study,) = bad.api("/api/studies")["studies"]
        assert study["state"] != "delivered" and study["instances"] == 1
        # and one without a client certificate cannot even open the connection
        nocert = {k: v for k, v in mqtt.items() if k not in ("cert_file", "key_file")}
        third = start_box(boxes, tmp_path / "nocert", nocert, box_id="third-box")
        wait_for(
            lambda: "before accepting the box" in (third.api("/api/sync")["last_error"] or ""),
            20,
            "a TLS refusal",
        )
        assert third.api("/api/sync")["link"] == "down"
    finally:
        hub.stop()
        broker.stop()


# -- hostile messages -------------------------------------------------------------------


def test_hub_refuses_forged_and_malformed_messages(tmp_path, broker, hub, boxes):
    """Garbage, forged chunks, another box's transfer, a chunk past the end, a huge
    status: each is refused and logged, the hub carries on, and a real study that was
    under way arrives whole."""
    import json

    import paho.mqtt.client as mqtt
    import zstandard

    from wire import frames

    box = start_box(
        boxes,
        tmp_path / "box",
        broker.mqtt_config(),
        sync={**SLOW, "max_bytes_per_second": 3_000_000},
    )
    files, uid = make_study(tmp_path, "study", 20)
    storescu(box.dicom_port, files)
    wait_for(lambda: midway(hub, uid), 60, "the transfer under way")
    (t,) = hub_transfers(hub, uid)
    tid, last = t["transfer_id"], t["chunk_count"] - 1  # not held yet

    evil = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="evil", protocol=mqtt.MQTTv5)
    evil.connect("127.0.0.1", broker.port)
    evil.loop_start()
    up = lambda box_id, leaf: frames.topic(box_id, leaf)  # noqa: E731
    payloads = [
        (up("test-box", frames.UP_MANIFEST), b"not json at all"),
        (up("test-box", frames.UP_MANIFEST), json.dumps({"schema": 1, "box_id": "x"}).encode()),
        # a compressed manifest made to inflate past the ceiling, and a damaged one
        (up("test-box", frames.UP_MANIFEST), zstandard.compress(b"{" * (17 << 20))),
        (up("test-box", frames.UP_MANIFEST), frames.ZSTD_MAGIC + b"\xff" * 64),
        (up("test-box", frames.UP_CHUNK), b"garbage"),
        # a forged chunk for the real transfer: an index not held yet, wrong bytes
        (up("test-box", frames.UP_CHUNK), frames.encode_chunk(tid, last, b"\0" * 65536)),
        (up("test-box", frames.UP_CHUNK), frames.encode_chunk(tid, 10**6, b"x")),
        # another box may not touch this box's transfer
        (up("mallory", frames.UP_CHUNK), frames.encode_chunk(tid, 1, b"x" * 65536)),
        (up("test-box", frames.UP_CHUNK), frames.encode_chunk("no-such-transfer", 0, b"x")),
        (up("mallory", frames.STATUS), b"{" * 100_000),
        (up("mallory", frames.STATUS), b"<script>alert(1)</script>"),
        ("radsetu/v1/../../etc/up/chunk", b"x"),
    ]
    for topic, payload in payloads:
        evil.publish(topic, payload, qos=1).wait_for_publish(5)
    evil.loop_stop()
    evil.disconnect()

    finish_and_check(box, hub, uid)
    log = hub.log_text()
    assert "refused a message" in log
    assert "compressed manifest inflates past" in log
    assert "compressed manifest not readable" in log
    assert "sha256 mismatch" in log
    assert "which is box test-box's" in log
    boxes_at_hub = {b["box_id"]: b for b in hub.api("/api/boxes")["boxes"]}
    assert boxes_at_hub["mallory"]["rejected"] >= 2
    assert boxes_at_hub["test-box"]["rejected"] >= 4
