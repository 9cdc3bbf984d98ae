"""A hub rebuilt on an empty disk gets the box's delivered studies again, through
``radsetu edge resend``, on a real Mosquitto with the box serving all along."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.conftest import storescu, wait_for
from tests.helpers import assert_same_at_hub, delivered, hub_study, make_study, start_box


def resend(box, *args: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "radsetu", "edge", "resend", *args, "--config", str(box.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_hub_rebuilt_on_an_empty_disk_gets_the_delivered_studies_again(
    tmp_path, broker, hub, boxes
):
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
    for uid in uids:
        wait_for(lambda uid=uid: delivered(box, uid), 60, f"{uid} delivered again")
        wait_for(lambda uid=uid: hub_study(hub, uid), 30, f"{uid} at the rebuilt hub")
        assert_same_at_hub(box, hub, uid)
    transfers = box.api("/api/transfers")["transfers"]
    assert sorted(t["state"] for t in transfers) == ["verified"] * 5
