"""DICOMweb read endpoints (PS3.18) over the hub's store, so that OHIF or Weasis can
open hub studies: QIDO-RS search of studies, series and instances (DICOM JSON), and
WADO-RS retrieve of instances (the stored files, byte for byte) and of metadata.

The attributes come from each stored instance's header, read when asked; a study
index for large hubs is a later step.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pydicom
from flask import Blueprint, Response, abort, request
from pydicom.multival import MultiValue

from common.dicomtext import dicom_text
from hub.db import request_store as _store

dicomweb = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")

JSON = "application/dicom+json"
STUDY_TAGS = ("StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
              "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
              "StudyInstanceUID", "StudyID", "ReferringPhysicianName")  # fmt: skip
SERIES_TAGS = ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription")
INSTANCE_TAGS = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
                 "NumberOfFrames")  # fmt: skip
# query keys a client may match on, at each level
MATCH = {"PatientID", "PatientName", "StudyDate", "AccessionNumber", "StudyInstanceUID",
         "ModalitiesInStudy", "Modality", "SeriesInstanceUID", "SOPInstanceUID"}  # fmt: skip


def _headers(study_uid: str | None = None) -> Iterator[tuple[str, pydicom.Dataset]]:
    """(object key, header) of every stored instance, or of one study's."""
    store = _store()
    q = "SELECT path FROM instances"
    args: list[Any] = []
    if study_uid:
        q += " WHERE study_uid=?"
        args.append(study_uid)
    for (rel,) in store.db.execute(q + " ORDER BY study_uid, stored_at", args).fetchall():
        with store.blobs.open(rel) as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        yield rel, ds


def _json(ds: pydicom.Dataset, keywords: tuple[str, ...]) -> dict[str, Any]:
    sub = pydicom.Dataset()
    for k in keywords:
        if k in ds:
            sub.add(ds.data_element(k))
    return sub.to_json_dict()


def _matches(ds: pydicom.Dataset, params: dict[str, str], level_modalities: set[str]) -> bool:
    for key, want in params.items():
        if key == "ModalitiesInStudy":
            if want not in level_modalities:
                return False
            continue
        raw = ds.get(key, "")
        # a multi-valued attribute matches when one of its values does (PS3.4 C.2.2.2)
        haves = [dicom_text(v) for v in raw] if isinstance(raw, MultiValue) else [dicom_text(raw)]
        if not any(_value_matches(key, have, want) for have in haves):
            return False
    return True


def _value_matches(key: str, have: str, want: str) -> bool:
    if key == "PatientName" and want.endswith("*"):
        return have.upper().startswith(want[:-1].upper())
    if key == "StudyDate" and "-" in want:
        lo, _, hi = want.partition("-")
        return (not lo or have >= lo) and (not hi or have <= hi)
    return have == want


def _params() -> dict[str, str]:
    out = {}
    for key, value in request.args.items():
        if key in MATCH and value:
            out[key] = value
        elif key not in {"limit", "offset", "includefield", "fuzzymatching"}:
            abort(400, f"{key} is not a supported query key")
    return out


def _answer(items: list[dict[str, Any]]) -> Response:

    offset = int(request.args.get("offset", 0) or 0)
    limit = int(request.args.get("limit", 0) or 0)
    items = items[offset : offset + limit if limit else None]
    if not items:
        return Response(status=204)
    return Response(json.dumps(items), mimetype=JSON)


def _base() -> str:
    return request.host_url.rstrip("/") + "/dicomweb"


@dicomweb.get("/studies")
def search_studies() -> Response:
    params = _params()
    studies: dict[str, dict[str, Any]] = {}
    for _path, ds in _headers():
        uid = str(ds.StudyInstanceUID)
        s = studies.setdefault(uid, {"ds": ds, "series": set(), "n": 0, "mods": set()})
        s["series"].add(str(ds.get("SeriesInstanceUID", "")))
        s["n"] += 1
        s["mods"].add(str(ds.get("Modality", "")))
    out = []
    for uid, s in studies.items():
        study_params = {
            k: v
            for k, v in params.items()
            if k not in {"Modality", "SeriesInstanceUID", "SOPInstanceUID"}
        }
        if not _matches(s["ds"], study_params, s["mods"]):
            continue
        item = _json(s["ds"], STUDY_TAGS)
        item["00080061"] = {"vr": "CS", "Value": sorted(m for m in s["mods"] if m)}
        item["00201206"] = {"vr": "IS", "Value": [len(s["series"])]}
        item["00201208"] = {"vr": "IS", "Value": [s["n"]]}
        item["00081190"] = {"vr": "UR", "Value": [f"{_base()}/studies/{uid}"]}
        out.append(item)
    return _answer(out)


@dicomweb.get("/studies/<study_uid>/series")
def search_series(study_uid: str) -> Response:
    params = _params()
    series: dict[str, dict[str, Any]] = {}
    for _path, ds in _headers(study_uid):
        uid = str(ds.get("SeriesInstanceUID", ""))
        s = series.setdefault(uid, {"ds": ds, "n": 0})
        s["n"] += 1
    out = []
    for uid, s in series.items():
        if not _matches(s["ds"], params, {str(s["ds"].get("Modality", ""))}):
            continue
        item = _json(s["ds"], SERIES_TAGS + ("StudyInstanceUID",))
        item["00201209"] = {"vr": "IS", "Value": [s["n"]]}
        item["00081190"] = {"vr": "UR", "Value": [f"{_base()}/studies/{study_uid}/series/{uid}"]}
        out.append(item)
    return _answer(out)


@dicomweb.get("/studies/<study_uid>/series/<series_uid>/instances")
def search_instances(study_uid: str, series_uid: str) -> Response:
    params = _params()
    out = []
    for _path, ds in _headers(study_uid):
        if str(ds.get("SeriesInstanceUID", "")) != series_uid or not _matches(ds, params, set()):
            continue
        item = _json(ds, INSTANCE_TAGS + ("StudyInstanceUID", "SeriesInstanceUID"))
        url = f"{_base()}/studies/{study_uid}/series/{series_uid}/instances/{ds.SOPInstanceUID}"
        item["00081190"] = {"vr": "UR", "Value": [url]}
        out.append(item)
    return _answer(out)


def _multipart(keys: list[str]) -> Response:
    """The stored files as they are, one part each (PS3.18 multipart/related)."""
    boundary = uuid.uuid4().hex
    blobs = _store().blobs  # the parts are sent after the request's store is closed

    def parts() -> Iterator[bytes]:
        for key in keys:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            yield blobs.get(key)
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return Response(
        parts(),
        mimetype=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


def _select(study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[str]:
    found = [
        key
        for key, ds in _headers(study_uid)
        if (series_uid is None or str(ds.get("SeriesInstanceUID", "")) == series_uid)
        and (sop_uid is None or str(ds.SOPInstanceUID) == sop_uid)
    ]
    if not found:
        abort(404)
    return found


@dicomweb.get("/studies/<study_uid>")
def retrieve_study(study_uid: str) -> Response:
    return _multipart(_select(study_uid))


@dicomweb.get("/studies/<study_uid>/series/<series_uid>")
def retrieve_series(study_uid: str, series_uid: str) -> Response:
    return _multipart(_select(study_uid, series_uid))


@dicomweb.get("/studies/<study_uid>/series/<series_uid>/instances/<sop_uid>")
def retrieve_instance(study_uid: str, series_uid: str, sop_uid: str) -> Response:
    return _multipart(_select(study_uid, series_uid, sop_uid))


@dicomweb.get("/studies/<study_uid>/metadata")
def study_metadata(study_uid: str) -> Response:

    items = []
    for key in _select(study_uid):
        with _store().blobs.open(key) as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        d = ds.to_json_dict(bulk_data_threshold=4096, bulk_data_element_handler=lambda _e: "")
        items.append(d)
    return Response(json.dumps(items), mimetype=JSON)
