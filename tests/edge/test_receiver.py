"""The DICOM receiver end to end: dcmtk's storescu/echoscu against a running box."""

import hashlib
import socket
import struct
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from common.dicomfile import build_meta, read_meta
from devkit.box import Box
from devkit.corpus import SAMPLES, dataset_bytes, pydicom_file, sample_path
from tests.conftest import need, storescu, wait_for
from wire import dul


@pytest.fixture(params=["native", "pynetdicom"])
def box(tmp_path: Path, request):
    """Each receiver test runs against both upper layers ([dicom] engine)."""
    b = Box(tmp_path / "box", quiet_seconds=1)
    b.start(env={"RADSETU_DICOM_ENGINE": request.param})
    yield b
    b.stop()


def stored_files(box, by_syntax: bool = False) -> dict:
    """SOP Instance UID (and transfer syntax) -> stored file, read through the API."""
    out = {}
    for s in box.api("/api/studies")["studies"]:
        for i in box.api(f"/api/studies/{s['study_uid']}")["instances"]:
            key = (
                (i["sop_instance_uid"], i["transfer_syntax"])
                if by_syntax
                else (i["sop_instance_uid"])
            )
            out[key] = box.data_dir / "objects" / i["sha256"][:2] / (i["sha256"] + ".dcm")
    return out


def test_echo(box):
    r = subprocess.run(
        [need("echoscu"), "-aec", "RADSETU", "127.0.0.1", str(box.dicom_port)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_real_samples_are_kept_as_sent(box, wire_copy):
    sent = {}
    for origin, name, flags in SAMPLES:
        path = sample_path(origin, name)
        storescu(box.dicom_port, [path], flags)
        storescu(wire_copy.port, [path], flags)
        meta = read_meta(path.read_bytes()[:65536])
        sent[(meta.sop_instance_uid, meta.transfer_syntax)] = path
    stored = stored_files(box, by_syntax=True)
    assert set(stored) == set(sent)
    same_as_file = 0
    for (uid, ts), path in sent.items():
        data = stored[(uid, ts)].read_bytes()
        ours = dataset_bytes(stored[(uid, ts)])
        # byte for byte what was on the wire...
        assert ours == wire_copy(uid, ts), path.name
        # ... which is the file itself wherever storescu did not re-encode it
        same_as_file += ours == dataset_bytes(path)
        # and the API's SHA-256 is the stored file's
        assert hashlib.sha256(data).hexdigest() == stored[(uid, ts)].stem
    # storescu re-encodes most files as it reads them (11 of these 14 here), which is
    # why the wire copy is the reference; the rest match the file on disk exactly
    assert same_as_file >= 1
    studies = box.api("/api/studies")["studies"]
    modalities = {m for s in studies for m in s["modalities"]}
    assert {"CT", "MR", "CR", "US", "NM"} <= modalities
    detail = box.api(f"/api/studies/{studies[0]['study_uid']}")
    inst = detail["instances"][0]
    assert set(inst) >= {"sop_instance_uid", "sha256", "size", "transfer_syntax"}
    assert detail["instance_count"] == len(detail["instances"])


def test_resend_is_a_no_op(box):
    path = sample_path("data", "693_UNCI.dcm")
    storescu(box.dicom_port, [path])
    first = box.api("/api/studies")["studies"]
    storescu(box.dicom_port, [path])
    again = box.api("/api/studies")["studies"]
    assert [s["instances"] for s in again] == [1]
    assert again[0]["bytes"] == first[0]["bytes"]
    assert again[0]["flagged"] == 0


def _scu_send_raw(port: int, file_with_meta: Path) -> int:
    """Send a file's dataset bytes as they are (no re-encoding) with pynetdicom as the
    peer, the way a broken modality would; return the C-STORE status."""
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="BROKEN")
        ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", port, ae_title="RADSETU")
        assert assoc.is_established
        status = assoc.send_c_store(file_with_meta)
        assoc.release()
        return int(status.Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


def _with_dataset(tmp: Path, name: str, dataset: bytes) -> Path:
    p = tmp / name
    p.write_bytes(
        build_meta(CTImageStorage, "1.2.826.0.1.3680043.8.498.1", "1.2.840.10008.1.2.1") + dataset
    )
    return p


def test_hostile_network_input_is_refused_and_harms_nothing(box, tmp_path):
    good = sample_path("data", "693_UNCI.dcm")
    storescu(box.dicom_port, [good])
    before = stored_files(box)
    before_bytes = {u: p.read_bytes() for u, p in before.items()}

    ct = pydicom_file("CT_small.dcm")
    ds_bytes = dataset_bytes(ct)
    truncated = _with_dataset(tmp_path, "trunc.dcm", ds_bytes[: len(ds_bytes) // 2])
    garbage = _with_dataset(tmp_path, "garbage.dcm", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    for bad in (truncated, garbage):
        status = _scu_send_raw(box.dicom_port, bad)
        assert 0xC000 <= status <= 0xCFFF, hex(status)

    # a SOP class the box does not know: refused at association, nothing sent
    odd = pydicom.dcmread(ct)
    odd.SOPClassUID = odd.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5.6.7.8"
    odd_path = tmp_path / "odd.dcm"
    odd.save_as(odd_path)
    r = storescu(box.dicom_port, [odd_path], check=False)
    assert "Received Store Response (Success)" not in r.stderr

    after = stored_files(box)
    assert after.keys() == before.keys()
    assert {u: p.read_bytes() for u, p in after.items()} == before_bytes
    assert list((box.data_dir / "tmp").iterdir()) == []
    log = box.log_text()
    assert "dataset is truncated" in log
    assert "refused" in log
    # the box still serves
    storescu(box.dicom_port, [sample_path("data", "MR2_UNCR.dcm")])


def test_allowed_callers(make_box):
    b = make_box("strict")
    b.config.write_text(
        b.config.read_text().replace("[dicom]\n", '[dicom]\nallowed_callers = ["CT_ROOM1"]\n')
    )
    b.start()
    path = sample_path("data", "693_UNCI.dcm")
    r = storescu(b.dicom_port, [path], aet="INTRUDER", check=False)
    assert r.returncode != 0
    assert b.api("/api/studies")["studies"] == []
    storescu(b.dicom_port, [path], aet="CT_ROOM1")
    assert len(b.api("/api/studies")["studies"]) == 1
    assert "INTRUDER" in b.log_text() and "allowed_callers" in b.log_text()


def test_stat_by_priority_high(box):
    # dcmtk's storescu cannot set the priority; pynetdicom as the peer can
    ae = AE(ae_title="ER_CT")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", box.dicom_port, ae_title="RADSETU")
    status = assoc.send_c_store(pydicom.dcmread(pydicom_file("CT_small.dcm")), priority=1)
    assoc.release()
    assert status.Status == 0
    storescu(box.dicom_port, [sample_path("data", "693_UNCI.dcm")])
    prio = {s["study_uid"]: s["priority"] for s in box.api("/api/studies")["studies"]}
    assert sorted(prio.values()) == ["routine", "stat"]


@pytest.mark.slow
def test_disk_full_gives_out_of_resources(make_box, tmp_path):
    """A real small filesystem (tmpfs): the sender gets 0xA700 once the reserve would
    be crossed; the box keeps serving and nothing stored before is harmed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:  # CI runs as root; a person without root is told plainly
        pytest.fail(f"cannot mount a small tmpfs (needs root): {r.stderr}")
    try:
        b = make_box("full", reserve_bytes=4_000_000)
        b.data_dir = mnt / "data"
        b.config.write_text(
            b.config.read_text().replace(
                f'data_dir = "{tmp_path / "full" / "data"}"', f'data_dir = "{b.data_dir}"'
            )
        )
        b.start()
        mr = sample_path("data", "MR2_UNCR.dcm")  # 2.1 MB each
        from devkit.corpus import replicate

        files = replicate(mr, tmp_path / "many", 12)
        r = storescu(b.dicom_port, files, check=False)
        assert "Refused: OutOfResources" in r.stderr, r.stderr[-800:]
        acked = r.stderr.count("Received Store Response (Success)")
        assert 0 < acked < 12
        kept = stored_files(b)
        assert len(kept) == acked
        for p in kept.values():
            assert hashlib.sha256(p.read_bytes()).hexdigest() == p.stem
        assert "Disk almost full" in b.log_text()
        # still serving: an echo works and a small instance fits within what is left
        r = subprocess.run(
            [need("echoscu"), "-aec", "RADSETU", "127.0.0.1", str(b.dicom_port)],
            capture_output=True,
        )
        assert r.returncode == 0
        b.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _associate(port: int, contexts: list[tuple[int, str, str]]) -> socket.socket:
    """A raw association (no toolkit): the way a broken or hostile peer would talk."""
    rq = struct.pack(">HH", 1, 0) + b"RADSETU".ljust(16) + b"RAW_PEER".ljust(16) + bytes(32)
    rq += dul._item(0x10, dul.APPLICATION_CONTEXT.encode())
    for cid, abstract, ts in contexts:
        sub = dul._item(0x30, abstract.encode()) + dul._item(0x40, ts.encode())
        rq += dul._item(0x20, bytes([cid, 0, 0, 0]) + sub)
    rq += dul._item(0x50, dul._item(0x51, struct.pack(">L", 16384)))
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(dul._pdu(dul.ASSOCIATE_RQ, rq))
    head = _recv(s, 6)
    pdu_type, length = dul.pdu_header(head)
    assert pdu_type == dul.ASSOCIATE_AC
    _recv(s, length)
    return s


def _recv(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _store_command(sop_class: str, sop_uid: str, msg_id: int = 1) -> bytes:
    el = dul._element
    body = el(dul.TAG_AFFECTED_SOP_CLASS, dul._ui(sop_class))
    body += el(dul.TAG_COMMAND_FIELD, dul._us(dul.C_STORE_RQ))
    body += el(dul.TAG_MESSAGE_ID, dul._us(msg_id))
    body += el(dul.TAG_PRIORITY, dul._us(0))
    body += el(dul.TAG_DATASET_TYPE, dul._us(0))
    body += el(dul.TAG_AFFECTED_SOP_INSTANCE, dul._ui(sop_uid))
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def _pdata(cid: int, control: int, data: bytes) -> bytes:
    return dul._pdu(dul.P_DATA, struct.pack(">LBB", len(data) + 2, cid, control) + data)


def _closed_by_box(s: socket.socket) -> bytes:
    """What the box sent before it closed the connection (an A-ABORT, or nothing)."""
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except ConnectionResetError:  # it closed with our bytes unread: that is a refusal too
        pass
    s.close()
    return data


def test_hostile_upper_layer_input(make_box):
    """Raw bytes at the box's DICOM port, below any toolkit: each is refused with a
    reason in the log, no temp file is left behind, and the box keeps serving."""
    b = make_box("raw")
    b.start()
    port = b.dicom_port
    ct = pydicom_file("CT_small.dcm")
    meta = read_meta(ct.read_bytes()[:65536])
    ds = dataset_bytes(ct)

    # not DICOM at all
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: box\r\n\r\n")
    _closed_by_box(s)
    # a PDU that claims 4 GB
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(struct.pack(">BBL", dul.ASSOCIATE_RQ, 0, 0xFFFFFFF0))
    _closed_by_box(s)
    # data for a presentation context that was never accepted
    s = _associate(port, [(1, meta.sop_class_uid, meta.transfer_syntax)])
    s.sendall(_pdata(7, 0x03, _store_command(meta.sop_class_uid, meta.sop_instance_uid)))
    assert _closed_by_box(s)[:1] == bytes([dul.ABORT])
    # half a dataset, then the connection drops (a modality switched off mid-send)
    s = _associate(port, [(1, meta.sop_class_uid, meta.transfer_syntax)])
    s.sendall(_pdata(1, 0x03, _store_command(meta.sop_class_uid, meta.sop_instance_uid)))
    s.sendall(_pdata(1, 0x00, ds[: len(ds) // 2]))
    s.close()
    # a C-STORE whose command names another SOP class than its context
    s = _associate(port, [(1, meta.sop_class_uid, meta.transfer_syntax)])
    s.sendall(_pdata(1, 0x03, _store_command("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4")))
    s.sendall(_pdata(1, 0x02, ds))
    head = _recv(s, 6)
    rsp = _recv(s, dul.pdu_header(head)[1])
    status = dul.command_us(dul.parse_command(rsp[6:]), dul.TAG_STATUS)
    assert 0xC000 <= status <= 0xCFFF
    s.sendall(dul._pdu(dul.RELEASE_RQ, bytes(4)))
    assert _recv(s, 6)[:1] == bytes([dul.RELEASE_RP])
    s.close()

    wait_for(lambda: "in the middle of instance" in b.log_text(), 10, "the dropped sender")
    log = b.log_text()
    assert "claims" in log  # the 4 GB PDU
    assert "not accepted" in log  # the unknown context
    assert "negotiated for its presentation context" in log
    assert b.api("/api/studies")["studies"] == []
    wait_for(lambda: list((b.data_dir / "tmp").iterdir()) == [], 10, "no temp file left")
    # and the box still takes a real instance
    storescu(port, [ct])
    assert len(b.api("/api/studies")["studies"]) == 1


def test_upper_layer_codec_refuses_malformed_pdus():
    with pytest.raises(dul.ProtocolError):
        dul.parse_associate_rq(b"\x00\x01" + bytes(20))  # shorter than its header
    body = struct.pack(">HH", 1, 0) + bytes(64) + b"\x20\x00\x00\x40\x01"  # item overruns
    with pytest.raises(dul.ProtocolError):
        dul.parse_associate_rq(body)
    with pytest.raises(dul.ProtocolError):
        list(dul.pdvs(memoryview(struct.pack(">LBB", 1000, 1, 3) + b"short")))
    with pytest.raises(dul.ProtocolError):
        dul.parse_command(struct.pack("<HHL", 8, 16, 2) + b"xx")  # not group 0000
    cmd = dul.parse_command(dul.response(dul.C_STORE_RSP, 5, "1.2.3", 0xA700, "1.2.3.4", "full"))
    assert dul.command_us(cmd, dul.TAG_STATUS) == 0xA700
    assert dul.command_us(cmd, dul.TAG_RESPONDING_TO) == 5
    assert dul.command_uid(cmd, dul.TAG_AFFECTED_SOP_INSTANCE) == "1.2.3.4"
