"""Reading just enough of a DICOM instance to keep it safely, without re-encoding it.

The box never rewrites a dataset. It reads the Part 10 file meta header (or writes
its own in front of bytes that came over the network), walks the dataset's element
structure to prove that it is whole, and pulls out the identifiers the index needs.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    AllTransferSyntaxes,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AllStoragePresentationContexts

from common.dicomtext import dicom_text
from wire.dicom import (  # noqa: F401 - re-exported: edge speaks of these as its own
    MAX_META_BYTES,
    PREAMBLE_AND_PREFIX,
    InvalidInstance,
    Meta,
    read_meta,
)
from wire.dicom import check_structure as _check

IMPLEMENTATION_CLASS_UID = "2.25.191850178200392636154342824179039616276"
IMPLEMENTATION_VERSION = "RADSETU_01"
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
    referring_physician: str = ""  # as the modality wrote it (0008,0090)


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


def check_structure(
    data: bytes | memoryview, transfer_syntax: str, limit: int
) -> dict[int, tuple[bytes, bytes]]:
    """``wire.dicom.check_structure`` for a known transfer syntax, returning the raw
    (VR, value) of the top-level elements the index needs."""
    if transfer_syntax not in KNOWN_TRANSFER_SYNTAXES:
        raise InvalidInstance(f"unknown transfer syntax {transfer_syntax}")
    walked = _check(data, transfer_syntax, limit, _WANTED)
    return {tag: (vr, walked.value(tag) or b"") for tag, (vr, _o, _n) in walked.elements.items()}


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
    "ReferringPhysicianName",
    "SpecificCharacterSet",
]
_WANTED = frozenset(int(tag_for_keyword(k)) for k in _KEYWORDS)  # type: ignore[arg-type]


_KEYWORD_TAGS = {k: int(tag_for_keyword(k)) for k in _KEYWORDS}  # type: ignore[arg-type]
_PLAIN = re.compile(rb"^[\x20-\x5b\x5d-\x7e\x00]*$")  # printable ASCII, no backslash


def read_info(found: dict[int, tuple[bytes, bytes]], meta: Meta) -> InstanceInfo:
    """Identifiers for the index from the raw elements ``check_structure`` collected.

    Plain ASCII single values (nearly every instance) are decoded here directly; any
    other byte, an escape sequence or a multi-value goes through pydicom, which knows
    every character set."""
    if all(_PLAIN.match(value) for _vr, value in found.values()):
        return _checked(_fast_info(found, meta))
    return _checked(_pydicom_info(found, meta))


def _fast_info(found: dict[int, tuple[bytes, bytes]], meta: Meta) -> InstanceInfo:
    def text(name: str) -> str:
        got = found.get(_KEYWORD_TAGS[name])
        return "" if got is None else got[1].decode("ascii").strip(" \0")

    def number(name: str) -> int | None:
        try:
            return int(text(name))
        except ValueError:
            return None

    return _build(text, number, meta)


def _build(
    text: Callable[[str], str], number: Callable[[str], int | None], meta: Meta
) -> InstanceInfo:
    return InstanceInfo(
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
        referring_physician=_optional(text, "ReferringPhysicianName"),
    )


def _optional(text: Callable[[str], str], name: str) -> str:
    """A value the study does not need: one that cannot be decoded is left out, never a
    reason to refuse the instance."""
    try:
        return text(name).replace("^", " ").strip()[:200]
    except InvalidInstance:
        return ""


def _pydicom_info(found: dict[int, tuple[bytes, bytes]], meta: Meta) -> InstanceInfo:
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
        return dicom_text(value).strip()

    def number(name: str) -> int | None:
        try:
            value = ds.get(name)
            return None if value is None or value == "" else int(value)
        except Exception:
            return None

    return _build(text, number, meta)


def _checked(info: InstanceInfo) -> InstanceInfo:
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


def verify(path, meta: Meta, max_bytes: int) -> InstanceInfo:  # type: ignore[no-untyped-def]
    """Prove the file at ``path`` holds a whole dataset and read its identifiers."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size <= meta.end:
            raise InvalidInstance("the file holds a meta header but no dataset")
        reason = None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                found = check_structure(
                    memoryview(mm)[meta.end :], meta.transfer_syntax, limit=max_bytes
                )
            except InvalidInstance as exc:
                # keep only the text: the traceback's frames hold views of the map,
                # which must be gone before it closes
                reason = exc.reason
        if reason is not None:
            raise InvalidInstance(reason)
    return read_info(found, meta)


def index_existing(path) -> tuple[InstanceInfo, int]:  # type: ignore[no-untyped-def]
    """For the store's self-check: identifiers and dataset offset of a stored file."""
    with open(path, "rb") as f:
        meta = read_meta(f.read(MAX_META_BYTES))
    return verify(path, meta, max_bytes=1 << 62), meta.end


#: what the hub's index keeps of an instance's place in its study, in this order
SERIES_FACTS = ("series_uid", "modality", "series_number", "instance_number")


def series_facts(path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """An instance's series, modality and numbers, as the hub's index keeps them; empty
    where the file does not read (the instance is kept all the same)."""
    try:
        info, _ = index_existing(path)
    except (InvalidInstance, OSError):
        return {"series_uid": "", "modality": "", "series_number": None, "instance_number": None}
    return {k: getattr(info, k) for k in SERIES_FACTS}
