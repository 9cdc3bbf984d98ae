"""A reversible JPEG 2000 codestream in quality layers, cut in two: its first layer is a
lossy preview, and the rest brings that preview back to the lossless codestream
(ISO/IEC 15444-1; docs/preview.md).

The codestream this takes is what the preview coder writes: one component, one tile
in one tile-part, the reversible 5/3 wavelet, layer-resolution-component-position
order, the default (largest) precincts, and packet lengths in PLT markers. Its first
``levels + 1`` packets are then the first layer, whole resolutions in order.

- ``split`` gives the preview, a codestream of its own (one layer, the COD marker
  saying so, no PLT, its tile-part's length set), and the rest: the original
  codestream with the first layer's packet data taken out, and that data's length
  and SHA-256.
- ``join`` puts them back together. The wavelet is integer-only, so the codestream
  it gives decodes to the same pixels on every machine; the caller still compares
  the rebuilt file with its SHA-256.

Everything read from the other side is checked before it is used: a codestream or a
rest that is not of this shape raises RemoteProtocolError.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import imagecodecs
import numpy as np
import zstandard

from wire import pixels
from wire.errors import PreviewMissing, RemoteProtocolError

SOC, SOT, SOD, EOC = b"\xff\x4f", 0xFF90, 0xFF93, b"\xff\xd9"
SIZ, COD, PLT = 0xFF51, 0xFF52, 0xFF58
REST_MAGIC = b"J2R1"
_REST = struct.Struct("<4sI32s")  # magic, first layer's bytes, its SHA-256
_SOT = struct.Struct(">HHHIBB")  # marker, Lsot, Isot, Psot, TPsot, TNsot
MAX_CODESTREAM = 256 * 1024 * 1024


@dataclass(frozen=True)
class Parsed:
    cod_at: int  # where the COD marker's segment starts
    sot_at: int  # where the tile-part starts
    sod_end: int  # where its packet data starts
    levels: int  # decomposition levels: a layer has levels + 1 packets
    layers: int
    packets: list[int]  # every packet's length, from the PLT markers (empty without)
    width: int
    height: int


def _segments(data: bytes, start: int, stop_at: int) -> list[tuple[int, int, int]]:
    """(marker, where, length) of each marker segment from ``start`` to the marker
    ``stop_at`` (returned last, with length 0)."""
    out, at = [], start
    while True:
        if at + 2 > len(data):
            raise RemoteProtocolError("JPEG 2000 codestream ends inside its header")
        marker = int.from_bytes(data[at : at + 2], "big")
        if marker == stop_at:
            out.append((marker, at, 0))
            return out
        if marker >> 8 != 0xFF or at + 4 > len(data):
            raise RemoteProtocolError(f"JPEG 2000 header has no marker at byte {at}")
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if length < 2 or at + 2 + length > len(data):
            raise RemoteProtocolError(f"JPEG 2000 marker {marker:04X} runs past the codestream")
        out.append((marker, at, length))
        at += 2 + length


def _plt_lengths(segment: bytes) -> list[int]:
    """The packet lengths of one PLT segment's body (after Lplt and Zplt)."""
    lengths, value = [], 0
    for byte in segment:
        value = (value << 7) | (byte & 0x7F)
        if value > MAX_CODESTREAM:
            raise RemoteProtocolError("JPEG 2000 PLT names a packet longer than allowed")
        if not byte & 0x80:
            lengths.append(value)
            value = 0
    if value:
        raise RemoteProtocolError("JPEG 2000 PLT ends inside a packet length")
    return lengths


def parse(data: bytes) -> Parsed:
    """The layout of a codestream of the shape above, or RemoteProtocolError."""
    if len(data) > MAX_CODESTREAM or not data.startswith(SOC) or not data.endswith(EOC):
        raise RemoteProtocolError("not a bare JPEG 2000 codestream")
    main = _segments(data, 2, SOT)
    found = {marker: (at, length) for marker, at, length in main}
    if SIZ not in found or COD not in found:
        raise RemoteProtocolError("JPEG 2000 header lacks its SIZ or COD marker")
    at, length = found[SIZ]
    if length != 38 + 3 or data[at + 38 : at + 40] != b"\x00\x01":
        raise RemoteProtocolError("JPEG 2000 codestream is not of one component")
    xsiz, ysiz, xo, yo, xt, yt, xto, yto = struct.unpack_from(">8I", data, at + 6)
    if xto > xo or yto > yo or xto + xt < xsiz or yto + yt < ysiz:
        raise RemoteProtocolError("JPEG 2000 codestream is not of one tile")
    at, length = found[COD]
    if length != 12:  # no precinct sizes given: the default, one precinct per level
        raise RemoteProtocolError("JPEG 2000 COD is not of the expected shape")
    scod, order, layers, _mct, levels = struct.unpack_from(">BBHBB", data, at + 4)
    transform = data[at + 13]
    if scod & 1 or order != 0 or transform != 1 or not 1 <= layers or levels > 32:
        raise RemoteProtocolError("JPEG 2000 codestream is not reversible and layer-first")
    sot_at = main[-1][1]
    if sot_at + _SOT.size > len(data):
        raise RemoteProtocolError("JPEG 2000 tile-part header is cut short")
    _m, lsot, _isot, psot, tpsot, tnsot = _SOT.unpack_from(data, sot_at)
    if lsot != 10 or tpsot != 0 or tnsot > 1 or psot != len(data) - 2 - sot_at:
        raise RemoteProtocolError("JPEG 2000 codestream is not one tile in one tile-part")
    tile = _segments(data, sot_at + _SOT.size, SOD)
    packets = []
    for marker, seg_at, seg_len in tile[:-1]:
        if marker == PLT:
            packets += _plt_lengths(data[seg_at + 5 : seg_at + 2 + seg_len])
    sod_end = tile[-1][1] + 2
    if packets and sum(packets) != len(data) - 2 - sod_end:
        raise RemoteProtocolError("JPEG 2000 PLT does not add up to the packet data")
    return Parsed(found[COD][0], sot_at, sod_end, levels, layers, packets, xsiz - xo, ysiz - yo)


def split(codestream: bytes) -> tuple[bytes, bytes]:
    """(preview, rest) of a codestream of at least two layers with PLT markers."""
    p = parse(codestream)
    per_layer = p.levels + 1
    if p.layers < 2 or len(p.packets) != per_layer * p.layers:
        raise RemoteProtocolError("JPEG 2000 codestream has no layers to cut apart")
    cut = sum(p.packets[:per_layer])
    first = codestream[p.sod_end : p.sod_end + cut]
    header = bytearray(codestream[: p.sot_at])
    struct.pack_into(">H", header, p.cod_at + 6, 1)  # one layer
    tile_part = _SOT.pack(SOT, 10, 0, _SOT.size + 2 + cut, 0, 1)
    preview = bytes(header) + tile_part + SOD.to_bytes(2, "big") + first + EOC
    rest = codestream[: p.sod_end] + codestream[p.sod_end + cut :]
    return preview, _REST.pack(REST_MAGIC, cut, hashlib.sha256(first).digest()) + rest


def first_layer(preview: bytes) -> bytes:
    """The packet data of a preview made by ``split``."""
    p = parse(preview)
    if p.layers != 1 or p.packets:
        raise RemoteProtocolError("not a one-layer JPEG 2000 preview")
    return preview[p.sod_end : -2]


def join(preview: bytes, rest: bytes) -> bytes:
    """The lossless codestream from a preview and its rest."""
    return _joined(preview, rest)[0]


def _joined(preview: bytes, rest: bytes) -> tuple[bytes, Parsed]:
    """``join``'s codestream, with its layout (read once, to check it)."""
    if len(rest) < _REST.size or rest[:4] != REST_MAGIC:
        raise RemoteProtocolError("not the rest of a layered JPEG 2000 codestream")
    _magic, cut, digest = _REST.unpack_from(rest)
    first = first_layer(preview)
    if len(first) != cut or hashlib.sha256(first).digest() != digest:
        raise RemoteProtocolError("the preview is not the one this rest completes")
    body = rest[_REST.size :]
    if not body.startswith(SOC):
        raise RemoteProtocolError("not the rest of a layered JPEG 2000 codestream")
    sot_at = _segments(body, 2, SOT)[-1][1]
    sod_at = _segments(body, sot_at + _SOT.size, SOD)[-1][1]
    whole = body[: sod_at + 2] + first + body[sod_at + 2 :]
    # its header, tile-part length and packet lengths all agree again
    return whole, parse(whole)


# -- the record of the codec ``dicom-j2k-rest`` ------------------------------------------

RECORD_MAGIC = b"J2L1"  # the file's other bytes zstd'd alone
RECORD_MAGIC_HELD = b"J2L2"  # zstd'd against the preview file's header, which the hub holds
RECORD_MAGIC_FRAMES = b"J2L3"  # as J2L2, of a multi-frame file: a rest for each frame
_RECORD = struct.Struct("<4sBiIIQQI")  # magic, word type, low, rows, cols, start, length, zlen
_COUNT = struct.Struct("<I")  # J2L3: after the other bytes, the frames; then each rest's length
MAX_HEADER_DICT = 1024 * 1024  # a larger preview header is not used as a dictionary


@dataclass(frozen=True)
class Held:
    """A preview as both ends hold it: its codestream, and its Part 10 file's bytes
    before that codestream. The header is most of what the original file has besides
    its pixels, so a record codes those bytes against it: about 0.6 KB less for each
    image of a CT series (docs/preview.md). A multi-frame preview's ``frames`` are
    every frame's codestream, in order (``codestream`` is the first)."""

    codestream: bytes
    header: bytes = b""
    frames: tuple[bytes, ...] = ()

    @property
    def codestreams(self) -> tuple[bytes, ...]:
        return self.frames or (self.codestream,)


def _against(header: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(header, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def rest_record(
    data: bytes, preview: Held, rest: bytes | list[bytes], low: int, level: int = 3
) -> bytes | None:
    """The record that rebuilds a Part 10 file from its preview: the file's other bytes
    (zstd, against the preview's header when it has one), where its pixel data goes,
    and each frame's codestream rest (``rest``: one, or a list in frame order).
    ``low``: what was taken from each stored word before coding. None when the file is
    not one this applies to, or the record does not rebuild it byte for byte (checked
    here, before it is ever sent). A multi-frame file's record needs the header."""
    rests = [rest] if isinstance(rest, bytes) else rest
    img = pixels.split(data)
    if img is None or img.frames != len(rests) or len(preview.codestreams) != img.frames:
        return None
    magic, coder = RECORD_MAGIC, zstandard.ZstdCompressor(level=level)
    if preview.header and len(preview.header) <= MAX_HEADER_DICT:
        magic = RECORD_MAGIC_HELD if img.frames == 1 else RECORD_MAGIC_FRAMES
        coder = zstandard.ZstdCompressor(level=level, dict_data=_against(preview.header))
    elif img.frames > 1:
        return None
    other = coder.compress(data[: img.start] + data[img.start + img.length :])
    head = _RECORD.pack(magic, img.code, low, img.rows, img.cols, img.start, img.length, len(other))
    body = rests[0]
    if magic == RECORD_MAGIC_FRAMES:
        lengths = struct.pack(f"<{len(rests)}I", *(len(r) for r in rests))
        body = _COUNT.pack(len(rests)) + lengths + b"".join(rests)
    record = head + other + body
    try:
        same = decode_rest(record, preview, len(data)) == data
    except RemoteProtocolError:
        return None
    return record if same else None


def decode_rest(record: bytes, preview: Held | None, max_size: int = 1 << 62) -> bytes:
    """The original file from a ``dicom-j2k-rest`` record and the preview it completes
    (None: the preview is not here, PreviewMissing)."""
    if len(record) < _RECORD.size:
        raise RemoteProtocolError("dicom-j2k-rest record is shorter than its header")
    magic, code, low, rows, cols, start, length, zlen = _RECORD.unpack_from(record)
    dtype = pixels.DTYPES.get(code)
    if magic not in (RECORD_MAGIC, RECORD_MAGIC_HELD, RECORD_MAGIC_FRAMES) or dtype is None:
        raise RemoteProtocolError("not a dicom-j2k-rest record")
    body = record[_RECORD.size + zlen :]
    rests = _frame_rests(body) if magic == RECORD_MAGIC_FRAMES else [body]
    if length > max_size or rows * cols * len(rests) * dtype.itemsize != length:
        raise RemoteProtocolError("dicom-j2k-rest record's header does not add up")
    if preview is None:
        raise PreviewMissing("the preview this record completes is not here")
    held = magic != RECORD_MAGIC
    if held and not 0 < len(preview.header) <= MAX_HEADER_DICT:
        raise RemoteProtocolError("dicom-j2k-rest record needs its preview's header")
    if len(preview.codestreams) != len(rests):
        raise RemoteProtocolError("dicom-j2k-rest record and its preview differ in frames")
    framed = record[_RECORD.size : _RECORD.size + zlen]
    pixels.check_other(framed, max_size - length, "dicom-j2k-rest")
    try:
        unzstd = zstandard.ZstdDecompressor(dict_data=_against(preview.header) if held else None)
        other = unzstd.decompress(framed, max_output_size=max_size - length)
    except zstandard.ZstdError as exc:
        raise RemoteProtocolError(f"dicom-j2k-rest record does not decode: {exc}") from exc
    if start > len(other):
        raise RemoteProtocolError("dicom-j2k-rest record's pixel data lies past its file")
    words = b"".join(
        (_frame(cs, r, rows, cols).astype(np.int64) + low).astype(dtype).tobytes()
        for cs, r in zip(preview.codestreams, rests, strict=True)
    )
    return bytes(other[:start]) + words + bytes(other[start:])


def _frame_rests(body: bytes) -> list[bytes]:
    """A J2L3 record's rests: the count, each one's length, then the rests."""
    if len(body) < _COUNT.size:
        raise RemoteProtocolError("dicom-j2k-rest record ends before its frame count")
    (count,) = _COUNT.unpack_from(body)
    table = _COUNT.size + 4 * count
    if not 1 < count or len(body) < table:
        raise RemoteProtocolError("dicom-j2k-rest record's frame count does not add up")
    lengths = struct.unpack_from(f"<{count}I", body, _COUNT.size)
    if table + sum(lengths) != len(body):
        raise RemoteProtocolError("dicom-j2k-rest record's rests do not add up")
    out, at = [], table
    for n in lengths:
        out.append(body[at : at + n])
        at += n
    return out


def _frame(codestream: bytes, rest: bytes, rows: int, cols: int) -> np.ndarray:
    """One frame's samples from its preview codestream and its rest."""
    whole, p = _joined(codestream, rest)
    if (p.width, p.height) != (cols, rows):
        raise RemoteProtocolError("dicom-j2k-rest record's image does not match its header")
    try:
        image: np.ndarray = imagecodecs.jpeg2k_decode(whole, numthreads=1)
    except (imagecodecs.Jpeg2kError, ValueError) as exc:
        raise RemoteProtocolError(f"dicom-j2k-rest record does not decode: {exc}") from exc
    if image.shape != (rows, cols):
        raise RemoteProtocolError("dicom-j2k-rest record's image does not match its header")
    return image
