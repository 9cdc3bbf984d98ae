"""Values as DICOM writes them: a multi-valued string joined with a backslash and a
person name in its DICOM form, in the box's API and pages and the hub's tags, never
the text of a Python list."""

from __future__ import annotations

import io

import pydicom
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from common.dicomtext import dicom_text
from devkit.corpus import data_file
from edge import accounts
from edge import config as edge_config
from edge.intake import accept_file
from edge.web import create_app as box_app
from hub.render import key_tags

PASSWORD = "correct horse battery"


def test_dicom_text():
    assert dicom_text(MultiValue(str, ["PR", "US"])) == "PR\\US"
    assert dicom_text(PersonName("Rao^Asha=ರಾವ್^ಆಶಾ")) == "Rao^Asha=ರಾವ್^ಆಶಾ"
    assert dicom_text(MultiValue(PersonName, ["A^B", "C^D"])) == "A^B\\C^D"
    assert dicom_text(None) == "" and dicom_text(5) == "5"


def multi_valued(tmp_path):
    ds = pydicom.dcmread(data_file("693_UNCI.dcm"))
    ds.AccessionNumber = ["PR", "US"]
    ds.StudyDescription = ["CT HEAD", "PLAIN"]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = "Rao^Asha"
    path = tmp_path / "multi.dcm"
    ds.save_as(path)
    return path


def test_multi_values_in_the_box_api_and_pages(tmp_path):
    path = multi_valued(tmp_path)
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[store]\nreserve_bytes = 0\n')
    app = box_app(edge_config.load(cfg))
    store = app.config["RADSETU_STORE"]
    data = path.read_bytes()
    accept_file(store, io.BytesIO(data), len(data), "test", 1 << 30)
    c = app.test_client()
    (study,) = c.get("/api/studies").get_json()["studies"]
    assert study["accession_number"] == "PR\\US"
    assert study["description"] == "CT HEAD\\PLAIN"
    accounts.add_user(store.db, "asha", "staff", PASSWORD)
    page = c.get("/login").get_data(as_text=True)
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    c.post("/login", data={"csrf": token, "username": "asha", "password": PASSWORD})
    home = c.get("/").get_data(as_text=True)
    assert "CT HEAD\\PLAIN" in home and "Rao Asha" in home
    assert "[&#39;" not in home and "['" not in home


def test_multi_values_in_the_hub_tags(tmp_path):
    tags = key_tags(multi_valued(tmp_path))
    assert tags["StudyDescription"] == "CT HEAD\\PLAIN"
    assert "[" not in "".join(tags.values())
