"""Reading just enough of an instance: meta header, whole-structure check, identifiers."""

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.dicomfile import (
    InvalidInstance,
    build_meta,
    check_structure,
    read_info,
    read_meta,
)
from devkit.corpus import SAMPLES, pydicom_file, sample_path

WHOLE = [sample_path(o, n) for o, n, _ in SAMPLES] + [
    pydicom_file("CT_small.dcm"),
    pydicom_file("MR_small_bigendian.dcm"),
    pydicom_file("image_dfl.dcm"),  # deflated explicit VR little endian
    pydicom_file("chrH31.dcm"),  # Japanese character set
    pydicom_file("rtplan.dcm"),
]


def parse(data: bytes):
    meta = read_meta(data[:65536])
    return read_info(
        check_structure(memoryview(data)[meta.end :], meta.transfer_syntax, 1 << 31), meta
    )


@pytest.mark.parametrize("path", WHOLE, ids=lambda p: p.name)
def test_real_instances_are_whole(path):
    info = parse(path.read_bytes())
    assert info.sop_instance_uid and info.study_uid and info.series_uid


def test_character_set_is_decoded():
    info = parse(pydicom_file("chrH31.dcm").read_bytes())
    assert "山田" in info.patient_name


@pytest.mark.parametrize("path", WHOLE[:8], ids=lambda p: p.name)
def test_every_truncation_is_refused(path):
    data = path.read_bytes()
    meta = read_meta(data[:65536])
    rng = random.Random(path.name)
    cuts = {meta.end + 1, len(data) - 1, len(data) - 2} | {
        rng.randrange(meta.end + 1, len(data)) for _ in range(40)
    }
    for cut in sorted(cuts):
        with pytest.raises(InvalidInstance):
            parse(data[:cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=4000))
def test_garbage_after_a_valid_header_is_refused_not_crashed(garbage):
    head = build_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1")
    with pytest.raises(InvalidInstance):
        parse(head + garbage)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"hello, this is not DICOM at all" * 10, "no DICOM file meta header"),
        (b"\x00" * 128 + b"DICM", "no Transfer Syntax"),
        (build_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2"), "empty"),
        (pydicom_file("no_meta.dcm").read_bytes(), "no DICOM file meta header"),
        (pydicom_file("meta_missing_tsyntax.dcm").read_bytes(), "no Transfer Syntax"),
        (pydicom_file("DICOMDIR").read_bytes(), "DICOMDIR"),
    ],
)
def test_refusals_say_why(data, reason):
    with pytest.raises(InvalidInstance, match=reason):
        parse(data)


def test_our_meta_header_is_deterministic_and_readable():
    a = build_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2")
    assert a == build_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2")
    meta = read_meta(a)
    assert meta.end == len(a)
    assert (meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax) == (
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.3.4.5",
        "1.2.840.10008.1.2",
    )


def test_unknown_sop_class_is_refused(tmp_path):
    import pydicom

    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.SOPClassUID = "1.2.3.4.5.6.7"
    ds.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5.6.7"
    p = tmp_path / "odd.dcm"
    ds.save_as(p)
    with pytest.raises(InvalidInstance, match="not a storage SOP class"):
        parse(p.read_bytes())


def test_fast_identifiers_equal_pydicoms_on_every_corpus_file():
    """The plain-ASCII fast path of read_info gives what pydicom's decoding gives, on
    every readable file of pydicom's and pydicom-data's test sets."""
    import data_store
    import pydicom

    from common.dicomfile import _PLAIN, MAX_META_BYTES, _fast_info, _pydicom_info
    from common.dicomfile import check_structure as walk

    compared = fell_back = 0
    roots = [Path(pydicom.__file__).parent / "data", Path(data_store.__file__).parent / "data"]
    files = (p for root in roots for p in root.rglob("*.dcm") if p.stat().st_size < 2_000_000)
    for name in sorted(files):
        data = Path(name).read_bytes()
        try:
            meta = read_meta(data[:MAX_META_BYTES])
            found = walk(memoryview(data)[meta.end :], meta.transfer_syntax, 1 << 40)
        except InvalidInstance:
            continue
        if not all(_PLAIN.match(v) for _vr, v in found.values()):
            fell_back += 1
            continue
        try:
            slow = _pydicom_info(found, meta)
        except InvalidInstance:
            continue
        assert _fast_info(found, meta) == slow, name
        compared += 1
    assert compared > 100 and fell_back > 3, (compared, fell_back)
