"""The pieces of DICOMweb answers (PS3.18): the DICOM JSON model with bulk data by
reference, query keys and matching, ``multipart/related`` bodies, and one frame's pixel
data either as stored (compressed frames untouched) or decoded to native little endian.
"""

from __future__ import annotations

import fnmatch
import io
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.uid import UID

from common.dicomtext import dicom_text
from hub.render import RenderError, frame_count, stored_frame

NATIVE_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_BYTES = 1024  # a binary value longer than this is sent by reference


class QueryError(ValueError):
    """A query key or value this server does not take (answered 400)."""


def keyword(key: str) -> str:
    """A query or include key as a keyword: ``PatientID`` or ``00100020``."""
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        name = keyword_for_tag(int(key, 16))
        if not name:
            raise QueryError(f"{key} is not a tag of the DICOM dictionary")
        return name
    if tag_for_keyword(key) is None:
        raise QueryError(f"{key} is not a DICOM attribute")
    return key


def includes(raw: list[str]) -> tuple[set[str], bool]:
    """``includefield`` values as keywords, and whether ``all`` was asked."""
    names: set[str] = set()
    every = False
    for value in raw:
        for part in value.split(","):
            part = part.strip()
            if part == "all":
                every = True
            elif part:
                names.add(keyword(part))
    return names, every


def matches(ds: pydicom.Dataset, key: str, want: str) -> bool:
    """PS3.4 C.2.2.2: single value, list (``\\``), wildcard (``*``, ``?``), and date or
    time ranges; person names case-insensitively; a multi-valued attribute matches when
    one of its values does."""
    raw = ds.get(key, "")
    haves = [dicom_text(v) for v in raw] if isinstance(raw, MultiValue) else [dicom_text(raw)]
    wants = want.split("\\")
    pn = key.endswith("Name")
    for have in haves:
        for w in wants:
            if _one(have, w, pn, key.endswith(("Date", "Time"))):
                return True
    return False


def _one(have: str, want: str, pn: bool, ranged: bool) -> bool:
    if pn:
        have, want = have.upper(), want.upper()
    if ranged and "-" in want:
        lo, _, hi = want.partition("-")
        return bool(have) and (not lo or have >= lo) and (not hi or have <= hi)
    if "*" in want or "?" in want:
        return fnmatch.fnmatchcase(have, want.replace("[", "[[]"))
    return have == want


def element_json(ds: pydicom.Dataset, names: Iterable[str]) -> dict[str, Any]:
    sub = pydicom.Dataset()
    for name in names:
        if name in ds:
            sub.add(ds.data_element(name))
    return sub.to_json_dict()


def metadata(ds: pydicom.Dataset, bulk_uri: Callable[[str], str]) -> dict[str, Any]:
    """An instance's whole header in the DICOM JSON model; top-level binary values over
    ``BULK_BYTES`` (and the pixel data, also when ``ds`` was read without it) as a
    BulkDataURI, nested ones inline."""
    out: dict[str, Any] = {}
    if "Rows" in ds and "PixelData" not in ds:  # a header read without its pixel data
        ts = UID(str(ds.file_meta.get("TransferSyntaxUID", NATIVE_LE)))
        vr = "OB" if ts.is_compressed or int(ds.get("BitsAllocated", 16)) <= 8 else "OW"
        out["7FE00010"] = {"vr": vr, "BulkDataURI": bulk_uri("7FE00010")}
    for elem in ds:
        tag = f"{elem.tag:08X}"
        if elem.VR in BINARY_VRS and (elem.tag == 0x7FE00010 or _length(elem) > BULK_BYTES):
            out[tag] = {"vr": elem.VR, "BulkDataURI": bulk_uri(tag)}
            continue
        try:
            out[tag] = elem.to_json_dict(None, bulk_data_threshold=1 << 62)
        except Exception:  # an odd value stays out rather than failing the whole answer
            continue
    return out


def _length(elem: Any) -> int:
    value = elem.value
    return len(value) if isinstance(value, bytes | bytearray) else 0


def multipart(parts: Iterable[tuple[str, bytes]], kind: str) -> tuple[Iterator[bytes], str]:
    """(body, Content-Type) of a ``multipart/related`` answer of (part type, bytes)."""
    boundary = uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        for ctype, data in parts:
            yield f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode()
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return body(), f'multipart/related; type="{kind}"; boundary={boundary}'


def accepts_stored(accept: str, ts: str) -> bool:
    """Whether the client takes frames in the stored transfer syntax."""
    a = accept.replace('"', "").replace(" ", "")
    return "transfer-syntax=*" in a or f"transfer-syntax={ts}" in a


def file_as_accepted(data: bytes, accept: str) -> bytes:
    """A stored Part 10 file as the client takes it (PS3.18 8.7.3): as it is when the
    client accepts its transfer syntax (or any, ``*``), or when it is uncompressed
    little endian and the client named none (the default is Explicit VR Little
    Endian); else decoded to Explicit VR Little Endian."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    named = "transfer-syntax=" in accept.replace(" ", "")
    if accepts_stored(accept, ts) or (not named and not ts.is_compressed and ts != BIG_ENDIAN):
        return data
    if "PixelData" in ds:
        n = frame_count(ds)
        frames = [_native(stored_frame(ds, k), ds) for k in range(n)]
        ds.PixelData = b"".join(frames)
        ds["PixelData"].VR = "OB" if int(ds.get("BitsAllocated", 16)) <= 8 else "OW"
        if int(ds.get("SamplesPerPixel", 1) or 1) == 3 and ts.is_compressed:
            ds.PhotometricInterpretation = "RGB"  # the decoders give RGB, interleaved
            ds.PlanarConfiguration = 0
        if "NumberOfFrames" in ds or n > 1:
            ds.NumberOfFrames = n
    ds.file_meta.TransferSyntaxUID = NATIVE_LE
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    return out.getvalue()


def frames(ds: pydicom.Dataset, numbers: list[int], as_stored: bool) -> list[tuple[str, bytes]]:
    """(part type, bytes) of each frame (1-based numbers), as stored when ``as_stored``
    and possible (compressed frames untouched), else native little endian."""
    if "PixelData" not in ds:
        raise RenderError("the instance has no pixel data")
    n = frame_count(ds)
    bad = [k for k in numbers if not 1 <= k <= n]
    if bad:
        raise RenderError(f"frame {bad[0]} outside 1..{n}")
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    if ts.is_compressed and as_stored:
        found = list(generate_frames(ds.PixelData, number_of_frames=n))
        kind = f"application/octet-stream; transfer-syntax={ts}"
        return [(kind, found[k - 1]) for k in numbers]
    kind = f"application/octet-stream; transfer-syntax={NATIVE_LE}"
    if not ts.is_compressed and ts != BIG_ENDIAN and int(ds.get("BitsAllocated", 16)) % 8 == 0:
        size = _frame_bytes(ds)
        data = bytes(ds.PixelData)
        return [(kind, data[(k - 1) * size : k * size]) for k in numbers]
    return [(kind, _native(stored_frame(ds, k - 1), ds)) for k in numbers]


def _frame_bytes(ds: pydicom.Dataset) -> int:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return int(ds.Rows) * int(ds.Columns) * samples * int(ds.BitsAllocated) // 8


def _native(arr: np.ndarray, ds: pydicom.Dataset) -> bytes:
    if int(ds.get("BitsAllocated", 16)) == 1:
        return bytes(np.packbits(arr.astype(np.uint8).ravel(), bitorder="little"))
    return bytes(np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes())


def bulk_value(ds: pydicom.Dataset, tag: str) -> bytes:
    """A top-level binary attribute's value (the pixel data as stored)."""
    try:
        elem = ds[int(tag, 16)]
    except (KeyError, ValueError) as exc:
        raise QueryError(f"{tag}: no such attribute in the instance") from exc
    if elem.VR not in BINARY_VRS or not isinstance(elem.value, bytes | bytearray):
        raise QueryError(f"{tag} is not bulk data")
    return bytes(elem.value)
