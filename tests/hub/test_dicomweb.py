"""DICOMweb at the hub: QIDO-RS answers are DICOM JSON; WADO-RS gives back the box's
stored instance byte for byte."""

from __future__ import annotations

import json
import re
import urllib.request

import pydicom
from pydicom.valuerep import VR

from devkit.broker import Broker, Hub
from tests.conftest import storescu, wait_for
from tests.helpers import delivered, make_study, start_box

VRS = {v.value for v in VR}


def assert_dicom_json(items: list) -> None:  # type: ignore[type-arg]
    """PS3.18 F.2: an array of objects keyed by 8 hex digits, each with a known VR and
    a Value array (PN as objects with Alphabetic); and pydicom reads each one."""
    assert isinstance(items, list) and items
    for item in items:
        for tag, attr in item.items():
            assert re.fullmatch(r"[0-9A-F]{8}", tag), tag
            assert attr["vr"] in VRS, attr
            if "Value" in attr:
                assert isinstance(attr["Value"], list)
                if attr["vr"] == "PN":
                    assert all(isinstance(v, dict) and "Alphabetic" in v for v in attr["Value"])
        pydicom.Dataset.from_json(item)


def get(token: str, url: str) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def parts(content_type: str, body: bytes) -> list[bytes]:
    boundary = re.search(r"boundary=([^;]+)", content_type)[1].strip('"')  # type: ignore[index]
    out = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        assert b"application/dicom" in head
        out.append(data[:-2])  # the CRLF before the next boundary
    return out


def test_qido_and_wado_over_real_studies(tmp_path, boxes):
    broker = Broker(tmp_path / "broker").start()
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    try:
        box = start_box(boxes, tmp_path / "box", broker.mqtt_config())
        ct, ct_uid = make_study(tmp_path, "ct", 3)
        mr, mr_uid = make_study(tmp_path, "mr", 1, src="MR2_UNCR.dcm")
        storescu(box.dicom_port, ct + mr)
        for uid in (ct_uid, mr_uid):
            wait_for(lambda uid=uid: delivered(box, uid), 40, "the studies at the hub")
        base = f"http://127.0.0.1:{hub.web_port}/dicomweb"

        status, ctype, body = get(hub.token, f"{base}/studies")
        assert status == 200 and ctype.startswith("application/dicom+json")
        studies = json.loads(body)
        assert_dicom_json(studies)
        by_uid = {s["0020000D"]["Value"][0]: s for s in studies}
        assert set(by_uid) == {ct_uid, mr_uid}
        assert by_uid[ct_uid]["00201208"]["Value"] == [3]
        assert by_uid[mr_uid]["00080061"]["Value"] == ["MR"]

        status, _, body = get(hub.token, f"{base}/studies?ModalitiesInStudy=MR")
        assert [s["0020000D"]["Value"][0] for s in json.loads(body)] == [mr_uid]
        status, _, body = get(hub.token, f"{base}/studies?StudyInstanceUID={ct_uid}")
        (one,) = json.loads(body)  # as a viewer asks when it opens a study
        assert one["0020000D"]["Value"] == [ct_uid] and one["00201208"]["Value"] == [3]
        status, _, body = get(hub.token, f"{base}/studies?StudyInstanceUID={mr_uid}\\{ct_uid}")
        assert {s["0020000D"]["Value"][0] for s in json.loads(body)} == {ct_uid, mr_uid}
        assert get(hub.token, f"{base}/studies?StudyInstanceUID=1.2.3.999")[0] == 204
        assert get(hub.token, f"{base}/studies?PatientID=nobody")[0] == 204
        assert get(hub.token, f"{base}/studies?Bogus=1")[0] == 400

        status, _, body = get(hub.token, f"{base}/studies/{ct_uid}/series")
        series = json.loads(body)
        assert_dicom_json(series)
        series_uid = series[0]["0020000E"]["Value"][0]
        status, _, body = get(hub.token, f"{base}/studies/{ct_uid}/series/{series_uid}/instances")
        instances = json.loads(body)
        assert_dicom_json(instances)
        assert len(instances) == 3

        at_box = {i["sop_instance_uid"]: i for i in box.api(f"/api/studies/{ct_uid}")["instances"]}
        sop = instances[0]["00080018"]["Value"][0]
        status, ctype, body = get(
            hub.token, f"{base}/studies/{ct_uid}/series/{series_uid}/instances/{sop}"
        )
        assert status == 200 and ctype.startswith("multipart/related")
        (data,) = parts(ctype, body)
        sha = at_box[sop]["sha256"]
        stored_at_box = box.data_dir / "objects" / sha[:2] / f"{sha}.dcm"
        assert data == stored_at_box.read_bytes()

        status, ctype, body = get(hub.token, f"{base}/studies/{ct_uid}")
        assert len(parts(ctype, body)) == 3
        status, _, body = get(hub.token, f"{base}/studies/{ct_uid}/metadata")
        meta = json.loads(body)
        assert_dicom_json(meta)
        assert {m["00080018"]["Value"][0] for m in meta} == set(at_box)
        assert get(hub.token, f"{base}/studies/1.2.3.4")[0] == 404
    finally:
        hub.stop()
        broker.stop()
