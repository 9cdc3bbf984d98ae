"""A STAT study's lossy preview at the hub (both index engines): shown, marked lossy and
held from signing until the lossless instances arrive and replace it; a preview that
comes after its lossless instance is dropped."""

from __future__ import annotations

import hashlib
import io
import time

import pydicom
import pytest

from common import preview
from devkit.corpus import MULTI_FRAME_MR, corpus_file, data_file, head_ct_slices
from hub import fleet, reading, reports
from hub.errors import HubError
from hub.ingest import finished_with, take_chunk, take_manifest
from hub.store import FileHubStore
from tests.conftest import pdf_text
from wire import layered
from wire.codec import Packer, pack_bytes
from wire.manifest import Priority

CT = head_ct_slices()[30].read_bytes()
DS = pydicom.dcmread(io.BytesIO(CT))
STUDY, SOP = str(DS.StudyInstanceUID), str(DS.SOPInstanceUID)


def arrive(store: FileHubStore, tid: str, data: bytes, lossy: bool) -> None:
    """As `hub import` takes a transfer: no acks of others."""
    acks = send(store, tid, data, lossy, take=lambda *a: [take_chunk(*a)])
    assert acks[0]["verified"] is True


def shown(store: FileHubStore) -> list[tuple[int, bytes]]:
    rows = store.db.execute(
        "SELECT lossy, path FROM shown_instances WHERE study_uid=?", [STUDY]
    ).fetchall()
    return [(lossy, store.blobs.get(path)) for lossy, path in rows]


def test_an_image_whose_preview_would_be_most_of_its_lossless_coding_gets_none():
    """pydicom-data's enhanced CT codes losslessly at about 10:1 (JPEG XL, what the box
    sends without a preview, at 12.8:1): at CT's 12:1 its preview would be 83 % of the
    lossless coding, larger than the lossless record, and bring reading no sooner."""
    with pytest.raises(preview.NoPreview, match="83% of its lossless coding"):
        preview.make(data_file("eCT_Supplemental.dcm").read_bytes(), {"CT": 12.0})
    made = preview.make(data_file("eCT_Supplemental.dcm").read_bytes(), {"CT": 40.0})
    assert made.rest is not None  # at a larger ratio it is worth sending
    assert preview.make(CT, {"CT": 12.0}).rest is not None  # a head CT slice: 35 %


def test_a_preview_is_shown_lossy_then_replaced_by_its_lossless_instance(tmp_path):
    store = FileHubStore(tmp_path / "hub")
    made = preview.make(CT, {"CT": 12.0})
    assert 10 <= made.ratio <= 12.0 * 1.02
    arrive(store, "p1", made.data, lossy=True)

    ((lossy, data),) = shown(store)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert lossy == 1 and ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == preview.METHOD
    assert float(ds.LossyImageCompressionRatio) == pytest.approx(made.ratio, abs=0.01)
    # every HU within a few units of the original's, through the moved intercept
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    hu0 = DS.pixel_array * float(DS.RescaleSlope) + float(DS.RescaleIntercept)
    assert abs(hu - hu0).mean() < 4 and abs(hu - hu0).max() < 80
    row = reading.reading_study(store, STUDY)
    assert row["preview_ratio"] == 12.0 and row["priority"] == "stat"
    assert reading.preview_of(store, STUDY) == "JPEG 2000, up to 12:1"
    assert store.study(STUDY) == []  # /api/studies lists lossless instances only

    # drafting goes; signing waits for the lossless images
    draft = reports.create_draft(store, STUDY, {"findings": "bleed", "radiologist": "dr a"})
    with pytest.raises(HubError, match="lossy preview") as refused:
        reports.sign(store, draft["report_id"])
    assert refused.value.status == 409

    arrive(store, "l1", CT, lossy=False)
    assert shown(store) == [(0, CT)]
    assert store.db.execute("SELECT count(*) FROM instances WHERE lossy=1").fetchone()[0] == 0
    assert not list((tmp_path / "hub" / "objects").rglob(f"*{_sha(made.data)}*"))
    assert reading.reading_study(store, STUDY)["preview_ratio"] is None
    signed = reports.sign(store, draft["report_id"])
    assert signed["state"] == "signed" and signed["on_preview"] is None

    # a preview that comes after its lossless instance changes nothing
    arrive(store, "p2", made.data, lossy=True)
    assert shown(store) == [(0, CT)]
    assert reading.preview_of(store, STUDY) is None
    store.close()


def test_signing_on_the_preview_when_the_hub_allows_it_says_so(tmp_path):
    store = FileHubStore(tmp_path / "hub")
    arrive(store, "p1", preview.make(CT, {"CT": 12.0}).data, lossy=True)
    draft = reports.create_draft(store, STUDY, {"findings": "bleed", "radiologist": "dr a"})
    signed = reports.sign(store, draft["report_id"], on_preview=True)
    assert signed["on_preview"] == "JPEG 2000, up to 12:1"
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(reports.render_pdf(store, signed))
    text = " ".join(pdf_text(pdf).split())
    assert "Read on a lossy preview: JPEG 2000, up to 12:1; the lossless images had not" in text
    store.close()


def take_chunk_acks(store: FileHubStore, tid: str, i: int, c: bytes, source: str) -> list[dict]:
    """As the hub's MQTT side answers a chunk: its ack, then those it finished."""
    ack = take_chunk(store, tid, i, c, source)
    return [ack, *finished_with(store, ack, source)]


def send(store: FileHubStore, tid: str, data: bytes, lossy: bool = True,
         take=take_chunk_acks) -> list[dict]:  # fmt: skip
    """The acks of the last chunk: its own, then those of transfers it finished."""
    extra = {"preview": {"method": preview.METHOD, "ratio": 12.0, "of": 1}} if lossy else {}
    m, chunks = pack_bytes([(SOP, data)], chunk_size=1 << 14, transfer_id=tid, pixel_effort=0,
                           box_id="box-1", study_uid=STUDY, priority=Priority.STAT,
                           extra=extra)  # fmt: skip
    take_manifest(store, m.to_json(), "test")
    for i, c in enumerate(chunks):
        acks = take(store, tid, i, c, "test")
    return acks


def send_rest(store: FileHubStore, tid: str, rest: bytes) -> tuple[bytes, dict]:
    p = Packer(box_id="box-1", study_uid=STUDY, transfer_id=tid, priority=Priority.STAT,
               chunk_size=1 << 14)  # fmt: skip
    p.add_record(SOP, "dicom-j2k-rest", rest, len(CT), _sha(CT))
    m, chunks = p.finish()
    take_manifest(store, m.to_json(), "test")
    for i, c in enumerate(chunks):
        ack = take_chunk(store, tid, i, c, "test")
    return m.to_json(), ack


def test_the_lossless_transfer_sends_only_what_completes_the_preview(tmp_path):
    store = FileHubStore(tmp_path / "hub")
    made = preview.make(CT, {"CT": 12.0})
    assert made.rest is not None and len(made.rest) < len(CT) / 3
    send(store, "p1", made.data)
    _, ack = send_rest(store, "r1", made.rest)
    assert ack["verified"] is True
    kinds = {t["transfer_id"]: t["kind"] for t in store.transfers()}
    assert kinds == {"p1": "preview", "r1": "lossless"}  # as /api/transfers shows them
    assert shown(store) == [(0, CT)]  # the original file, byte for byte
    assert store.db.execute("SELECT count(*) FROM instances WHERE lossy=1").fetchone()[0] == 0
    store.close()


def test_a_rest_that_comes_before_its_preview_waits_for_it(tmp_path):
    store = FileHubStore(tmp_path / "hub")
    made = preview.make(CT, {"CT": 12.0})
    manifest, ack = send_rest(store, "r1", made.rest)
    # every chunk is in, and nothing is asked again: it waits for the preview
    assert ack["verified"] is False and "resend" not in ack
    assert store.waiting_transfers("box-1", STUDY) == ["r1"]
    assert shown(store) == []
    acks = send(store, "p1", made.data)
    # the chunk that verified the preview finished the rest too; its ack goes with it
    assert [(a["transfer_id"], a["verified"]) for a in acks] == [("p1", True), ("r1", True)]
    assert shown(store) == [(0, CT)] and store.waiting_transfers("box-1", STUDY) == []
    assert take_manifest(store, manifest, "test")["verified"] is True
    store.close()


def test_a_rest_whose_preview_never_comes_is_shown_stalled(tmp_path, monkeypatch):
    store = FileHubStore(tmp_path / "hub")
    store.put_box_status("box-1", {"disk_free": 50e9}, True)
    decoded = []
    real = layered.decode_rest
    monkeypatch.setattr(layered, "decode_rest", lambda *a: decoded.append(1) or real(*a))
    rest = preview.make(CT, {"CT": 12.0}).rest  # checked by decoding it once
    decoded.clear()
    manifest, _ = send_rest(store, "r1", rest)
    (before,) = store.db.execute("SELECT updated FROM transfers").fetchone()
    # announced again and again, it is still the same stall (not a fresh transfer), and
    # no rest is decoded while a preview it completes is not held
    for _ in range(3):
        assert take_manifest(store, manifest, "test")["verified"] is False
    assert store.db.execute("SELECT updated FROM transfers").fetchone() == (before,)
    assert decoded == []
    cfg = {"offline_seconds": 600, "backlog_growth_seconds": 1800, "low_disk_bytes": 1,
           "stall_seconds": 900}  # fmt: skip
    (alert,) = fleet.fleet(store, cfg, time.time() + 1000)["alerts"]
    assert alert["kind"] == "stalled_transfer" and "waits for the preview" in alert["text"]
    store.close()


def test_a_rest_whose_images_came_whole_instead_is_done(tmp_path):
    """The box gave up waiting for the hub to verify its rest records and sent the
    images whole: the waiting transfer is done, its chunks go, and no stall stays."""
    store = FileHubStore(tmp_path / "hub")
    store.put_box_status("box-1", {"disk_free": 50e9}, True)
    manifest, _ = send_rest(store, "r1", preview.make(CT, {"CT": 12.0}).rest)
    assert store.waiting_transfers("box-1", STUDY) == ["r1"]
    acks = send(store, "w1", CT, lossy=False)
    assert [(a["transfer_id"], a["verified"]) for a in acks] == [("w1", True), ("r1", True)]
    assert shown(store) == [(0, CT)] and store.waiting_transfers("box-1", STUDY) == []
    assert not [p for p in (store.root / "chunks").rglob("*") if p.is_file()]
    cfg = {"offline_seconds": 600, "backlog_growth_seconds": 1800, "low_disk_bytes": 1,
           "stall_seconds": 900}  # fmt: skip
    assert fleet.fleet(store, cfg, time.time() + 1000)["alerts"] == []
    assert take_manifest(store, manifest, "test")["verified"] is True
    store.close()


def test_a_waiting_rest_is_finished_when_its_manifest_comes_again(tmp_path):
    store = FileHubStore(tmp_path / "hub")
    made = preview.make(CT, {"CT": 12.0})
    manifest, _ = send_rest(store, "r1", made.rest)
    arrive(store, "p1", made.data, lossy=True)  # as `hub import` takes it: no ack of r1
    assert store.waiting_transfers("box-1", STUDY) == ["r1"]
    assert take_manifest(store, manifest, "test")["verified"] is True  # the box's reconnect
    assert shown(store) == [(0, CT)]
    store.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_multi_frame_image_is_rebuilt_from_its_preview_and_rest(tmp_path):
    """An MR of three frames: the lossless transfer carries a rest for each frame, and
    the hub shows the original file, byte for byte."""
    data = corpus_file(MULTI_FRAME_MR).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    made = preview.make(data, {"MR": 24.0})
    assert made.rest is not None and len(made.rest) < len(data) / 10
    store = FileHubStore(tmp_path / "hub")
    lossy = {"preview": {"method": preview.METHOD, "ratio": made.ratio, "of": 1}}
    m, chunks = pack_bytes([(sop, made.data)], chunk_size=1 << 14, transfer_id="p1",
                           box_id="box-1", study_uid=study, priority=Priority.STAT,
                           extra=lossy)  # fmt: skip
    p = Packer(box_id="box-1", study_uid=study, transfer_id="r1", priority=Priority.STAT,
               chunk_size=1 << 14)  # fmt: skip
    p.add_record(sop, "dicom-j2k-rest", made.rest, len(data), _sha(data))
    rest_m, rest_chunks = p.finish()
    for manifest, parts in ((m, chunks), (rest_m, rest_chunks)):
        take_manifest(store, manifest.to_json(), "test")
        for i, c in enumerate(parts):
            ack = take_chunk(store, manifest.transfer_id, i, c, "test")
        assert ack["verified"] is True
    rows = store.db.execute(
        "SELECT lossy, path FROM shown_instances WHERE study_uid=?", [study]
    ).fetchall()
    assert [(lossy, store.blobs.get(path)) for lossy, path in rows] == [(0, data)]
    store.close()
