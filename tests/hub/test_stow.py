"""A viewer's measurements saved at the hub (STOW-RS, hub/stow.py): a structured report
of a study the hub shows is kept as an instance of it, served back by DICOMweb and
listed on the reading page; anything else is refused, part by part, and nothing that
was there before changes."""

from __future__ import annotations

import io
import re

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from hub import access, users
from hub.measurements import of_study
from hub.store import FileHubStore
from tests.helpers import hub_app, hub_login
from tests.hub.test_dicomindex import arrive, study_of

PASSWORD = "correct horse battery"
SR = "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.fixture
def hub(tmp_path):
    app, store = hub_app(tmp_path)
    users.add(store, "dr-rao", "radiologist", PASSWORD)
    users.add(store, "ops", "operator", PASSWORD)
    study, instances = study_of(3)
    arrive(store, study, instances)
    pid = str(pydicom.dcmread(io.BytesIO(instances[0][1])).PatientID)
    auth = {"Authorization": f"Bearer {access.add_token(store, 'dr-rao', 'test')}"}
    yield app, store, auth, study, pid, instances
    store.close()


def report(study: str, pid: str, **attrs: str) -> bytes:
    """pydicom's real Comprehensive SR (a diameter of 3 cm), made this study's."""
    ds = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    ds.StudyInstanceUID, ds.PatientID = study, pid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesDescription = "Measurements"
    for k, v in attrs.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def body(*parts: bytes, boundary: str = "b0und4ry") -> tuple[bytes, str]:
    out = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in parts
    )
    kind = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    return out + b"--" + boundary.encode() + b"--\r\n", kind


def post(app, auth, *parts: bytes, path: str = "/dicomweb/studies"):
    data, kind = body(*parts)
    return app.test_client().post(path, data=data, headers={**auth, "Content-Type": kind})


def failures(r) -> list[int]:
    return [f["00081197"]["Value"][0] for f in r.json.get("00081198", {}).get("Value", [])]


def count(store: FileHubStore, study: str) -> int:
    return store.db.execute("SELECT count(*) FROM instances WHERE study_uid=?", [study]).fetchone()[
        0
    ]


def test_a_structured_report_is_kept_served_and_read_back(hub):
    app, store, auth, study, pid, _ = hub
    sr = report(study, pid)
    r = post(app, auth, sr)
    assert r.status_code == 200, r.data
    (kept,) = r.json["00081199"]["Value"]
    sop = str(pydicom.dcmread(io.BytesIO(sr)).SOPInstanceUID)
    assert kept["00081155"]["Value"] == [sop] and kept["00081150"]["Value"] == [SR]
    assert count(store, study) == 4
    assert post(app, auth, sr).status_code == 200 and count(store, study) == 4  # again: no change

    # DICOMweb lists and serves it like the study's images
    series = app.test_client().get(f"/dicomweb/studies/{study}/series", headers=auth).json
    assert sorted(s["00080060"]["Value"][0] for s in series) == ["CT", "CT", "SR"]
    got = app.test_client().get(kept["00081190"]["Value"][0].split("localhost", 1)[1],
                                headers={**auth, "Accept": "multipart/related; "
                                         'type="application/dicom"'})  # fmt: skip
    assert got.status_code == 200 and sr in got.data  # byte for byte
    summary = app.test_client().get(f"/dicomweb/studies?StudyInstanceUID={study}", headers=auth)
    assert summary.json[0]["00201208"]["Value"] == [4]
    # a report numbered before the images does not speak for the study's header
    forged = report(study, pid, PatientName="Forged^Name", SeriesNumber="0", InstanceNumber="0")
    assert post(app, auth, forged).status_code == 200
    summary = app.test_client().get(f"/dicomweb/studies?StudyInstanceUID={study}", headers=auth)
    assert summary.json[0]["00100010"]["Value"] != [{"Alphabetic": "Forged^Name"}], summary.json
    assert summary.json[0]["00201208"]["Value"] == [5]

    # the reading page's list, and who saved it
    saved, _forged = of_study(store, study)
    assert saved.title == "Measurements" and not saved.problem
    assert [m.line() for m in saved.measurements] == ["Diameter 3 cm", "Diameter 3 cm"]
    rows = access.audit_rows(store, action="measurements_saved")
    assert [(a["username"], a["study_uid"]) for a in rows] == [("dr-rao", study)] * 2


def test_what_is_not_a_report_of_a_study_here_is_refused_and_nothing_changes(hub):
    app, store, auth, study, pid, instances = hub
    ct_sop, ct_bytes = instances[0]
    before = count(store, study)
    cases = {
        "an image": (ct_bytes, 0x0122),
        "not DICOM": (b"\x00" * 200 + b"<html>", 0xC000),
        "cut short": (report(study, pid)[:300], 0xC000),
        "another study": (report(generate_uid(), pid), 0xA900),
        "another patient": (report(study, "SOMEONE-ELSE"), 0xA900),
        "an image's UID": (report(study, pid, SOPInstanceUID=ct_sop), 0xA900),
        "a traversal as UID": (report(study, pid, SOPInstanceUID="../../etc/passwd"), 0xC000),
    }
    for name, (data, reason) in cases.items():
        r = post(app, auth, data)
        assert r.status_code == 409 and failures(r) == [reason], (name, r.status_code, r.data)
    assert count(store, study) == before
    sop, data = instances[0]
    stored = store.db.execute("SELECT path FROM instances WHERE sop_instance_uid=?", [sop])
    with store.blobs.open(stored.fetchone()[0]) as f:
        assert f.read() == data  # the image whose UID was claimed is untouched

    # one good and one bad part: the good one is kept (202)
    r = post(app, auth, report(study, pid), ct_bytes)
    assert r.status_code == 202 and failures(r) == [0x0122] and count(store, study) == before + 1
    # the study the URL names, or the clinic it is narrowed to, must be the report's
    other, more = study_of(1)
    arrive(store, other, more)
    assert post(app, auth, report(study, pid), path=f"/dicomweb/studies/{other}").status_code == 409
    narrowed = "/dicomweb/clinics/another-box/studies"
    assert failures(post(app, auth, report(study, pid), path=narrowed)) == [0xA900]
    assert (
        post(app, auth, report(study, pid), path=f"/dicomweb/studies/{generate_uid()}").status_code
        == 404
    )


def test_malformed_requests_are_refused_whole(hub):
    app, store, auth, study, pid, _ = hub
    client, sr = app.test_client(), report(study, pid)
    data, kind = body(sr)

    def status(payload: bytes, content_type: str, who=auth) -> int:
        return client.post("/dicomweb/studies", data=payload,
                           headers={**who, "Content-Type": content_type}).status_code  # fmt: skip

    assert status(sr, "application/dicom") == 415
    assert status(data, 'multipart/related; type="image/jpeg"; boundary="b0und4ry"') == 415
    assert status(data, 'multipart/related; type="application/dicom"') == 400  # no boundary
    assert status(data[: len(data) // 2], kind) == 400  # cut short
    assert status(body(*[sr] * 17)[0], kind) == 400  # too many parts
    assert status(b"x" * (8 * 1024 * 1024 + 1), kind) == 413
    ops = {"Authorization": f"Bearer {access.add_token(store, 'ops', 'test')}"}
    assert status(data, kind, ops) == 403  # an operator does not write into studies
    assert status(data, kind, {}) == 401
    assert count(store, study) == 3


def test_a_session_writes_only_with_its_csrf_token_and_the_page_escapes_the_title(hub):
    app, store, auth, study, pid, _ = hub
    client = app.test_client()
    hub_login(client, "dr-rao", PASSWORD)
    page = client.get(f"/read/{study}").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # the session's own
    data, kind = body(report(study, pid, SeriesDescription="<script>alert(1)</script>"))
    assert (
        client.post("/dicomweb/studies", data=data, headers={"Content-Type": kind}).status_code
        == 400
    )
    r = client.post("/dicomweb/studies", data=data,
                    headers={"Content-Type": kind, "X-CSRF-Token": csrf})  # fmt: skip
    assert r.status_code == 200, r.data
    page = client.get(f"/read/{study}").get_data(as_text=True)
    section = page.split('id="measurements"', 1)[1].split("</section>", 1)[0]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section and "<script>alert" not in section
    assert section.count('class="measurement"') == 2 and "Diameter 3 cm" in section
    # the light viewer lists the images only
    sops = re.search(r"const instances = (\[.*?\]);", page).group(1)
    assert sops.count('"sop"') == 3
