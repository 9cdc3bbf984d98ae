"""The box's read API, through Flask's test client on a real store."""

import pydicom
import pytest

from devkit.corpus import data_file, pydicom_file
from edge.config import load
from edge.intake import accept_file
from edge.store import Store
from edge.web import create_app


@pytest.fixture
def client(tmp_path):
    cfg = load(None, env={"RADSETU_DATA_DIR": str(tmp_path / "data"), "RADSETU_BOX_ID": "b1"})
    store = Store(cfg.data_dir)
    for p in (data_file("693_UNCI.dcm"), data_file("MR2_UNCR.dcm")):
        with open(p, "rb") as f:
            accept_file(store, f, p.stat().st_size, "test", 1 << 40)
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.PatientName = "<script>alert(1)</script>"
    p = tmp_path / "xss.dcm"
    ds.save_as(p)
    with open(p, "rb") as f:
        accept_file(store, f, p.stat().st_size, "test", 1 << 40)
    store.close()
    app = create_app(cfg)
    return app.test_client()


def test_list(client):
    r = client.get("/api/studies")
    assert r.status_code == 200 and r.is_json
    studies = r.get_json()["studies"]
    assert len(studies) == 3
    for s in studies:
        assert set(s) >= {
            "study_uid",
            "patient_name",
            "patient_id",
            "modality",
            "description",
            "instances",
            "bytes",
            "received",
            "state",
        }
        assert s["state"] == "receiving" and s["instances"] == 1 and s["bytes"] > 0


def test_detail(client):
    uid = next(
        s["study_uid"]
        for s in client.get("/api/studies").get_json()["studies"]
        if s["modality"] == "MR"
    )
    d = client.get(f"/api/studies/{uid}").get_json()
    assert d["patient_id"] and d["instance_count"] == 1
    (inst,) = d["instances"]
    assert inst["size"] == data_file("MR2_UNCR.dcm").stat().st_size
    assert len(inst["sha256"]) == 64
    assert inst["transfer_syntax"] == "1.2.840.10008.1.2.1"
    assert inst["sop_instance_uid"]


def test_html_in_a_patient_name_is_data(client):
    names = [s["patient_name"] for s in client.get("/api/studies").get_json()["studies"]]
    assert "<script>alert(1)</script>" in names
    raw = client.get("/api/studies").get_data(as_text=True)
    assert "<script>" not in raw  # JSON escapes it; no page can run it by accident


@pytest.mark.parametrize(
    "path",
    [
        "/api/studies/1.2.3",
        "/api/studies/../../etc/passwd",
        "/api/studies/%3Cscript%3E",
        "/api/nothing",
    ],
)
def test_unknown_is_404_json(client, path):
    r = client.get(path)
    assert r.status_code == 404 and r.is_json


def test_repairs_are_shown(tmp_path):
    from common.dicomfile import index_existing

    cfg = load(None, env={"RADSETU_DATA_DIR": str(tmp_path / "d"), "RADSETU_BOX_ID": "b1"})
    store = Store(cfg.data_dir)
    store.object_path("cd" + "1" * 62).write_bytes(b"damaged")
    store.check(index_existing)
    store.close()
    (r,) = create_app(cfg).test_client().get("/api/repairs").get_json()["repairs"]
    assert r["kind"] == "quarantined" and "damaged file" in r["detail"]
