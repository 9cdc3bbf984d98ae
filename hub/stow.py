"""STOW-RS (PS3.18 10.5) for what a radiologist makes of a study in a viewer: OHIF's
"Create SR" saves the measurements drawn on a study as a DICOM structured report
(TID 1500), posted to the DICOMweb root the viewer reads from. The report becomes an
instance of that study: listed, retrieved and shown again like any other, and read
back on the reading page (hub/measurements.py).

Only structured reports are taken, each for a study the hub shows (in the clinic the
request is narrowed to), with that study's Patient ID. Images come only from the
boxes. A part that is refused is named in the answer's Failed SOP Sequence with a
failure reason, and logged with why; the others are kept.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import pydicom
from flask import g
from pydicom.errors import InvalidDicomError

from common.dicomfile import is_valid_uid
from hub import access
from hub import dicomindex as index
from hub.db import request_store
from hub.errors import HubError
from hub.store import FileHubStore

log = logging.getLogger("radsetu.hub.stow")

SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
}
MAX_BODY = 8 * 1024 * 1024  # measurements are kilobytes; a request is refused past this
MAX_PARTS = 16

# failure reasons (PS3.4 Annex GG, PS3.18 10.5.3)
CANNOT_UNDERSTAND = 0xC000
NOT_SUPPORTED = 0x0122  # SOP class not supported: not a structured report
DOES_NOT_MATCH = 0xA900  # no such study here, another patient, or a UID taken


class Refused(Exception):
    def __init__(self, reason: int, why: str, sop_class: str = "", sop_uid: str = ""):
        super().__init__(why)
        self.reason, self.why, self.sop_class, self.sop_uid = reason, why, sop_class, sop_uid


@dataclass
class Outcome:
    stored: list[dict[str, Any]] = field(default_factory=list)
    failed: list[Refused] = field(default_factory=list)


def split(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a ``multipart/related; type="application/dicom"`` body."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "multipart/related":
        raise HubError('STOW-RS takes multipart/related; type="application/dicom"', 415)
    kind = re.search(r'type\s*=\s*"?([^";]+)"?', content_type, re.I)
    if kind and kind.group(1).strip().lower() != "application/dicom":
        raise HubError(
            f"parts of type {kind.group(1)[:60]!r} are not taken: application/dicom", 415
        )
    found = re.search(r'boundary\s*=\s*"?([^";]+)"?', content_type, re.I)
    if not found or not 1 <= len(found.group(1).strip()) <= 70:
        raise HubError("multipart/related without a boundary", 400)
    delimiter = b"\r\n--" + found.group(1).strip().encode("latin-1")
    pieces = (b"\r\n" + body).split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise HubError("the multipart body is cut short or has no parts", 400)
    out = []
    for piece in pieces[1:-1]:
        head, sep, content = piece.partition(b"\r\n\r\n")
        if not sep:
            raise HubError("a part has no headers' end", 400)
        part_type = re.search(rb"(?im)^content-type:\s*([^;\r\n]+)", head)
        if part_type and part_type.group(1).strip().lower() != b"application/dicom":
            raise HubError("every part must be application/dicom", 415)
        out.append(content)
    if not out or len(out) > MAX_PARTS:
        raise HubError(f"a request carries 1 to {MAX_PARTS} instances", 400)
    return out


def _checked(
    data: bytes, study: index.Study | None, clinic: str
) -> tuple[pydicom.Dataset, index.Study]:
    """The dataset of one part, and the study it belongs to; else ``Refused``."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
        study_uid = str(ds.StudyInstanceUID)
    except (InvalidDicomError, Exception) as exc:  # noqa: BLE001 - any bytes may come
        raise Refused(CANNOT_UNDERSTAND, f"not a readable DICOM file: {exc}"[:300]) from None
    if sop_class not in SR_CLASSES:
        why = f"SOP class {sop_class[:64]} is not a structured report: images come from boxes"
        raise Refused(NOT_SUPPORTED, why, sop_class[:64], sop_uid[:64])
    for name, uid in (("SOP Instance", sop_uid), ("Study Instance", study_uid),
                      ("Series Instance", str(ds.get("SeriesInstanceUID", "")))):  # fmt: skip
        if not is_valid_uid(uid):
            raise Refused(CANNOT_UNDERSTAND, f"{name} UID {uid[:70]!r} is not a UID",
                          sop_class, sop_uid[:64])  # fmt: skip
    target = study if study is not None else index.study(request_store(), study_uid, clinic)
    if target is None or target.uid != study_uid:
        raise Refused(DOES_NOT_MATCH, f"study {study_uid} is not one this hub shows here",
                      sop_class, sop_uid)  # fmt: skip
    if str(ds.get("PatientID", "")) != target.row["patient_id"]:
        raise Refused(DOES_NOT_MATCH, f"its Patient ID is not study {study_uid}'s",
                      sop_class, sop_uid)  # fmt: skip
    return ds, target


def _keep(store: FileHubStore, data: bytes, ds: pydicom.Dataset, s: index.Study) -> bool:
    """Keep one report; False: it was kept before, byte for byte."""
    sop = str(ds.SOPInstanceUID)
    sha = hashlib.sha256(data).hexdigest()
    if store.has_instance(sop, sha):
        return False
    taken = store.db.execute(
        "SELECT sha256 FROM instances WHERE sop_instance_uid=? AND sha256<>?", [sop, sha]
    ).fetchone()
    if taken is not None:
        raise Refused(DOES_NOT_MATCH, f"SOP Instance UID {sop} is another instance's",
                      str(ds.SOPClassUID), sop)  # fmt: skip
    part = store.new_instance()
    try:
        part.write(data)
    except BaseException:
        part.discard()
        raise
    row = {"sop_instance_uid": sop, "sha256": sha, "study_uid": s.key,
           "box_id": s.row["box_id"], "transfer_id": index.FROM_VIEWER}  # fmt: skip
    store.keep_instance(row, part)
    return True


def store_parts(parts: list[bytes], study_uid: str | None, clinic: str, base: str) -> Outcome:
    """Keep each structured report of the request; ``study_uid``: the study the URL
    names, else each part's own."""
    store = request_store()
    study = None
    if study_uid is not None:
        study = index.study(store, study_uid, clinic)
        if study is None:
            raise HubError(f"no study {study_uid[:70]} here", 404)
    out = Outcome()
    for data in parts:
        try:
            ds, s = _checked(data, study, clinic)
            new = _keep(store, data, ds, s)
        except Refused as refused:
            log.warning("STOW from %s refused: %s", g.get("user", ""), refused.why)
            out.failed.append(refused)
            continue
        sop, label = str(ds.SOPInstanceUID), str(ds.get("SeriesDescription", ""))[:64]
        if new:
            access.audit(store, "measurements_saved", s.key, f"{sop} {label}".strip())
            log.info("%s saved %s (%s) on study %s", g.get("user", ""), sop, label, s.key)
        series = str(ds.SeriesInstanceUID)
        url = f"{base}/studies/{s.uid}/series/{series}/instances/{sop}"
        out.stored.append({"00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                           "00081155": {"vr": "UI", "Value": [sop]},
                           "00081190": {"vr": "UR", "Value": [url]}})  # fmt: skip
    return out


def answer(out: Outcome, study_url: str) -> tuple[dict[str, Any], int]:
    """The Store Instances Response (PS3.18 10.5.3) and its status: 200 all kept, 202
    some, 409 none."""
    body: dict[str, Any] = {"00081190": {"vr": "UR", "Value": [study_url]}} if study_url else {}
    if out.stored:
        body["00081199"] = {"vr": "SQ", "Value": out.stored}
    if out.failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": [f.sop_class]} if f.sop_class else {"vr": "UI"},
             "00081155": {"vr": "UI", "Value": [f.sop_uid]} if f.sop_uid else {"vr": "UI"},
             "00081197": {"vr": "US", "Value": [f.reason]}}
            for f in out.failed]}  # fmt: skip
    status = 409 if not out.stored else 202 if out.failed else 200
    return body, status
