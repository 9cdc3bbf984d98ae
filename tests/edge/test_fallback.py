"""A codec is an optimisation, never a gate: whatever the pixel coder does with one
instance, that instance goes as zstd (or raw), the reason is kept, and the rest of the
study goes on. Files that cannot be read are held; versions never overwrite each other."""

import hashlib
import subprocess
import sys
import time

import pydicom
import pytest

from devkit.corpus import data_file, replicate
from edge.sneakernet import BoundedCoder, NothingToPack, Source, pack, unpack
from wire import pixels
from wire.codec import Packer, Unpacker, pack_bytes
from wire.manifest import Priority

RADSETU = [sys.executable, "-m", "radsetu"]


def study(tmp_path, n=3):
    return replicate(data_file("693_UNCI.dcm"), tmp_path / "study", n)


def unpack_all(manifest, chunks):
    u = Unpacker(manifest)
    out: dict[str, bytearray] = {}
    for i, c in enumerate(chunks):
        for ev in u.feed_chunk(i, c):
            if hasattr(ev, "data"):
                out.setdefault(ev.sop_instance_uid, bytearray()).extend(ev.data)
    assert u.done
    return {k: bytes(v) for k, v in out.items()}


def packed_with(coder, files):
    insts = [(pydicom.dcmread(f).SOPInstanceUID, f.read_bytes()) for f in files]
    kw = dict(box_id="b", study_uid="1.2", transfer_id="t", priority=Priority.ROUTINE)
    m, chunks = pack_bytes(insts, pixel_effort=3, image_coder=coder, **kw)
    assert unpack_all(m, chunks) == dict(insts)  # every byte back, whatever the coder did
    return m


def raises(exc):
    def coder(data, effort, level):
        raise exc

    return coder


@pytest.mark.parametrize(
    "coder, why",
    [
        (raises(RuntimeError("JXL_ENC_ERR_GENERIC")), "pixel coder failed: RuntimeError"),
        (raises(MemoryError()), "pixel coder failed: MemoryError"),
        (lambda d, e, lv: b"DJX1 and then garbage", "does not decode"),
        (lambda d, e, lv: b"\x00" * 10, "does not decode"),
    ],
)
def test_a_failing_coder_falls_back_per_instance(tmp_path, coder, why):
    files = study(tmp_path)
    m = packed_with(coder, files)
    assert {e.codec for e in m.instances} == {"zstd"}
    assert m.extra["coder_fallbacks"] == 3
    assert all(why in r for r in m.extra["coder_fallback_reasons"].values())


def test_a_coder_that_answers_for_other_pixels_is_not_used(tmp_path):
    files = study(tmp_path, 2)
    other = files[1].read_bytes()

    def lying(data, effort, level):  # a valid record, but of another image
        return pixels.encode(other, effort, level)

    m = packed_with(lying, files)
    by_uid = {e.sop_instance_uid: e.codec for e in m.instances}
    uid0 = pydicom.dcmread(files[0]).SOPInstanceUID
    assert by_uid[uid0] == "zstd"
    assert "not decode to the same bytes" in m.extra["coder_fallback_reasons"][uid0]


def test_only_the_bad_instance_falls_back(tmp_path):
    files = study(tmp_path, 3)
    bad = files[1].read_bytes()

    def coder(data, effort, level):
        if data == bad:
            raise ValueError("this one only")
        return pixels.encode(data, effort, level, check=False)

    m = packed_with(coder, files)
    assert [e.codec for e in m.instances] == ["dicom-jxl", "zstd", "dicom-jxl"]
    assert m.extra["coder_fallbacks"] == 1


def test_a_coder_that_overruns_its_time_is_left_behind(tmp_path):
    files = study(tmp_path, 3)

    def slow(data, effort, level):
        time.sleep(5)
        return None

    coder = BoundedCoder(0.2, slow)
    t = time.monotonic()
    m = packed_with(coder, files)
    assert time.monotonic() - t < 4  # one wait, then off for the rest of the transfer
    reasons = list(m.extra["coder_fallback_reasons"].values())
    assert "took longer than 0.2 s" in reasons[0]
    assert all("off for the rest of this transfer" in r for r in reasons[1:])


def test_a_coding_that_finished_late_is_an_overrun_too():
    # with no time at all, even an instant coder has overrun; whether its thread
    # was scheduled before join gave up must not decide
    def instant(data, effort, level):
        return b"coded"

    for _ in range(50):
        coder = BoundedCoder(0.0, instant)
        with pytest.raises(TimeoutError, match="took longer than 0 s"):
            coder(b"pixels", 1, 1)
        assert coder.timed_out
    assert BoundedCoder(5.0, instant)(b"pixels", 1, 1) == b"coded"


def test_values_that_fit_in_8_bits_are_coded(tmp_path):
    """The class of file that made libjxl fail (16-bit words, values 0-25): coded as
    8-bit samples now, byte-identical."""
    ds = pydicom.dcmread(files := study(tmp_path, 1)[0])
    arr = ds.pixel_array.astype("uint16") % 26
    ds.PixelData = arr.tobytes()
    ds.PixelRepresentation = 0
    ds.save_as(files)
    data = files.read_bytes()
    rec = pixels.encode(data, 3)
    assert rec is not None and pixels.decode(rec) == data


def test_pack_holds_a_missing_or_damaged_file_and_sends_the_rest(tmp_path):
    files = study(tmp_path, 4)
    sources = []
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        sources.append(Source(ds.SOPInstanceUID, ds.StudyInstanceUID, f, sha, key=i))
    files[1].unlink()
    damaged = bytearray(files[2].read_bytes())
    damaged[-10] ^= 1
    files[2].write_bytes(bytes(damaged))
    out = tmp_path / "s.pack"
    result = pack(sources, out, "box", 65536, 3)
    assert len(result.manifest.instances) == 2
    held = {h.source.key: h.reason for h in result.held}
    assert "missing" in held[1] and "damaged" in held[2]
    _, written = unpack(out, tmp_path / "out")
    assert sorted(p.read_bytes() for p in written) == sorted(
        f.read_bytes() for f in (files[0], files[3])
    )
    for f in (files[0], files[3]):
        f.unlink()
    with pytest.raises(NothingToPack) as err:
        pack(sources[:3], out, "box", 65536, 3)
    assert len(err.value.held) == 3


def test_two_versions_of_an_instance_both_unpack(tmp_path):
    """A re-sent, corrected instance: same SOP Instance UID, other bytes."""
    (first,) = study(tmp_path, 1)
    ds = pydicom.dcmread(first)
    ds.PatientName = "Corrected^Name"
    second = tmp_path / "study" / "corrected.dcm"
    ds.save_as(second)
    r = subprocess.run(
        [*RADSETU, "pack", tmp_path / "study", "-o", tmp_path / "s.radsetu"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*RADSETU, "unpack", tmp_path / "s.radsetu", "-o", tmp_path / "out"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    got = sorted(p.read_bytes() for p in (tmp_path / "out").glob("*.dcm"))
    assert got == sorted([first.read_bytes(), second.read_bytes()])
    assert "2 instances written" in r.stdout and "1 more version" in r.stdout
    # unpacking again into the same folder rewrites the same two names, no third
    r = subprocess.run(
        [*RADSETU, "unpack", tmp_path / "s.radsetu", "-o", tmp_path / "out"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and len(list((tmp_path / "out").glob("*.dcm"))) == 2


def test_packer_keeps_no_fallback_when_the_coder_declines():
    """Colour or compressed files are not the coder's to take: not counted as faults."""
    data = pydicom.data.get_testdata_file("SC_rgb.dcm")
    p = Packer(
        box_id="b",
        study_uid="1.2",
        transfer_id="t",
        priority=Priority.ROUTINE,
        chunk_size=65536,
        pixel_effort=3,
    )
    p.begin_instance("1.2.3")
    p.feed(open(data, "rb").read())
    assert p.end_instance().codec == "zstd"
    m, _ = p.finish()
    assert "coder_fallbacks" not in m.extra
