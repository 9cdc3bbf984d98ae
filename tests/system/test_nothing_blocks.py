"""One bad instance never stops its study, on a real box, Mosquitto and hub: a pixel
coder that gives up falls back to zstd and says so in the transfer's figures; a file
damaged in the box's store is held (shown on the box, the fleet dashboard and
/metrics) while the rest of its study goes, and comes back when the modality sends it
again."""

from __future__ import annotations

import urllib.request

import pydicom

from devkit.corpus import CORPUS
from tests.conftest import storescu, wait_for
from tests.helpers import assert_same_at_hub, delivered, hub_study, make_study, start_box

# three real Siemens MR slices, 160 x 160 in 16-bit words, values 0-25, 0-9 and 0-6:
# the files libjxl refused as 16-bit samples
HEUDICONV = CORPUS / "unpacked" / "heudiconv-1.5.1"
FEW_BITS = ["01-anat-scout/0001.dcm", "Phoenix/01+AA/01+AA+00001.dcm", "phantom.dcm"]


def metrics(hub) -> str:  # type: ignore[no-untyped-def]
    req = urllib.request.Request(
        f"http://127.0.0.1:{hub.web_port}/metrics",
        headers={"Authorization": f"Bearer {hub.token}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def send_few_bit_slices(box, hub) -> list:  # type: ignore[no-untyped-def,type-arg]
    """Send the three slices with storescu; each study arrives whole at the hub."""
    files = [HEUDICONV / name for name in FEW_BITS]
    storescu(box.dicom_port, files)
    studies = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    for uid in studies:
        wait_for(lambda uid=uid: delivered(box, uid), 60, f"study {uid} delivered")
        assert_same_at_hub(box, hub, uid)
    return files


def test_a_coder_that_gives_up_costs_nothing_but_ratio(tmp_path, broker, hub, boxes):
    # a coder given a millionth of a second times out on every instance: each one goes
    # as zstd, the study arrives whole, and the figures say why
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config(), sync={"coder_seconds": 0.000001})
    files = send_few_bit_slices(box, hub)
    at_box = box.api("/api/transfers")["transfers"]
    assert sum(t["coder_fallbacks"] for t in at_box) == len(files)
    reasons = [r for t in at_box for r in t["coder_fallback_reasons"].values()]
    assert reasons and all("took longer than" in r or "off for the rest" in r for r in reasons)
    at_hub = hub.api("/api/transfers")["transfers"]
    assert sum(t["coder_fallbacks"] for t in at_hub) == len(files)
    assert "without the pixel coder" in box.log_text()


def test_the_same_files_go_through_the_coder(tmp_path, broker, hub, boxes):
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config())
    send_few_bit_slices(box, hub)
    assert sum(t["coder_fallbacks"] for t in box.api("/api/transfers")["transfers"]) == 0


def test_a_damaged_file_is_held_and_the_rest_goes(tmp_path, broker, hub, boxes):
    box = start_box(
        boxes,
        tmp_path / "box",
        broker.mqtt_config(),
        quiet_seconds=4,
        sync={"status_seconds": 1},
    )
    files, uid = make_study(tmp_path, "ct", 3)
    storescu(box.dicom_port, files)
    instances = wait_for(
        lambda: (s := box.api(f"/api/studies/{uid}")["instances"]) and len(s) == 3 and s,
        10,
        "the box to keep 3 instances",
    )
    # the card fails under one file before the study is packed
    victim = instances[1]
    path = box.data_dir / "objects" / victim["sha256"][:2] / f"{victim['sha256']}.dcm"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    wait_for(lambda: len(hub_study(hub, uid)) == 2, 60, "the other two at the hub")
    study = box.api(f"/api/studies/{uid}")
    (held,) = study["held"]
    assert held["sop_instance_uid"] == victim["sop_instance_uid"]
    assert "damaged" in held["reason"] and study["state"] != "delivered"
    fleet = wait_for(
        lambda: (
            (f := hub.api("/api/fleet")) and any(a["kind"] == "held" for a in f["alerts"]) and f
        ),
        30,
        "the held alert on the dashboard",
    )
    (alert,) = [a for a in fleet["alerts"] if a["kind"] == "held"]
    assert victim["sop_instance_uid"] in alert["text"] and "damaged" in alert["text"]
    assert 'radsetu_box_held_instances{box="test-box"} 1.0' in metrics(hub)
    # the modality sends the study again: the box puts the kept bytes back and sends them
    storescu(box.dicom_port, files)
    wait_for(lambda: delivered(box, uid), 60, "the whole study delivered")
    assert_same_at_hub(box, hub, uid)
    assert box.api(f"/api/studies/{uid}")["held"] == []
    wait_for(
        lambda: not any(a["kind"] == "held" for a in hub.api("/api/fleet")["alerts"]),
        30,
        "the alert to clear",
    )
