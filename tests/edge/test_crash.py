"""SIGKILL at random moments while storescu sends: nothing acknowledged is lost."""

import hashlib
import os
import random
import subprocess

import pytest

from common.dicomfile import read_meta
from devkit.corpus import dataset_bytes, pydicom_file, replicate
from tests.conftest import need, storescu

COUNT = 240
ROUNDS = 3


def check_store_whole(box) -> dict[str, str]:
    """Every file is named by its own SHA-256 and indexed once; returns SOP UID -> sha."""
    files = {p.stem: p for p in (box.data_dir / "objects").rglob("*.dcm")}
    for sha, p in files.items():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == sha, f"{p} is damaged"
    assert list((box.data_dir / "tmp").iterdir()) == [], "a temp file survived the restart"
    indexed = {}
    for s in box.api("/api/studies")["studies"]:
        for i in box.api(f"/api/studies/{s['study_uid']}")["instances"]:
            assert i["sop_instance_uid"] not in indexed, "an instance is indexed twice"
            assert i["flagged"] is None, i["flagged"]
            indexed[i["sop_instance_uid"]] = i["sha256"]
    assert set(indexed.values()) == set(files), "index and files disagree"
    return indexed


@pytest.mark.slow
def test_sigkill_during_storescu_loses_nothing_acknowledged(make_box, tmp_path, wire_copy):
    seed = int(os.environ.get("RADSETU_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"crash test seed {seed} (set RADSETU_CRASH_SEED to repeat)")
    # 240 instances made from a real CT slice (pydicom's CT_small.dcm) with new UIDs
    files = replicate(pydicom_file("CT_small.dcm"), tmp_path / "study", COUNT)
    uid_of = {str(p): read_meta(p.read_bytes()[:65536]).sop_instance_uid for p in files}
    storescu(wire_copy.port, files)  # what storescu puts on the wire, for comparison
    ts = read_meta(files[0].read_bytes()[:65536]).transfer_syntax
    box = make_box("crashbox", quiet_seconds=60)
    box.start()
    acked_ever: set[str] = set()
    for round_no in range(ROUNDS):
        kill_after = rng.randrange(1, COUNT - 10)
        # a short random delay after the chosen ack puts the kill mid-instance too
        delay = rng.random() * 0.01
        proc = subprocess.Popen(
            [
                need("storescu"),
                "-v",
                "-aec",
                "RADSETU",
                "127.0.0.1",
                str(box.dicom_port),
                *map(str, files),
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        acked, current, killed = [], None, False
        for line in proc.stderr:
            if "Sending file: " in line:
                current = line.split("Sending file: ", 1)[1].strip()
            elif "Received Store Response (Success)" in line and current:
                acked.append(current)
                if len(acked) == kill_after and not killed:
                    if delay:
                        import time

                        time.sleep(delay)
                    box.kill()
                    killed = True
        proc.wait()
        assert killed, f"round {round_no}: storescu finished before the kill point"
        box.start()
        indexed = check_store_whole(box)
        for f in acked:
            uid = uid_of[f]
            acked_ever.add(uid)
            assert uid in indexed, f"round {round_no}: acknowledged {uid} was lost"
        for uid in acked_ever:
            stored = box.data_dir / "objects" / indexed[uid][:2] / f"{indexed[uid]}.dcm"
            assert dataset_bytes(stored) == wire_copy(uid, ts)
        print(
            f"round {round_no}: killed after {kill_after} acks (+{delay * 1000:.1f} ms); "
            f"{len(acked)} acked this round, {len(indexed)} stored"
        )
    # sending everything again completes the study, each instance exactly once
    storescu(box.dicom_port, files)
    indexed = check_store_whole(box)
    assert set(indexed) == set(uid_of.values())
    (study,) = box.api("/api/studies")["studies"]
    assert study["instances"] == COUNT
