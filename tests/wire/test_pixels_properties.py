"""Properties of the pixel coder (``wire.pixels``) and of the packer around it: for every
image shape, bit depth, signedness and value range the coder claims to take (8 or 16
bits allocated, grayscale, one or more frames), the file comes back byte for byte,
either through the coder or through the packer's fallback; never an exception."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from wire import pixels
from wire.codec import Unpacker, pack_bytes
from wire.manifest import Priority

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@st.composite
def images(draw):  # type: ignore[no-untyped-def]
    bits = draw(st.sampled_from([8, 16]))
    signed = draw(st.booleans()) if bits == 16 else False
    rows = draw(st.integers(1, 40))
    cols = draw(st.integers(1, 40))
    frames = draw(st.integers(1, 3))
    info = np.iinfo(np.int16 if signed else (np.uint16 if bits == 16 else np.uint8))
    # a range anywhere in the type, up to its extremes, and values drawn inside it
    lo = draw(st.integers(int(info.min), int(info.max)))
    hi = draw(st.integers(lo, int(info.max)))
    kind = draw(st.sampled_from(["random", "flat", "extremes", "ramp"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (frames, rows, cols)
    if kind == "flat":
        a = np.full(shape, lo)
    elif kind == "extremes":
        a = rng.choice([lo, hi], size=shape)
    elif kind == "ramp":
        a = np.linspace(lo, hi, num=frames * rows * cols).round().reshape(shape)
    else:
        a = rng.integers(lo, hi, size=shape, endpoint=True)
    return a.astype(info.dtype), bits, signed


def part10(a: np.ndarray, bits: int, signed: bool, implicit: bool) -> bytes:
    frames, rows, cols = a.shape
    ds = Dataset()
    ds.SOPClassUID = CT_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = a.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return out.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images(), st.booleans())
def test_the_coder_round_trips_or_declines(image, implicit):
    a, bits, signed = image
    data = part10(a, bits, signed, implicit)
    try:
        record = pixels.encode(data, effort=3)
    except Exception as exc:  # noqa: BLE001 - recorded: the packer would fall back
        record = None
        declined = f"{type(exc).__name__}: {exc}"
    else:
        declined = None
    if record is not None:
        assert pixels.decode(record, len(data)) == data
    # whatever the coder did, the packer's way gives every byte back
    manifest, chunks = pack_bytes(
        [("1.2.3", data)],
        chunk_size=4096,
        box_id="b",
        study_uid="1.2",
        transfer_id="t",
        priority=Priority.ROUTINE,
        pixel_effort=3,
    )
    u = Unpacker(manifest)
    back = b"".join(
        ev.data for i, c in enumerate(chunks) for ev in u.feed_chunk(i, c) if hasattr(ev, "data")
    )
    assert back == data
    (entry,) = manifest.instances
    if declined is not None:
        assert entry.codec == "zstd" and manifest.extra["coder_fallbacks"] == 1
    elif record is not None:  # the coder's record, or zstd where that is smaller
        assert entry.codec in ("dicom-jxl", "zstd") and entry.encoded_size <= len(record)


def test_a_record_whose_parts_declare_more_than_its_header_is_refused_undecoded():
    """The decoders believe the sizes a record's parts state (JPEG XL's size header,
    zstd's frame content size): a record whose parts declare more than its own header
    allows is refused before anything is allocated for them."""
    import tracemalloc

    import imagecodecs
    import numpy as np
    import pytest
    import zstandard

    from devkit.corpus import pydicom_file
    from wire import pixels
    from wire.errors import RemoteProtocolError
    from wire.jxlsize import jxl_size

    data = pydicom_file("CT_small.dcm").read_bytes()
    record = pixels.encode(data, effort=1)
    assert record is not None and pixels.decode(record, len(data)) == data
    head = pixels._HEADER
    fields = list(head.unpack_from(record))
    zlen = fields[-1]
    huge_image = imagecodecs.jpegxl_encode(np.zeros((6000, 6000), np.uint16), lossless=True,
                                           effort=1)  # fmt: skip
    assert jxl_size(huge_image) == (6000, 6000)
    bomb = zstandard.ZstdCompressor().compress(bytes(300 << 20))
    for name, forged in (
        ("image", record[: head.size + zlen] + huge_image),
        ("other bytes", head.pack(*fields[:-1], len(bomb)) + bomb + record[head.size + zlen :]),
    ):
        tracemalloc.start()
        try:
            with pytest.raises(RemoteProtocolError):
                pixels.decode(forged, len(data))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 << 20, f"{name}: {peak >> 20} MiB allocated before the refusal"


@pytest.mark.parametrize(
    "shape", [(1, 1), (8, 8), (64, 80), (80, 64), (512, 512), (37, 1000), (1000, 37), (200, 356)]
)
def test_the_size_a_jpeg_xl_image_declares_is_read_without_decoding_it(shape):
    import imagecodecs
    import numpy as np

    from wire.jxlsize import jxl_size

    image = (np.arange(shape[0] * shape[1]) % 4096).astype(np.uint16).reshape(shape)
    assert jxl_size(imagecodecs.jpegxl_encode(image, lossless=True, effort=1)) == shape[::-1]
