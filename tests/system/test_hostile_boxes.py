"""One box against the hub's shared ingest (issue 14, points 1 and 5), on a real
Mosquitto and hub: malformed messages from one box are refused, counted and dropped
at once, another box's messages are not held up behind them, and the fleet dashboard
keeps showing every box."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt

from tests.conftest import wait_for
from wire import frames


def publish_as(broker, box_id: str, messages: list[tuple[str, bytes]]) -> None:  # type: ignore[no-untyped-def]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=box_id, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    for leaf, payload in messages:
        c.publish(frames.topic(box_id, leaf), payload, qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def test_one_box_s_bad_messages_delay_no_other_box(broker, hub):
    bad = [
        (frames.STATUS, json.dumps({"box_id": "mallory", "backlog_bytes": {"x": 1}}).encode()),
        (frames.STATUS, json.dumps({"box_id": "mallory", "disk_free": -5}).encode()),
        (frames.UP_REPORT_ACK, json.dumps({"report_id": "r1", "version": 2**70}).encode()),
        (frames.UP_STUDY, json.dumps({"study_uid": "1.2", "priority": ["stat"]}).encode()),
    ] * 3
    publish_as(broker, "mallory", bad)
    good = {"box_id": "good-box", "online": True, "backlog_studies": 2, "backlog_bytes": 1000}
    publish_as(broker, "good-box", [(frames.STATUS, json.dumps(good).encode())])
    # the hub used to retry each bad message with sleeps (about 25 s each) on the one
    # worker every box shares; now the good box's status is there as soon as it is read
    boxes = wait_for(
        lambda: (
            {b["box_id"]: b for b in hub.api("/api/boxes")["boxes"]}.get("good-box")
            and {b["box_id"]: b for b in hub.api("/api/boxes")["boxes"]}
        ),
        10,
        "the good box's status at the hub",
    )
    assert boxes["good-box"]["status"]["backlog_studies"] == 2
    fleet = hub.api("/api/fleet")  # one odd status must not blind the dashboard
    rows = {b["box_id"]: b for b in fleet["boxes"]}
    assert rows["good-box"]["backlog_bytes"] == 1000
    mallory = wait_for(
        lambda: (
            (
                r := next(
                    (b for b in hub.api("/api/boxes")["boxes"] if b["box_id"] == "mallory"), None
                )
            )
            and r["rejected"] >= len(bad)
            and r
        ),
        10,
        "every bad message counted against its box",
    )
    assert mallory["status"].get("backlog_bytes") is None  # nothing of it was kept
    assert "attempt 2 of" not in hub.log_text()


def test_the_hub_holds_at_most_its_receive_maximum_in_memory(broker, tmp_path):
    """However fast one box publishes, the broker gives a hub ingest process no more
    than RECEIVE_MAXIMUM messages it has not PUBACKed (it PUBACKs each once handled),
    so the queue in the hub's memory is bounded. Here the worker never runs: the queue
    fills to the bound and stays there."""
    import threading
    import time

    from hub import config as hub_config
    from hub.mqtt import RECEIVE_MAXIMUM, Ingest
    from hub.store import FileHubStore

    cfg_path = tmp_path / "hub.toml"
    cfg_path.write_text(
        f'data_dir = "{tmp_path / "hub"}"\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
    )
    store = FileHubStore(tmp_path / "hub")
    ingest = Ingest(hub_config.load(cfg_path), store)
    ingest.worker = threading.Thread(target=lambda: None)  # nothing takes from the queue
    ingest.start()
    try:
        wait_for(ingest.client.is_connected, 10, "the hub's connection")
        # its subscription: a chunk at a time until one is in the queue
        probe = [(frames.UP_CHUNK, bytes(1000))]
        wait_for(lambda: publish_as(broker, "flood", probe) or ingest.inbox.qsize(), 10, "a chunk")
        publish_as(broker, "flood", [(frames.UP_CHUNK, bytes(1000))] * (RECEIVE_MAXIMUM * 4))
        wait_for(lambda: ingest.inbox.qsize() >= RECEIVE_MAXIMUM, 10, "the queue to fill")
        time.sleep(1)
        # the hub's own bound, below Mosquitto's default of 20 in flight per client
        assert ingest.inbox.qsize() == RECEIVE_MAXIMUM
    finally:
        ingest.client.disconnect()
        ingest.client.loop_stop()
        store.close()
