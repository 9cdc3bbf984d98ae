"""The box's side of a STAT study's preview (edge/previews.py, edge/outbox.py) on a real
store: previews are packed first, in small transfers, and never stand in for the
lossless transfer: a box stopped between the two still packs the lossless study, with
the rests that are whole, and what a stopped preview left in the outbox is cleared at
start-up."""

from __future__ import annotations

import threading

import pydicom
import pytest

from devkit.corpus import head_ct_slices, series_from
from edge import previews
from edge.config import DEFAULTS
from edge.outbox import Outbox, Packed
from edge.packing import PackerLoop
from edge.store import Store
from tests.edge.test_store import keep
from wire.ranges import RangeSet


@pytest.fixture
def outbox(tmp_path):
    store = Store(tmp_path / "data", reserve_bytes=0, quiet_seconds=0)
    files = series_from(head_ct_slices()[20:30], tmp_path / "study", 10)
    for f in files:
        study_uid = keep(store, f).info.study_uid
    (ready,) = store.mark_ready(now_ts=1e12)
    assert ready == study_uid
    store.db.execute("UPDATE studies SET priority='stat'")
    box = Outbox(store, "box-1", dict(DEFAULTS["sync"]))
    yield box, study_uid
    box.close()
    store.close()


def kinds(box: Outbox) -> list[tuple[str, int]]:
    return box.db.execute("SELECT kind, instance_count FROM transfers ORDER BY seq").fetchall()


def test_previews_go_first_in_small_transfers_then_the_lossless_study(outbox):
    box, uid = outbox
    assert previews.wanted(box, uid)
    handed: list[Packed] = []
    made = previews.pack_preview(box, uid, handed.append)
    # 10 slices of about 43 KB each at 12:1: 256 KiB first, then the rest
    assert made == len(handed) == 2 and [k for k, _ in kinds(box)] == ["preview", "preview"]
    assert sum(n for _, n in kinds(box)) == 10 and kinds(box)[0][1] < 10
    for p in handed:
        m = box.manifest(p.transfer_id)
        assert m.preview == {"method": "ISO_15444_1", "ratio": pytest.approx(12, abs=0.3), "of": 10}
    # the study is still to be packed: a preview never carries its instances
    assert box.db.execute("SELECT state FROM studies").fetchone() == ("ready",)
    assert not previews.wanted(box, uid)  # once per study
    lossless = box.pack_study(uid)
    assert lossless is not None and lossless.seq > handed[-1].seq
    assert kinds(box)[-1] == ("lossless", 10)
    m = box.manifest(lossless.transfer_id)
    assert m.follow_up_of is None  # not of a preview
    # each image goes as what completes its preview, not whole again
    assert {e.codec for e in m.instances} == {"dicom-j2k-rest"}
    sent = [box.manifest(p.transfer_id).stream_size for p in handed]
    assert m.stream_size < 0.9 * sum(e.size for e in m.instances) / 4  # a ~4:1 study
    assert sum(sent) + m.stream_size < 1.2 * sum(e.size for e in m.instances) / 4
    assert not box.rests_dir(uid).exists()  # gone once packed


def test_a_preview_that_failed_to_pack_leaves_its_images_whole(outbox, monkeypatch):
    box, uid = outbox
    calls = []

    def failing_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real(*args, **kwargs)

    real = previews._pack
    monkeypatch.setattr(previews, "_pack", failing_second)
    handed: list[Packed] = []
    assert previews.pack_preview(box, uid, handed.append) == 1
    first = {e.sop_instance_uid for e in box.manifest(handed[0].transfer_id).instances}
    lossless = box.manifest(box.pack_study(uid).transfer_id)
    codecs = {e.sop_instance_uid: e.codec for e in lossless.instances}
    # the rests of the batch that went; the others' previews never left the box
    assert {sop for sop, c in codecs.items() if c == "dicom-j2k-rest"} == first
    assert len(codecs) == 10 and len(first) < 10


def test_a_box_stopped_after_its_preview_still_sends_the_lossless_study(outbox, caplog):
    box, uid = outbox
    previews.pack_preview(box, uid, lambda p: None)
    (tid,) = box.db.execute("SELECT transfer_id FROM transfers LIMIT 1").fetchone()
    box.verified(tid, RangeSet([(0, box.manifest(tid).chunk_count)]))
    # the preview verified, the box restarted before its lossless transfer was packed;
    # the power failed as one rest was written: it is cut short
    (box.folder / "0123.preview").mkdir()  # what a stop in the middle of coding leaves
    cut = sorted(box.rests_dir(uid).iterdir())[0]
    cut.write_bytes(cut.read_bytes()[:1000])
    box.clean()
    assert not (box.folder / "0123.preview").exists()
    assert box.next_ready() == uid and not previews.wanted(box, uid)
    packed = box.pack_study(uid)
    assert packed is not None and kinds(box)[-1] == ("lossless", 10)
    # the rests stayed for the study still to be packed; the damaged one's image
    # goes whole, which needs no preview
    codecs = [e.codec for e in box.manifest(packed.transfer_id).instances]
    assert codecs.count("dicom-j2k-rest") == 9
    assert "its preview's rest is damaged" in caplog.text
    # a study delivered leaves no rests behind at the next start
    box.rests_dir(uid).mkdir()
    (box.rests_dir(uid) / "1.0123456789abcdef.rest").write_bytes(b"left over")
    box.db.execute("UPDATE studies SET state='delivered'")
    box.clean()
    assert not box.rests_dir(uid).exists()


def test_a_transfer_of_rests_given_up_goes_again_whole(outbox):
    """``abandon``: the hub never verified the rests (it lacks their previews); the
    study's images are packed again, whole, and the rests' pack file goes. So does a
    transfer whose pack file went missing, found at start-up."""
    box, uid = outbox
    previews.pack_preview(box, uid, lambda p: None)
    rests = box.pack_study(uid)
    assert rests is not None and box.carries_rests(rests.transfer_id)
    pack = (
        box.store.root
        / box.db.execute(
            "SELECT pack_path FROM transfers WHERE transfer_id=?", [rests.transfer_id]
        ).fetchone()[0]
    )
    assert box.pack_study(uid) is None and box.next_ready() is None  # nothing left to pack
    box.abandon(rests.transfer_id, "the hub held it 600 s without its previews")
    assert not pack.exists() and box.next_ready() == uid
    whole = box.pack_study(uid)
    assert whole is not None and not box.carries_rests(whole.transfer_id)
    assert len(box.manifest(whole.transfer_id).instances) == 10
    states = box.db.execute("SELECT kind, state FROM transfers ORDER BY seq").fetchall()
    assert states[-2:] == [("lossless", "abandoned"), ("lossless", "sending")]
    # the same for a pack file lost from the card, at start-up
    box.close()
    (box.store.root / box.db.execute(
        "SELECT pack_path FROM transfers WHERE transfer_id=?", [whole.transfer_id]
    ).fetchone()[0]).unlink()  # fmt: skip
    box.clean()
    again = box.pack_study(uid)
    assert again is not None and len(box.manifest(again.transfer_id).instances) == 10


def test_off_routine_and_all(outbox):
    box, uid = outbox
    box.cfg["preview"] = "off"
    assert not previews.wanted(box, uid)
    box.db.execute("UPDATE studies SET priority='routine'")
    box.cfg["preview"] = "stat"
    assert not previews.wanted(box, uid)
    box.cfg["preview"] = "all"
    assert previews.wanted(box, uid)


def test_a_stat_studys_images_are_previewed_as_they_arrive(tmp_path):
    """``PackerLoop``: while a STAT study is still receiving (far from quiet), each
    full batch of previews goes as soon as its images are in, and the last one after a
    lull of LULL_SECONDS; the lossless transfer waits for the quiet study and carries
    what completes each preview. A second version of a previewed image goes whole."""
    store = Store(tmp_path / "data", reserve_bytes=0, quiet_seconds=3600)
    box = Outbox(store, "box-1", dict(DEFAULTS["sync"]))
    handed: list[Packed] = []
    loop = PackerLoop(box, threading.Event(), handed.append, lambda why: None)
    files = series_from(head_ct_slices()[20:40], tmp_path / "study", 20)

    def arrive(paths):
        for f in paths:
            uid = keep(store, f).info.study_uid
        store.db.execute("UPDATE studies SET priority='stat'")
        return uid

    uid = arrive(files[:8])
    assert loop._stream()  # 8 slices of ~43 KB at 12:1: the first batch (256 KiB) is full
    assert kinds(box) == [("preview", 6)] and len(handed) == 1
    assert not loop._stream()  # the other two wait for more images or a lull
    arrive(files[8:20])
    assert loop._stream() and kinds(box) == [("preview", 6)]  # the 2 MiB batch is not full
    store.db.execute("UPDATE studies SET last_received_ts = last_received_ts - 10")
    assert loop._stream() and kinds(box) == [("preview", 6), ("preview", 14)]
    assert not loop._stream() and not previews.wanted(box, uid)
    assert box.db.execute("SELECT state FROM studies").fetchone() == ("receiving",)
    # a modality sends one image again, other bytes: kept as its second version
    again = pydicom.dcmread(files[3])
    again.PatientComments = "sent again"
    again.save_as(tmp_path / "again.dcm")
    arrive([tmp_path / "again.dcm"])
    store.mark_ready(now_ts=1e12)
    loop.stop_event.wait = lambda _t: loop.stop_event.set()  # one round, then stop
    loop.run()
    *_, lossless = handed
    assert kinds(box)[-1] == ("lossless", 21) and len(handed) == 3
    m = box.manifest(lossless.transfer_id)
    codecs = [e.codec for e in m.instances]
    # what completes the first version's preview; the second version goes whole, with
    # no preview of its own (the hub holds one preview for each SOP Instance UID)
    assert codecs.count("dicom-j2k-rest") == 20
    assert not loop.streams and not list(box.folder.glob("*.preview"))
    box.close()
    store.close()
