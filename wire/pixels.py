"""The DICOM-aware record codec ``dicom-jxl``: pixel data coded as an image, the rest of
the file zstd'd, the original file rebuilt bit for bit at the far end.

General-purpose compressors do poorly on 16-bit images; an image coder predicts each
pixel from its neighbours. JPEG XL's lossless mode (libjxl, through imagecodecs) is
used at an effort the caller picks: effort 3 is the fast setting, 7-8 the slow-link
one (figures: ``bench/compress.py``, ``docs/wire.md``).

Only uncompressed little-endian grayscale pixel data of 8 or 16 bits with a defined
length is coded this way; anything else (compressed transfer syntaxes, colour, odd
lengths) returns None and goes as zstd. Every encode is decoded again and compared
before it is used: a codec bug falls back to zstd, it never changes a byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
import zstandard

from wire.dicom import (
    DEFLATED_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MAX_META_BYTES,
    InvalidInstance,
    check_structure,
    read_meta,
)
from wire.errors import RemoteProtocolError
from wire.jxlsize import jxl_size

MAGIC = b"DJX1"
MAX_PIXEL_BYTES = 256 * 1024 * 1024
_HEADER = struct.Struct("<4sBBiIIIQQI")  # magic dtype bits offset rows cols frames start len zlen
_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 3: np.dtype("<i2")}
DTYPES = _DTYPES  # the stored word types, by the code records carry

PIXEL_DATA = 0x7FE00010
ROWS, COLUMNS = 0x00280010, 0x00280011
SAMPLES, BITS_ALLOCATED, PIXEL_REPRESENTATION = 0x00280002, 0x00280100, 0x00280103
NUMBER_OF_FRAMES = 0x00280008
_WANTED = frozenset(
    {PIXEL_DATA, ROWS, COLUMNS, SAMPLES, BITS_ALLOCATED, PIXEL_REPRESENTATION, NUMBER_OF_FRAMES}
)


UNCOMPRESSED = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED_LE})


def already_compressed(data: bytes) -> bool:
    """True for a Part 10 file whose pixel data is in a compressed transfer syntax
    (JPEG, JPEG-LS, JPEG 2000, RLE, video...): coding it again gains nothing."""
    try:
        return read_meta(data[:MAX_META_BYTES]).transfer_syntax not in UNCOMPRESSED
    except InvalidInstance:
        return False


def _us(value: bytes | None) -> int | None:
    return struct.unpack("<H", value[:2])[0] if value and len(value) >= 2 else None


@dataclass(frozen=True)
class Image:
    """The pixel data of a Part 10 file as an image an image coder can take: samples
    offset by ``low`` so the smallest is 0, in 8-bit words when the values fit."""

    image: np.ndarray[Any, Any]  # (frames * rows, cols), uint8 or uint16
    code: int  # the stored word type (_DTYPES)
    depth: int  # bits the values need
    low: int
    rows: int
    cols: int
    frames: int
    start: int  # where the pixel data's value starts in the file
    length: int


def split(data: bytes) -> Image | None:
    """The image inside a Part 10 file, or None when it is not one this coder takes
    (compressed, colour, odd or undefined length, other word sizes)."""
    try:
        meta = read_meta(data[:MAX_META_BYTES])
        if meta.transfer_syntax not in (EXPLICIT_VR_LE, IMPLICIT_VR_LE):
            return None
        walked = check_structure(
            memoryview(data)[meta.end :], meta.transfer_syntax, len(data), _WANTED
        )
    except InvalidInstance:
        return None
    if PIXEL_DATA not in walked.elements:
        return None
    rows, cols = _us(walked.value(ROWS)), _us(walked.value(COLUMNS))
    bits, samples = _us(walked.value(BITS_ALLOCATED)), _us(walked.value(SAMPLES)) or 1
    signed = _us(walked.value(PIXEL_REPRESENTATION)) == 1
    frames_raw = walked.value(NUMBER_OF_FRAMES)
    try:
        frames = int(frames_raw.strip(b" \x00")) if frames_raw else 1
    except ValueError:
        return None
    _vr, offset, length = walked.elements[PIXEL_DATA]
    start = meta.end + offset
    if not rows or not cols or samples != 1 or bits not in (8, 16) or frames < 1:
        return None
    if length != rows * cols * frames * bits // 8 or length > MAX_PIXEL_BYTES:
        return None
    code = 1 if bits == 8 else (3 if signed else 2)
    pixels = np.frombuffer(data, dtype=_DTYPES[code], count=length * 8 // bits, offset=start)
    low, high = int(pixels.min()), int(pixels.max())
    depth = max((high - low).bit_length(), 1)
    # values that fit in 8 bits are coded as 8-bit samples: libjxl refuses a 16-bit
    # buffer that declares 8 bits or fewer (JXL_ENC_ERR_GENERIC), and a byte per
    # sample is what the values need anyway
    out_type = np.uint8 if bits == 8 or depth <= 8 else np.uint16
    if low == 0 and pixels.dtype == out_type:
        image = pixels.reshape(frames * rows, cols)  # as it is: no copy
    else:
        image = (pixels.astype(np.int32) - low).astype(out_type).reshape(frames * rows, cols)
    return Image(image, code, depth, low, rows, cols, frames, start, length)


def encode(data: bytes, effort: int, zstd_level: int = 3, check: bool = True) -> bytes | None:
    """The ``dicom-jxl`` record of a Part 10 file, or None when it does not apply.

    With ``check`` (the default) the record's image is decoded again and compared
    before it is returned; the packer checks the whole record itself instead."""
    img = split(data)
    if img is None:
        return None
    coded = imagecodecs.jpegxl_encode(
        img.image, lossless=True, effort=effort, bitspersample=img.depth, numthreads=1
    )
    # never trust a codec with a patient's image: decode and compare the pixels (the
    # rest of the file is zstd, and the whole file's SHA-256 is checked at the hub)
    if check and not np.array_equal(imagecodecs.jpegxl_decode(coded, numthreads=1), img.image):
        return None
    rest = zstandard.ZstdCompressor(level=zstd_level).compress(
        data[: img.start] + data[img.start + img.length :]
    )
    header = _HEADER.pack(
        MAGIC,
        img.code,
        img.depth,
        img.low,
        img.rows,
        img.cols,
        img.frames,
        img.start,
        img.length,
        len(rest),
    )
    return header + rest + coded


def check_other(framed: bytes, room: int, name: str) -> None:
    """A record's zstd'd other bytes may declare no more than ``room`` bytes: checked
    before anything is allocated for them (zstd believes its frame's content size)."""
    try:
        declared = zstandard.frame_content_size(framed)
    except zstandard.ZstdError as exc:
        raise RemoteProtocolError(f"{name} record does not decode: {exc}") from exc
    if declared > room:
        raise RemoteProtocolError(f"{name} record's other bytes are larger than its file")


def decode(record: bytes, max_size: int = 1 << 62) -> bytes:
    """Rebuild the original file (at most ``max_size`` bytes) from a ``dicom-jxl`` record."""
    if len(record) < _HEADER.size:
        raise RemoteProtocolError("dicom-jxl record is shorter than its header")
    magic, code, _depth, low, rows, cols, frames, start, length, zlen = _HEADER.unpack_from(record)
    if magic != MAGIC or code not in _DTYPES:
        raise RemoteProtocolError("not a dicom-jxl record")
    if length > max_size or rows * cols * frames * _DTYPES[code].itemsize != length:
        raise RemoteProtocolError("dicom-jxl record's header does not add up")
    framed = record[_HEADER.size : _HEADER.size + zlen]
    codestream = record[_HEADER.size + zlen :]
    # what each part declares is checked before anything is allocated for it: a
    # decoder believes the sizes a record states (zstd's frame content size, JPEG XL's
    # size header), whatever our own header says
    check_other(framed, max_size - length, "dicom-jxl")
    if jxl_size(codestream) != (cols, frames * rows):
        raise RemoteProtocolError("dicom-jxl record's image does not match its header")
    try:
        rest = zstandard.ZstdDecompressor().decompress(framed, max_output_size=max_size - length)
        image = imagecodecs.jpegxl_decode(codestream, numthreads=1)
    except (zstandard.ZstdError, imagecodecs.JpegxlError, ValueError) as exc:
        raise RemoteProtocolError(f"dicom-jxl record does not decode: {exc}") from exc
    if image.shape != (frames * rows, cols) or start > len(rest):
        raise RemoteProtocolError("dicom-jxl record's image does not match its header")
    pixels: bytes = (image.astype(np.int32) + low).astype(_DTYPES[code]).tobytes()
    if len(pixels) != length:
        raise RemoteProtocolError("dicom-jxl record's pixel length does not match")
    return bytes(rest[:start]) + pixels + bytes(rest[start:])
