"""Reading just enough of a DICOM instance to keep it safely, without re-encoding it.

The box never rewrites a dataset. It reads the Part 10 file meta header (or writes
its own in front of bytes that came over the network), walks the dataset's element
structure to prove that it is whole, and pulls out the identifiers the index needs.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AllStoragePresentationContexts

IMPLEMENTATION_CLASS_UID = "2.25.191850178200392636154342824179039616276"
IMPLEMENTATION_VERSION = "RADSETU_01"
PREAMBLE_AND_PREFIX = 132
MAX_META_BYTES = 64 * 1024
MAX_NESTING = 64

MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"


def _storage_sop_classes() -> frozenset[str]:
    """pynetdicom's current storage SOP classes plus the retired ones from pydicom's
    UID dictionary: old modalities still send e.g. the retired US Image Storage."""
    classes = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    for uid, (name, kind, *_rest) in UID_dictionary.items():
        if kind == "SOP Class" and "Storage" in name and "Commitment" not in name:
            classes.add(uid)
    classes.discard(MEDIA_DIRECTORY_SOP_CLASS)
    return frozenset(classes)


STORAGE_SOP_CLASSES = _storage_sop_classes()
KNOWN_TRANSFER_SYNTAXES = frozenset(str(ts) for ts in AllTransferSyntaxes)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# explicit VRs with a 2-byte reserved field and a 4-byte length
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


class InvalidInstance(ValueError):
    """The bytes are not a whole, usable DICOM instance; ``reason`` says why for a person."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Meta:
    end: int  # offset of the first dataset byte in the file
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    implementation_class_uid: str = ""


@dataclass(frozen=True)
class InstanceInfo:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    study_description: str
    accession_number: str
    modality: str
    series_number: int | None
    series_description: str
    instance_number: int | None


def is_valid_uid(uid: str) -> bool:
    return 0 < len(uid) <= 64 and bool(_UID_RE.match(uid))


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", 2, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, elem, vr, len(value)) + value


def build_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, 'DICM' and a file meta header of our own for a dataset received over
    the network. Deterministic: the same instance always gets the same header."""
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", sop_class_uid.encode("ascii")),
            _meta_element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _meta_element(0x0010, b"UI", transfer_syntax.encode("ascii")),
            _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION.encode("ascii")),
        )
    )
    group_length = struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def read_meta(head: bytes) -> Meta:
    """Parse the Part 10 preamble and file meta header at the start of ``head``.

    ``head`` must hold the whole header (the first 64 KiB of the file is plenty).
    """
    if len(head) < PREAMBLE_AND_PREFIX or head[128:132] != b"DICM":
        raise InvalidInstance(
            "no DICOM file meta header (no 'DICM' after the 128-byte preamble): "
            "not a DICOM Part 10 file"
        )
    pos = PREAMBLE_AND_PREFIX
    values: dict[int, bytes] = {}
    while True:
        if pos + 8 > len(head):
            if len(head) >= MAX_META_BYTES:
                raise InvalidInstance("file meta header is larger than 64 KiB")
            break  # header only, no dataset: check_structure says so
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", head, pos + 8) if pos + 12 <= len(head) else (-1,)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        if length < 0 or length == _UNDEFINED or start + length > len(head):
            raise InvalidInstance("file meta header is truncated or malformed")
        values[elem] = head[start : start + length]
        pos = start + length

    def text(elem: int) -> str:
        return values.get(elem, b"").rstrip(b"\x00 ").decode("ascii", "replace").strip()

    ts = text(0x0010)
    if not ts:
        raise InvalidInstance("file meta header has no Transfer Syntax UID (0002,0010)")
    return Meta(
        end=pos,
        transfer_syntax=ts,
        sop_class_uid=text(0x0002),
        sop_instance_uid=text(0x0003),
        implementation_class_uid=text(0x0012),
    )


def check_structure(
    data: bytes | memoryview, transfer_syntax: str, limit: int
) -> dict[int, tuple[bytes, bytes]]:
    """Walk every element of the dataset ``data`` and prove that it ends exactly where
    the bytes end: a truncated or garbled instance raises InvalidInstance.

    Values are skipped, not decoded, so this costs little even for large pixel data.
    Returns the raw (VR, value) of the top-level elements the index needs.
    """
    if transfer_syntax not in KNOWN_TRANSFER_SYNTAXES:
        raise InvalidInstance(f"unknown transfer syntax {transfer_syntax}")
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data, limit)
        except zlib.error as exc:
            raise InvalidInstance(f"deflated dataset does not inflate: {exc}") from exc
        if inflater.unconsumed_tail:
            raise InvalidInstance(f"deflated dataset inflates past {limit} bytes")
        if not inflater.eof:
            raise InvalidInstance("deflated dataset is truncated")
    if len(data) == 0:
        raise InvalidInstance("the dataset is empty")
    walker = _Walker(
        memoryview(data),
        implicit=transfer_syntax == ImplicitVRLittleEndian,
        little=transfer_syntax != ExplicitVRBigEndian,
    )
    end = walker.dataset(0, len(data), depth=0, until_item_end=False, implicit=walker.implicit)
    if end != len(data):
        raise InvalidInstance(f"dataset ends at byte {end} of {len(data)}")
    return walker.found


class _Walker:
    def __init__(self, buf: memoryview, implicit: bool, little: bool):
        self.buf = buf
        self.implicit = implicit
        self.e = "<" if little else ">"
        self.found: dict[int, tuple[bytes, bytes]] = {}

    def _need(self, pos: int, n: int, end: int, what: str) -> None:
        if pos + n > end:
            raise InvalidInstance(
                f"dataset is truncated: {what} at byte {pos} needs {n} bytes, "
                f"only {max(end - pos, 0)} left"
            )

    def dataset(self, pos: int, end: int, depth: int, until_item_end: bool, implicit: bool) -> int:
        if depth > MAX_NESTING:
            raise InvalidInstance(f"sequences nested deeper than {MAX_NESTING} levels")
        buf, e = self.buf, self.e
        while pos < end:
            self._need(pos, 8, end, "element header")
            group, elem = struct.unpack_from(e + "HH", buf, pos)
            tag = (group << 16) | elem
            if tag == _ITEM_END and until_item_end:
                return pos + 8
            if group == 0xFFFE:
                raise InvalidInstance(f"unexpected delimiter ({group:04X},{elem:04X}) at {pos}")
            if implicit:
                (length,) = struct.unpack_from(e + "I", buf, pos + 4)
                vr = b""
                pos += 8
            else:
                vr = bytes(buf[pos + 4 : pos + 6])
                if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                    raise InvalidInstance(
                        f"element ({group:04X},{elem:04X}) at byte {pos} has no valid VR"
                    )
                if vr in _LONG_VRS:
                    self._need(pos, 12, end, "element header")
                    (length,) = struct.unpack_from(e + "I", buf, pos + 8)
                    pos += 12
                else:
                    (length,) = struct.unpack_from(e + "H", buf, pos + 6)
                    pos += 8
            if length == _UNDEFINED:
                # a sequence, encapsulated pixel data, or UN holding implicit-VR items
                pos = self.items(pos, end, depth + 1, implicit or vr == b"UN")
            else:
                self._need(pos, length, end, f"value of ({group:04X},{elem:04X})")
                if depth == 0 and tag in _WANTED:
                    self.found[tag] = (vr, bytes(buf[pos : pos + length]))
                if vr == b"SQ" and length:
                    self.defined_sequence(pos, pos + length, depth + 1, implicit)
                pos += length
        if until_item_end:
            raise InvalidInstance("item has no item delimiter before the data ends")
        return pos

    def defined_sequence(self, pos: int, end: int, depth: int, implicit: bool) -> None:
        e = self.e
        while pos < end:
            self._need(pos, 8, end, "item header")
            group, elem, length = struct.unpack_from(e + "HHI", self.buf, pos)
            if (group << 16) | elem != _ITEM:
                raise InvalidInstance(f"expected an item in a sequence at byte {pos}")
            pos += 8
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, depth, until_item_end=True, implicit=implicit)
            else:
                self._need(pos, length, end, "item")
                self.dataset(pos, pos + length, depth, until_item_end=False, implicit=implicit)
                pos += length

    def items(self, pos: int, end: int, depth: int, implicit: bool) -> int:
        e = self.e
        while True:
            self._need(pos, 8, end, "item header")
            group, elem, length = struct.unpack_from(e + "HHI", self.buf, pos)
            tag = (group << 16) | elem
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise InvalidInstance(f"expected an item or sequence end at byte {pos - 8}")
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, depth, until_item_end=True, implicit=implicit)
            else:
                self._need(pos, length, end, "item")
                pos += length


_KEYWORDS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
    "SpecificCharacterSet",
]
_WANTED = frozenset(int(tag_for_keyword(k)) for k in _KEYWORDS)  # type: ignore[arg-type]


def read_info(found: dict[int, tuple[bytes, bytes]], meta: Meta) -> InstanceInfo:
    """Identifiers for the index, decoded (character set included) by pydicom from the
    raw elements that ``check_structure`` collected."""
    ts = meta.transfer_syntax
    implicit = ts == ImplicitVRLittleEndian
    little = ts != ExplicitVRBigEndian
    ds = Dataset(
        {
            tag: RawDataElement(
                Tag(tag),
                None if implicit else vr.decode("ascii"),
                len(value),
                value,
                0,
                implicit,
                little,
            )
            for tag, (vr, value) in found.items()
        }
    )
    ds.set_original_encoding(implicit, little)

    def text(name: str) -> str:
        try:
            value = ds.get(name)
        except Exception as exc:  # pydicom raises many kinds on garbage values
            raise InvalidInstance(f"{name} cannot be decoded: {exc}") from exc
        return "" if value is None else str(value).strip()

    def number(name: str) -> int | None:
        try:
            value = ds.get(name)
            return None if value is None or value == "" else int(value)
        except Exception:
            return None

    info = InstanceInfo(
        sop_class_uid=text("SOPClassUID") or meta.sop_class_uid,
        sop_instance_uid=text("SOPInstanceUID"),
        study_uid=text("StudyInstanceUID"),
        series_uid=text("SeriesInstanceUID"),
        transfer_syntax=meta.transfer_syntax,
        patient_id=text("PatientID"),
        patient_name=text("PatientName").replace("^", " ").strip(),
        birth_date=text("PatientBirthDate"),
        sex=text("PatientSex"),
        study_date=text("StudyDate"),
        study_time=text("StudyTime"),
        study_description=text("StudyDescription"),
        accession_number=text("AccessionNumber"),
        modality=text("Modality"),
        series_number=number("SeriesNumber"),
        series_description=text("SeriesDescription"),
        instance_number=number("InstanceNumber"),
    )
    if info.sop_class_uid == MEDIA_DIRECTORY_SOP_CLASS:
        raise InvalidInstance("a DICOMDIR (the index of a CD or USB stick), not an image")
    for name, uid in (
        ("SOP Instance UID", info.sop_instance_uid),
        ("Study Instance UID", info.study_uid),
        ("Series Instance UID", info.series_uid),
        ("SOP Class UID", info.sop_class_uid),
    ):
        if not uid:
            raise InvalidInstance(f"{name} is missing")
        if not is_valid_uid(uid):
            raise InvalidInstance(f"{name} {uid[:70]!r} is not a valid UID")
    if info.sop_class_uid not in STORAGE_SOP_CLASSES:
        raise InvalidInstance(f"SOP class {info.sop_class_uid} is not a storage SOP class")
    return info
