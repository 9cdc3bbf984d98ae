"""wire.layered: a reversible layered JPEG 2000 codestream cut into a preview and its
rest, and put back together, on real images and on hostile bytes."""

from __future__ import annotations

import hashlib
import random

import imagecodecs
import numpy as np
import pydicom
import pytest

from common import preview
from common.preview import code_layered
from common.ratios import parse_ratios, ratio_for
from devkit.corpus import MULTI_FRAME_MR, corpus_file, corpus_files, data_file, head_ct_slices
from edge.config import PREVIEW_RATIOS
from wire import layered
from wire.codec import InstanceBytes, Packer, Unpacker
from wire.errors import PreviewMissing, RemoteProtocolError
from wire.manifest import Priority


def unsigned(path) -> np.ndarray:
    a = pydicom.dcmread(path).pixel_array.astype(np.int32)
    return (a - a.min()).astype(np.uint16)


@pytest.fixture(scope="module")
def ct() -> tuple[np.ndarray, bytes]:
    image = unsigned(head_ct_slices()[30])
    return image, code_layered(image, 12)


def previewed_images() -> list[tuple[str, np.ndarray, float]]:
    """Every single-frame grayscale corpus image the default table gives a ratio."""
    table, out = parse_ratios(PREVIEW_RATIOS), []
    for f in corpus_files():
        try:
            ds = pydicom.dcmread(f.path)
            ratio = ratio_for(
                table, str(ds.get("Modality", "")), str(ds.get("BodyPartExamined", ""))
            )
            if ratio is None or int(ds.get("SamplesPerPixel", 1)) != 1:
                continue
            a = ds.pixel_array
        except Exception:  # noqa: BLE001 - files pydicom cannot read are other tests' concern
            continue
        if a.ndim == 2 and a.nbytes >= 128 * 1024:
            a = a.astype(np.int32)
            out.append(
                (
                    f.name,
                    (a - a.min()).astype(np.uint16 if a.max() - a.min() > 255 else np.uint8),
                    ratio,
                )
            )
    return out


def test_every_previewed_corpus_image_cuts_and_joins_exactly():
    images = previewed_images()
    assert len(images) >= 90  # CT, MR, CR and DX from several packages
    for name, image, ratio in images:
        codestream = code_layered(image, ratio)
        preview, rest = layered.split(codestream)
        shown = imagecodecs.jpeg2k_decode(preview)
        assert shown.shape == image.shape, name
        if np.array_equal(shown, image):  # the whole coding fits in the ratio
            assert len(codestream) * ratio < image.nbytes * 1.3, name
        else:  # about the table's ratio; split does not judge the coder's rate control
            assert image.nbytes / len(preview) < ratio * 1.3, name
        whole = layered.join(preview, rest)
        assert whole == codestream, name
        assert np.array_equal(imagecodecs.jpeg2k_decode(whole), image), name


def test_the_preview_is_a_plain_one_layer_codestream(ct):
    image, codestream = ct
    preview, rest = layered.split(codestream)
    p = layered.parse(preview)
    assert p.layers == 1 and p.packets == [] and layered.parse(codestream).layers == 2
    error = np.abs(imagecodecs.jpeg2k_decode(preview).astype(np.int32) - image)
    assert 0 < error.mean() < 5  # HU: a 12:1 preview of a head CT slice
    assert len(preview) + len(rest) < len(codestream) + 200  # the cut costs a header


def test_a_rest_completes_only_its_own_preview(ct):
    image, codestream = ct
    preview, rest = layered.split(codestream)
    other, _ = layered.split(code_layered(np.ascontiguousarray(image[::-1]), 12))
    with pytest.raises(RemoteProtocolError, match="not the one"):
        layered.join(other, rest)
    with pytest.raises(RemoteProtocolError):
        layered.join(codestream, rest)  # the whole codestream is no preview
    with pytest.raises(RemoteProtocolError):
        layered.join(preview, b"J2R1" + rest[4:40])


def test_codestreams_of_other_shapes_are_refused(ct):
    image, _ = ct
    import io

    from PIL import Image

    def coded(**options):
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="JPEG2000", no_jp2=True, **options)
        return out.getvalue()

    for options, why in (
        (dict(irreversible=True, quality_layers=[12, 0], quality_mode="rates", plt=True), "9/7"),
        (dict(quality_layers=[12, 0], quality_mode="rates", progression="RLCP", plt=True), "order"),
        (
            dict(quality_layers=[12, 0], quality_mode="rates", tile_size=(256, 256), plt=True),
            "tiles",
        ),
        (dict(quality_layers=[12, 0], quality_mode="rates"), "no PLT"),
        (dict(plt=True), "one layer"),
    ):
        with pytest.raises(RemoteProtocolError):
            layered.split(coded(**options))
            pytest.fail(why)


def test_hostile_bytes_raise_the_protocol_error_and_nothing_else(ct):
    _, codestream = ct
    preview, rest = layered.split(codestream)
    for bad in (b"", b"\xff\x4f\xff\xd9", codestream[:100], codestream[:-3] + b"\xff\xd9",
                b"\xff\x4f" + b"\xff\x51\xff\xff" + b"\0" * 50 + b"\xff\xd9"):  # fmt: skip
        with pytest.raises(RemoteProtocolError):
            layered.split(bad)
    rng = random.Random(19)
    refused = 0
    for _ in range(300):
        which = rng.randrange(2)
        data = bytearray((preview, rest)[which])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(len(data), 400))] = rng.randrange(256)
        args = (bytes(data), rest) if which == 0 else (preview, bytes(data))
        try:
            whole = layered.join(*args)
        except RemoteProtocolError:
            refused += 1
            continue
        # what got through has a header that adds up; its pixels are checked by the
        # record's SHA-256 above this layer
        layered.parse(whole)
    assert refused > 200


def test_a_forged_plt_cannot_claim_a_giant_packet(ct):
    _, codestream = ct
    p = layered.parse(codestream)
    at = codestream.index(b"\xff\x58", p.sot_at)
    forged = codestream[: at + 5] + b"\xff" * 8 + b"\x7f" + codestream[at + 14 :]
    with pytest.raises(RemoteProtocolError):
        layered.split(forged)
    assert hashlib.sha256(codestream).digest() != hashlib.sha256(forged).digest()


def through_the_codec(data: bytes, rest: bytes, previews) -> bytes:
    sop = "1.2.3"
    packer = Packer(box_id="b", study_uid="s", transfer_id="t", priority=Priority.STAT,
                    chunk_size=50_000)  # fmt: skip
    packer.add_record(sop, "dicom-j2k-rest", rest, len(data), hashlib.sha256(data).hexdigest())
    manifest, last = packer.finish()
    unpacker, out = Unpacker(manifest, previews), b""
    for i, chunk in enumerate(last):
        for ev in unpacker.feed_chunk(i, chunk):
            out += ev.data if isinstance(ev, InstanceBytes) else b""
    return out


@pytest.mark.parametrize("name", ["head CT (signed)", "MR2_UNCR.dcm (unsigned)", "MR (3 frames)"])
def test_a_rest_record_rebuilds_the_original_file_through_the_codec(name):
    path = {"head CT (signed)": head_ct_slices()[12], "MR (3 frames)": corpus_file(MULTI_FRAME_MR)}
    path = path.get(name) or data_file(name.split()[0])
    data = path.read_bytes()
    made = preview.make(data, {"CT": 12.0, "MR": 24.0})
    assert made.rest is not None
    shown = preview.held_of(made.data)
    assert through_the_codec(data, made.rest, {"1.2.3": shown}.get) == data
    assert len(made.rest) < len(data) / 3  # the rest, not the image again
    with pytest.raises(PreviewMissing):
        through_the_codec(data, made.rest, lambda sop: None)
    with pytest.raises(PreviewMissing):
        through_the_codec(data, made.rest, None)  # an unpacker that holds no previews
    other = preview.make(head_ct_slices()[40].read_bytes(), {"CT": 12.0, "MR": 24.0})
    with pytest.raises(RemoteProtocolError) as wrong:
        through_the_codec(data, made.rest, {"1.2.3": preview.held_of(other.data)}.get)
    assert not isinstance(wrong.value, PreviewMissing)


def test_a_rest_codes_its_other_bytes_against_the_previews_header():
    """The hub holds the preview file, whose header is most of the original's other
    bytes: coded against it, the record is smaller. An older box's record, coded
    alone, still decodes; one that needs a header the hub cannot give is refused."""
    data = head_ct_slices()[12].read_bytes()
    made = preview.make(data, {"CT": 12.0})
    held = preview.held_of(made.data)
    assert made.rest is not None and made.rest[:4] == layered.RECORD_MAGIC_HELD
    assert made.data == held.header + made.data[len(held.header) :]
    assert made.data[len(held.header) :].startswith(held.codestream)
    assert layered.decode_rest(made.rest, held, len(data)) == data
    _m, _code, low, *_, zlen = layered._RECORD.unpack_from(made.rest)
    rest = made.rest[layered._RECORD.size + zlen :]
    alone = layered.rest_record(data, layered.Held(held.codestream), rest, low)
    assert alone is not None and alone[:4] == layered.RECORD_MAGIC
    assert len(made.rest) < len(alone) - 400  # of about 800 bytes of other bytes
    assert layered.decode_rest(alone, held, len(data)) == data
    assert layered.decode_rest(alone, layered.Held(held.codestream), len(data)) == data
    with pytest.raises(RemoteProtocolError, match="header"):
        layered.decode_rest(made.rest, layered.Held(held.codestream), len(data))
    other = preview.held_of(preview.make(head_ct_slices()[40].read_bytes(), {"CT": 12.0}).data)
    wrong = layered.Held(held.codestream, other.header[:-7] + b"\0" * 7)
    try:  # another header: refused, or bytes that are not the file (its SHA-256 decides)
        assert layered.decode_rest(made.rest, wrong, len(data)) != data
    except RemoteProtocolError:
        pass


def test_a_multi_frame_rest_needs_every_frame_of_its_own_preview():
    """A multi-frame image's record carries a rest for each frame (J2L3): it rebuilds
    the file only from the preview's every frame, and a damaged frame table is refused."""
    data = corpus_file(MULTI_FRAME_MR).read_bytes()
    made = preview.make(data, {"MR": 24.0})
    held = preview.held_of(made.data)
    assert made.rest is not None and made.rest[:4] == layered.RECORD_MAGIC_FRAMES
    assert len(held.codestreams) == 3 and held.codestreams[0] == held.codestream
    assert layered.decode_rest(made.rest, held, len(data)) == data
    one_frame = layered.Held(held.codestream, held.header)
    with pytest.raises(RemoteProtocolError, match="frames"):
        layered.decode_rest(made.rest, one_frame, len(data))
    swapped = layered.Held(held.frames[1], held.header, held.frames[::-1])
    with pytest.raises(RemoteProtocolError, match="not the one"):
        layered.decode_rest(made.rest, swapped, len(data))
    *_, zlen = layered._RECORD.unpack_from(made.rest)
    table = layered._RECORD.size + zlen
    rng = random.Random(3)
    for _ in range(60):
        bad = bytearray(made.rest)
        bad[table + rng.randrange(12)] ^= 1 << rng.randrange(8)  # the count, the lengths
        with pytest.raises(RemoteProtocolError):
            layered.decode_rest(bytes(bad), held, len(data))
    with pytest.raises(RemoteProtocolError):
        layered.decode_rest(made.rest[:-1], held, len(data))


def test_a_damaged_rest_record_is_refused_not_believed():
    data = head_ct_slices()[12].read_bytes()
    made = preview.make(data, {"CT": 12.0})
    shown = preview.held_of(made.data)
    rng = random.Random(7)
    for _ in range(60):
        bad = bytearray(made.rest)
        bad[rng.randrange(48)] ^= 1 << rng.randrange(8)  # the record's own header
        try:
            out = layered.decode_rest(bytes(bad), shown, len(data))
        except RemoteProtocolError:
            continue
        assert len(out) <= len(data)  # and the file's SHA-256 decides above this layer


@pytest.mark.parametrize("piece", [1 << 20, 4096, 1000])
def test_a_preview_files_header_is_compressed_apart_from_its_codestream(piece):
    """zstd stores a block as it is when the block gains nothing; the preview's header
    is coded in a block of its own, so it is compressed even though the JPEG 2000
    after it is not. Fed in pieces of any size, the record still rebuilds the file."""
    made = preview.make(head_ct_slices()[30].read_bytes(), {"CT": 12.0})
    header = made.data.index(b"\xe0\x7f\x10\x00")  # the preview's pixel data
    packer = Packer(box_id="b", study_uid="s", transfer_id="t", priority=Priority.STAT,
                    chunk_size=50_000)  # fmt: skip
    packer.begin_instance("1.2.3", "zstd")
    for at in range(0, len(made.data), piece):
        packer.feed(made.data[at : at + piece])
    entry = packer.end_instance()
    chunks = packer.chunks()
    manifest, last = packer.finish()
    if piece > header:  # the tag is seen whole: the header's block is coded
        assert entry.encoded_size < len(made.data) - header // 3
    unpacker, out = Unpacker(manifest), b""
    for i, chunk in enumerate(chunks + last):
        for ev in unpacker.feed_chunk(i, chunk):
            out += ev.data if isinstance(ev, InstanceBytes) else b""
    assert out == made.data
