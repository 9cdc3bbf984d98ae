"""DICOMweb (PS3.18) over the hub's studies, for OHIF (served at ``/ohif/``), Weasis or
any other client: QIDO-RS search of studies, series and instances; WADO-RS retrieve of
instances (the stored files, byte for byte), metadata (bulk data by reference), frames
(compressed ones untouched when the client accepts their syntax, else native little
endian), bulk data and rendered images; STOW-RS of a viewer's structured reports
(hub/stow.py).

Only the worklist's studies are visible (hub/dicomindex.py), to a radiologist's session
or an API token; reading a study's content is audited as ``view`` (hub/access.py).

The same service is also at ``/dicomweb/clinics/<box>/``, narrowed to one clinic's
studies: a Patient ID is a clinic's own, so a viewer opened on a study (OHIF, whose
study browser lists the patient's other studies by Patient ID) is given that clinic's
root, and never shows another clinic's patient who happens to have the same number.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import imagecodecs
import pydicom
from flask import Blueprint, Response, abort, g, request

from hub import dicomindex as index
from hub import dicomparts as parts
from hub import stow
from hub.db import request_store as _store
from hub.errors import HubError
from hub.render import RenderError, picture

log = logging.getLogger("radsetu.hub.dicomweb")
dicomweb = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")
CLINIC_PREFIX = "/dicomweb/clinics/<clinic>"


@dicomweb.url_value_preprocessor
def _clinic(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Under ``CLINIC_PREFIX``: the clinic every answer is narrowed to."""
    g.clinic = (values or {}).pop("clinic", "")


JSON = "application/dicom+json"
STUDY_TAGS = ("StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
              "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
              "StudyInstanceUID", "StudyID", "ReferringPhysicianName")  # fmt: skip
SERIES_TAGS = ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
               "SeriesDate", "SeriesTime", "BodyPartExamined")  # fmt: skip
INSTANCE_TAGS = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
                 "NumberOfFrames", "BitsAllocated")  # fmt: skip
PAGING = {"limit", "offset", "includefield", "fuzzymatching"}
STUDY_ONLY = {"ModalitiesInStudy"}


def _query() -> tuple[dict[str, str], set[str], bool]:
    """(match keys -> value, include keywords, include all) of this request."""
    try:
        match = {
            parts.keyword(k): v
            for k, v in request.args.items()
            if k not in PAGING and k not in STUDY_ONLY and v
        }
        match.update({k: v for k, v in request.args.items() if k in STUDY_ONLY and v})
        names, every = parts.includes(request.args.getlist("includefield"))
    except parts.QueryError as exc:
        abort(400, str(exc))
    return match, names, every


def _paging() -> tuple[int, int]:
    """(offset, limit) of this request; a limit of 0: no limit."""
    try:
        offset = max(int(request.args.get("offset", 0) or 0), 0)
        limit = max(int(request.args.get("limit", 0) or 0), 0)
    except ValueError:
        abort(400, "offset and limit are whole numbers")
    return offset, limit


def _answer(items: list[dict[str, Any]]) -> Response:
    offset, limit = _paging()
    items = items[offset : offset + limit if limit else None]
    if not items:
        return Response(status=204)
    return Response(json.dumps(items), mimetype=JSON)


def _base() -> str:
    clinic = g.get("clinic", "")
    return request.host_url.rstrip("/") + "/dicomweb" + (f"/clinics/{clinic}" if clinic else "")


def _with_uid(item: dict[str, Any], s: index.Study) -> dict[str, Any]:
    item["0020000D"] = {"vr": "UI", "Value": [s.uid]}
    return item


def _study(key: str) -> index.Study:
    found = index.study(_store(), key, g.get("clinic", ""))
    if found is None:
        abort(404)
    return found


@dicomweb.get("/studies")
def search_studies() -> Response:
    match, names, every = _query()
    out = []
    store, clinic = _store(), g.get("clinic", "")
    if "StudyInstanceUID" in match:  # a viewer opening a study: read that study alone
        found = (index.study(store, u, clinic) for u in match["StudyInstanceUID"].split("\\"))
        candidates = list({s.key: s for s in found if s is not None}.values())
    else:
        candidates = index.studies(store, match.get("PatientID", ""), clinic)
    offset, limit = _paging()
    for s in candidates:  # newest first; a page needs only its studies' summaries
        if limit and len(out) >= offset + limit:
            break
        if "PatientID" in match and s.row["patient_id"] != match["PatientID"]:
            continue
        summary = index.summary(store, s)
        if summary is None:
            continue
        first, mods = summary.first, summary.modalities
        if "ModalitiesInStudy" in match and not set(match["ModalitiesInStudy"].split("\\")) & set(
            mods
        ):
            continue
        own = {k: v for k, v in match.items() if k not in STUDY_ONLY and k != "StudyInstanceUID"}
        if not all(parts.matches(first, k, v) for k, v in own.items()):
            continue
        tags = STUDY_TAGS + tuple(names) if not every else tuple(k for k in first.dir())
        item = _with_uid(parts.element_json(first, tags), s)
        item["00080061"] = {"vr": "CS", "Value": mods}
        item["00201206"] = {"vr": "IS", "Value": [summary.series]}
        item["00201208"] = {"vr": "IS", "Value": [summary.instances]}
        item["00081190"] = {"vr": "UR", "Value": [f"{_base()}/studies/{s.uid}"]}
        out.append(item)
    return _answer(out)


@dicomweb.post("/studies")
@dicomweb.post("/studies/<study_uid>")
def store_instances(study_uid: str | None = None) -> Response:
    """STOW-RS: a viewer's structured report of a study (hub/stow.py)."""
    if (request.content_length or 0) > stow.MAX_BODY:
        raise HubError(f"a request of more than {stow.MAX_BODY} bytes is refused", 413)
    body = request.stream.read(stow.MAX_BODY + 1)
    if len(body) > stow.MAX_BODY:
        raise HubError(f"a request of more than {stow.MAX_BODY} bytes is refused", 413)
    found = stow.split(request.headers.get("Content-Type", ""), body)
    out = stow.store_parts(found, study_uid, g.get("clinic", ""), _base())
    answer, status = stow.answer(out, f"{_base()}/studies/{study_uid}" if study_uid else "")
    return Response(json.dumps(answer), status=status, mimetype=JSON)


@dicomweb.get("/studies/<study_uid>/series")
def search_series(study_uid: str) -> Response:
    match, names, _every = _query()
    s = _study(study_uid)
    out = []
    for uid, members in s.series().items():
        ds = members[0].ds
        if not all(parts.matches(ds, k, v) for k, v in match.items()):
            continue
        item = _with_uid(parts.element_json(ds, SERIES_TAGS + tuple(names)), s)
        item["00201209"] = {"vr": "IS", "Value": [len(members)]}
        item["00081190"] = {"vr": "UR", "Value": [f"{_base()}/studies/{s.uid}/series/{uid}"]}
        out.append(item)
    return _answer(out)


@dicomweb.get("/studies/<study_uid>/instances", defaults={"series_uid": None})
@dicomweb.get("/studies/<study_uid>/series/<series_uid>/instances")
def search_instances(study_uid: str, series_uid: str | None) -> Response:
    match, names, _every = _query()
    s = _study(study_uid)
    out = []
    for i in s.instances:
        if series_uid is not None and i.series_uid != series_uid:
            continue
        if not all(parts.matches(i.ds, k, v) for k, v in match.items()):
            continue
        tags = INSTANCE_TAGS + ("SeriesInstanceUID", "Modality") + tuple(names)
        item = _with_uid(parts.element_json(i.ds, tags), s)
        url = f"{_base()}/studies/{s.uid}/series/{i.series_uid}/instances/{i.sop_uid}"
        item["00081190"] = {"vr": "UR", "Value": [url]}
        out.append(item)
    return _answer(out)


def _select(
    study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[index.Instance]:
    found = [
        i
        for i in _study(study_uid).instances
        if (series_uid is None or i.series_uid == series_uid)
        and (sop_uid is None or i.sop_uid == sop_uid)
    ]
    if not found:
        abort(404)
    return found


def _files(found: list[index.Instance]) -> Response:
    """The stored files, one part each: as they are, unless the client does not take
    their transfer syntax (dicomparts.file_as_accepted)."""
    blobs = _store().blobs  # the parts are sent after the request's store is closed
    accept = request.headers.get("Accept", "")

    def each() -> Any:
        for i in found:
            try:
                data = parts.file_as_accepted(blobs.get(i.key), accept)
            except (RenderError, ValueError, OSError) as exc:  # the others still go
                log.warning("instance %s left out of a retrieve: %s", i.sop_uid, exc)
                continue
            yield "application/dicom", data

    body, ctype = parts.multipart(each(), "application/dicom")
    return Response(body, content_type=ctype)


@dicomweb.get("/studies/<study_uid>")
def retrieve_study(study_uid: str) -> Response:
    return _files(_select(study_uid))


@dicomweb.get("/studies/<study_uid>/series/<series_uid>")
def retrieve_series(study_uid: str, series_uid: str) -> Response:
    return _files(_select(study_uid, series_uid))


@dicomweb.get("/studies/<study_uid>/series/<series_uid>/instances/<sop_uid>")
def retrieve_instance(study_uid: str, series_uid: str, sop_uid: str) -> Response:
    return _files(_select(study_uid, series_uid, sop_uid))


def _metadata(study_uid: str, found: list[index.Instance]) -> Response:
    s = _study(study_uid)
    items = []
    for i in found:
        url = f"{_base()}/studies/{s.uid}/series/{i.series_uid}/instances/{i.sop_uid}/bulk/"
        items.append(_with_uid(parts.metadata(i.ds, lambda tag, u=url: u + tag), s))
    return Response(json.dumps(items), mimetype=JSON)


@dicomweb.get("/studies/<study_uid>/metadata")
def study_metadata(study_uid: str) -> Response:
    return _metadata(study_uid, _select(study_uid))


@dicomweb.get("/studies/<study_uid>/series/<series_uid>/metadata")
def series_metadata(study_uid: str, series_uid: str) -> Response:
    return _metadata(study_uid, _select(study_uid, series_uid))


@dicomweb.get("/studies/<study_uid>/series/<series_uid>/instances/<sop_uid>/metadata")
def instance_metadata(study_uid: str, series_uid: str, sop_uid: str) -> Response:
    return _metadata(study_uid, _select(study_uid, series_uid, sop_uid))


def _whole(study_uid: str, series_uid: str, sop_uid: str) -> Any:
    """The instance with its pixel data."""
    (one,) = _select(study_uid, series_uid, sop_uid)
    with _store().blobs.open(one.key) as f:
        return pydicom.dcmread(f)


@dicomweb.get("/studies/<study_uid>/series/<series_uid>/instances/<sop_uid>/frames/<numbers>")
def retrieve_frames(study_uid: str, series_uid: str, sop_uid: str, numbers: str) -> Response:
    try:
        wanted = [int(n) for n in numbers.split(",")]
    except ValueError:
        abort(400, "frames are numbers from 1, separated by commas")
    ds = _whole(study_uid, series_uid, sop_uid)
    ts = str(ds.file_meta.TransferSyntaxUID)
    accept = request.headers.get("Accept", "")
    try:
        found = parts.frames(ds, wanted, parts.accepts_stored(accept, ts))
    except RenderError as exc:
        abort(404 if "outside" in str(exc) or "no pixel" in str(exc) else 406, str(exc))
    body, ctype = parts.multipart(found, "application/octet-stream")
    return Response(body, content_type=ctype)


@dicomweb.get("/studies/<study_uid>/series/<series_uid>/instances/<sop_uid>/bulk/<tag>")
def retrieve_bulk(study_uid: str, series_uid: str, sop_uid: str, tag: str) -> Response:
    ds = _whole(study_uid, series_uid, sop_uid)
    try:
        data = parts.bulk_value(ds, tag)
    except parts.QueryError as exc:
        abort(404, str(exc))
    if "multipart" not in request.headers.get("Accept", "multipart"):
        return Response(data, mimetype="application/octet-stream")
    body, ctype = parts.multipart([("application/octet-stream", data)], "application/octet-stream")
    return Response(body, content_type=ctype)


@dicomweb.get("/studies/<study_uid>/series/<series_uid>/instances/<sop_uid>/rendered",
              defaults={"number": 1})  # fmt: skip
@dicomweb.get(
    "/studies/<study_uid>/series/<series_uid>/instances/<sop_uid>/frames/<int:number>/rendered"
)
def rendered(study_uid: str, series_uid: str, sop_uid: str, number: int) -> Response:
    """One frame as PNG (or JPEG when asked), windowed by the instance's own window."""
    ds = _whole(study_uid, series_uid, sop_uid)
    try:
        img, _info = picture(ds, number - 1)
    except RenderError as exc:
        abort(404, str(exc))
    if "image/jpeg" in request.headers.get("Accept", ""):
        return Response(bytes(imagecodecs.jpeg8_encode(img, level=90)), mimetype="image/jpeg")
    return Response(bytes(imagecodecs.png_encode(img)), mimetype="image/png")
