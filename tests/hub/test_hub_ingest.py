"""Hub ingest on a real store: chunks in any order, duplicates, forgeries, restarts."""

import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

from devkit.corpus import data_file, pydicom_file, replicate
from hub.ingest import take_chunk, take_manifest
from hub.store import FileHubStore
from wire.codec import pack_bytes
from wire.manifest import Priority

META = dict(box_id="box-1", study_uid="1.2.3", priority=Priority.ROUTINE)


@pytest.fixture
def study():
    files = [data_file("693_UNCI.dcm"), pydicom_file("CT_small.dcm"), data_file("MR2_UNCR.dcm")]
    inst = [(f"1.2.3.{i}", f.read_bytes()) for i, f in enumerate(files)]
    m, chunks = pack_bytes(inst, chunk_size=32 * 1024, transfer_id="t1", pixel_effort=3, **META)
    return dict(inst), m, chunks


def stored(store):
    return {
        r["sop_instance_uid"]: (
            store.root / "objects" / r["sha256"][:2] / f"{r['sha256']}.dcm"
        ).read_bytes()
        for s in store.studies()
        for r in store.study(s["study_uid"])
    }


def test_chunks_in_any_order_with_duplicates_forgeries_and_restarts(tmp_path, study):
    inst, m, chunks = study
    root = tmp_path / "hub"
    store = FileHubStore(root)
    # a chunk before its manifest is not kept: the box is told to send the manifest
    assert take_chunk(store, "t1", 0, chunks[0], "test")["unknown"] is True
    take_manifest(store, m.to_json(), "test")
    order = list(range(len(chunks))) * 2
    random.Random(1).shuffle(order)
    for n, i in enumerate(order):
        forged = bytes([chunks[i][0] ^ 0xFF]) + chunks[i][1:]
        ack = take_chunk(store, "t1", i, forged, "test")
        assert i in ack.get("resend", []) or i in {x for a, b in ack["held"] for x in range(a, b)}
        ack = take_chunk(store, "t1", i, chunks[i], "test")
        if n % 7 == 0:  # the hub restarts: everything comes back from the store
            store.close()
            store = FileHubStore(root)
    assert ack["verified"] is True
    assert stored(store) == inst
    for sop, data in stored(store).items():
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(inst[sop]).hexdigest()
    (t,) = store.transfers()
    assert t["state"] == "verified" and t["chunks_held"] == len(chunks)
    assert not (root / "chunks" / "t1").exists()
    # the same manifest again, or a late duplicate chunk, changes nothing
    assert take_manifest(store, m.to_json(), "test")["verified"] is True
    assert take_chunk(store, "t1", 0, chunks[0], "test")["verified"] is True
    assert stored(store) == inst
    store.close()


def test_a_lying_box_never_gets_a_study_verified(tmp_path):
    real, _ = pack_bytes([("1.2.3.1", b"real" * 500)], transfer_id="t2", **META)
    fake, fchunks = pack_bytes([("1.2.3.1", b"fake" * 500)], transfer_id="t2", **META)
    lie = json.loads(fake.to_json())
    lie["instances"][0]["sha256"] = real.instances[0].sha256
    store = FileHubStore(tmp_path / "hub")
    take_manifest(store, json.dumps(lie).encode(), "test")
    for i, c in enumerate(fchunks):
        ack = take_chunk(store, "t2", i, c, "test")
    assert ack["verified"] is False and ack["resend"]
    assert list(store.studies()) == []
    store.close()


def test_hub_import_of_a_pack_file(tmp_path, another_hub_index):
    files = replicate(data_file("693_UNCI.dcm"), tmp_path / "s", 5)
    py = [sys.executable, "-m", "radsetu"]
    assert (
        subprocess.run(
            [*py, "pack", tmp_path / "s", "-o", tmp_path / "s.pack"], capture_output=True
        ).returncode
        == 0
    )
    r = subprocess.run(
        [*py, "hub", "import", tmp_path / "s.pack", "--data-dir", tmp_path / "hub"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "verified" in r.stdout, r.stderr
    store = FileHubStore(tmp_path / "hub")
    assert set(stored(store).values()) == {f.read_bytes() for f in files}
    store.close()
    data = bytearray((tmp_path / "s.pack").read_bytes())
    data[-10] ^= 1
    (tmp_path / "bad.pack").write_bytes(bytes(data))
    r = subprocess.run(
        [*py, "hub", "import", tmp_path / "bad.pack", "--data-dir", tmp_path / "hub2"],
        capture_output=True,
        text=True,
        env={**os.environ, **another_hub_index()},
    )
    assert r.returncode == 1 and "NOT verified" in r.stderr


def test_hub_serve_answers_the_read_api(tmp_path, study):
    import time
    import urllib.error
    import urllib.request

    from devkit.box import free_port, wait_port
    from devkit.broker import hub_account

    inst, m, chunks = study
    store = FileHubStore(tmp_path / "hub")
    take_manifest(store, m.to_json(), "test")
    for i, c in enumerate(chunks):
        take_chunk(store, "t1", i, c, "test")
    store.close()
    port = free_port()
    cfg = tmp_path / "hub.toml"
    # the ingest child looks for a broker on a port where none listens: a broker that
    # happens to run on this machine's 1883 is not this test's
    cfg.write_text(
        f'data_dir = "{tmp_path / "hub"}"\n[web]\nport = {port}\n[mqtt]\nport = {free_port()}\n'
    )
    token = hub_account(cfg, "script", "admin")
    # the log goes to a file: a pipe nobody reads would stop the hub once it is full
    log = (tmp_path / "hub.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "radsetu", "hub", "serve", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, proc=proc)

        def get(path):
            for _ in range(50):
                try:
                    req = urllib.request.Request(
                        f"http://127.0.0.1:{port}{path}",
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    with urllib.request.urlopen(req) as r:
                        return json.load(r)
                except urllib.error.HTTPError:
                    raise
                except OSError:
                    time.sleep(0.1)
            raise AssertionError("hub did not answer")

        (s,) = get("/api/studies")["studies"]
        assert s["study_uid"] == "1.2.3" and s["instances"] == 3
        detail = get("/api/studies/1.2.3")
        assert {i["sop_instance_uid"]: i["sha256"] for i in detail["instances"]} == {
            k: hashlib.sha256(v).hexdigest() for k, v in inst.items()
        }
        (t,) = get("/api/transfers")["transfers"]
        assert t["state"] == "verified"
        try:
            get("/api/studies/9.9.9")
            raise AssertionError("unknown study answered")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        finally:
            log.close()
    assert proc.returncode == 0, (tmp_path / "hub.log").read_text()[-3000:]


def test_the_hub_writes_an_instance_to_disk_piece_by_piece(tmp_path):
    """A 200 MB instance (zeros: a few KB on the wire) is verified and kept without
    ever being whole in the hub's memory."""
    import tracemalloc

    size = 200 << 20
    m, chunks = pack_bytes([("1.2.3.9", bytes(size))], chunk_size=32 * 1024, transfer_id="big",
                           pixel_effort=0, **META)  # fmt: skip
    store = FileHubStore(tmp_path / "hub")
    take_manifest(store, m.to_json(), "test")
    tracemalloc.start()
    try:
        for i, c in enumerate(chunks):
            take_chunk(store, "big", i, c, "test")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    (row,) = store.study("1.2.3")
    kept = store.root / "objects" / row["sha256"][:2] / f"{row['sha256']}.dcm"
    assert kept.stat().st_size == size
    assert row["sha256"] == hashlib.sha256(bytes(size)).hexdigest()
    assert peak < 32 << 20, f"the hub held {peak >> 20} MiB at once"
    assert list((store.root / "tmp").iterdir()) == []
    store.close()


def test_a_box_has_a_quota_for_transfers_in_progress(tmp_path):
    """Past its quota a box's new transfer is refused for now, and taken once the box's
    other transfers are verified; another box is not affected."""
    from wire.errors import RemoteProtocolError

    data = pydicom_file("CT_small.dcm").read_bytes()

    def transfer(tid: str, box: str = "box-1"):  # type: ignore[no-untyped-def]
        meta = {**META, "box_id": box}
        return pack_bytes([(f"1.2.3.{tid}", data)], chunk_size=1 << 20, transfer_id=tid,
                          pixel_effort=0, **meta)  # fmt: skip

    store = FileHubStore(tmp_path / "hub")
    quota = len(data) * 3 // 2
    (m1, c1), (m2, c2), (m3, _c3) = transfer("11"), transfer("12"), transfer("13", "box-2")
    take_manifest(store, m1.to_json(), "test", quota_bytes=quota)
    with pytest.raises(RemoteProtocolError, match="quota"):
        take_manifest(store, m2.to_json(), "test", quota_bytes=quota)
    take_manifest(store, m3.to_json(), "test", quota_bytes=quota)  # another box: its own
    for i, c in enumerate(c1):
        take_chunk(store, "11", i, c, "test")
    ack = take_manifest(store, m2.to_json(), "test", quota_bytes=quota)  # room again
    assert ack is not None
    for i, c in enumerate(c2):
        take_chunk(store, "12", i, c, "test")
    assert {r["sop_instance_uid"] for r in store.study("1.2.3")} == {"1.2.3.11", "1.2.3.12"}
    store.close()


def test_two_clinics_studies_with_one_uid_stay_apart(tmp_path):
    """Two boxes send studies with the same Study Instance UID (other patients, other
    images): the hub keeps them apart, each with its own images, flags the clash for a
    person, and each study's report goes to the box that sent it, with the UID it
    knows."""
    import time

    from hub import config as hub_config
    from hub import fleet, reading, reports
    from hub.studykeys import conflicts
    from wire.report import decode_report

    store = FileHubStore(tmp_path / "hub")
    sent = {}
    for box, src, tid in (("box-1", data_file("693_UNCI.dcm"), "t1"),
                          ("box-2", pydicom_file("CT_small.dcm"), "t2")):  # fmt: skip
        inst = [(f"1.2.3.{tid[1]}", src.read_bytes())]
        m, chunks = pack_bytes(inst, chunk_size=1 << 20, transfer_id=tid, pixel_effort=0,
                               **{**META, "box_id": box})  # fmt: skip
        take_manifest(store, m.to_json(), "test", box_id=box)
        for i, c in enumerate(chunks):
            take_chunk(store, tid, i, c, "test", box_id=box)
        sent[box] = {inst[0][0]}
    rows = dict(store.db.execute("SELECT study_uid, box_id FROM hub_studies").fetchall())
    assert rows == {"1.2.3": "box-1", "1.2.3~box-2": "box-2"}
    assert {s["study_uid"] for s in reading.worklist(store)} == set(rows)
    assert {r["sop_instance_uid"] for r in store.study("1.2.3")} == sent["box-1"]
    assert {r["sop_instance_uid"] for r in store.study("1.2.3~box-2")} == sent["box-2"]
    assert [(c["first_box"], c["other_box"]) for c in conflicts(store)] == [("box-1", "box-2")]
    alerts = fleet.fleet(store, hub_config.DEFAULTS["alerts"])["alerts"]
    kinds = {(a["box_id"], a["kind"]) for a in alerts}
    assert ("box-2", "uid_conflict") in kinds
    # a report on the second clinic's study goes to that clinic only, with its own UID
    draft = reports.create_draft(store, "1.2.3~box-2", {"findings": "f", "impression": "i",
                                                        "radiologist": "dr"})  # fmt: skip
    reports.sign(store, draft["report_id"], "dr")
    out = reports.due(store, time.time(), 30)
    assert [box for box, _payload in out] == ["box-2"]
    message, _pdf = decode_report(out[0][1])
    assert message["study_uid"] == "1.2.3"
    store.close()
