"""Images rendered at the hub for the viewer: the windowing is checked against the
pixel values themselves, and compressed twins must render like their originals."""

from __future__ import annotations

import hashlib

import imagecodecs
import numpy as np
import pydicom
import pytest

from devkit.corpus import data_file, pydicom_file
from edge.config import Config
from hub import access, users
from hub import config as hub_config
from hub.store import FileHubStore
from hub.web import create_app


@pytest.fixture
def hub_client(tmp_path):
    """The hub's real app over a real store holding real instances."""
    store = FileHubStore(tmp_path / "hub")
    stored: dict[str, tuple[str, str]] = {}

    def put(path):
        data = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = {
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "sha256": hashlib.sha256(data).hexdigest(),
            "study_uid": str(ds.StudyInstanceUID),
            "box_id": "test-box",
            "transfer_id": "t",
        }
        store.put_instance(row, data)
        stored[path.name] = (row["study_uid"], row["sop_instance_uid"])

    cfg = hub_config.load(None, env={"RADSETU_HUB_DATA_DIR": str(tmp_path / "hub")})
    assert isinstance(cfg, Config)
    app = create_app(cfg)
    users.add(store, "dr-rao", "radiologist", "correct horse battery")
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {access.add_token(store, 'dr-rao')}"
    yield client, put, stored
    store.close()


def png(client, study, sop, **args):
    q = "&".join(f"{k}={v}" for k, v in args.items())
    r = client.get(f"/api/studies/{study}/instances/{sop}/rendered?{q}")
    assert r.status_code == 200, r.get_json()
    assert r.mimetype == "image/png"
    return imagecodecs.png_decode(r.data), r.headers


def test_ct_presets_are_the_dicom_linear_window_of_the_hounsfield_values(hub_client):
    client, put, stored = hub_client
    src = data_file("693_UNCI.dcm")
    put(src)
    ds = pydicom.dcmread(src)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for preset, (c, w) in {"brain": (40, 80), "lung": (-600, 1500), "bone": (400, 1800)}.items():
        img, headers = png(client, *stored[src.name], preset=preset)
        expected = np.clip(np.rint(((hu - (c - 0.5)) / (w - 1) + 0.5) * 255), 0, 255)
        assert img.shape == hu.shape and img.dtype == np.uint8
        assert np.array_equal(img, expected.astype(np.uint8)), preset
        assert headers["X-Window"].startswith(f"{c:g}/{w:g}")
    brain, _ = png(client, *stored[src.name], preset="brain")
    assert (brain[hu <= -1] == 0).all() and (brain[hu >= 80] == 255).all()
    assert 0 < (brain == 255).mean() < 1 and 0 < (brain == 0).mean() < 1


def test_compressed_twins_render_like_their_originals(hub_client):
    client, put, stored = hub_client
    for a, b in (
        (pydicom_file("MR_small.dcm"), pydicom_file("MR_small_jp2klossless.dcm")),
        (pydicom_file("MR_small.dcm"), pydicom_file("MR_small_jpeg_ls_lossless.dcm")),
        (pydicom_file("MR_small.dcm"), pydicom_file("MR_small_RLE.dcm")),
        (pydicom_file("MR_small.dcm"), pydicom_file("MR_small_bigendian.dcm")),
    ):
        put(a)
        put(b)
        img_a, _ = png(client, *stored[a.name], preset="soft_tissue")
        img_b, _ = png(client, *stored[b.name], preset="soft_tissue")
        assert np.array_equal(img_a, img_b), b.name


def test_frames_auto_window_and_refusals(hub_client):
    client, put, stored = hub_client
    multi = data_file("OBXXXX1A_rle_2frame.dcm")
    put(multi)
    first, headers = png(client, *stored[multi.name], frame=0)
    second, _ = png(client, *stored[multi.name], frame=1)
    assert headers["X-Frames"] == "2" and first.shape == second.shape
    assert not np.array_equal(first, second)
    mr = data_file("MR2_UNCR.dcm")
    put(mr)
    img, headers = png(client, *stored[mr.name])
    assert "(dataset)" in headers["X-Window"] or "(auto)" in headers["X-Window"]
    assert img.min() == 0 and img.max() == 255
    study, sop = stored[multi.name]
    for query, code in (("frame=7", 400), ("preset=nope", 400), ("frame=x", 400)):
        assert (
            client.get(f"/api/studies/{study}/instances/{sop}/rendered?{query}").status_code == code
        )
    assert client.get(f"/api/studies/{study}/instances/1.2.3/rendered").status_code == 404
    tags = client.get(f"/api/studies/{study}/instances/{sop}/tags").get_json()
    assert tags["Modality"] and tags["NumberOfFrames"] == "2"


def test_report_templates_by_modality_and_body_part(hub_client):
    client, _put, _stored = hub_client
    head = client.get("/api/templates?modality=CT&body_part=head").get_json()
    assert "Midline shift" in head["findings"] and head["impression"] == ""
    assert (
        "Sequences"
        in client.get("/api/templates?modality=MR&body_part=ELBOW").get_json()["findings"]
    )
    assert client.get("/api/templates?modality=XA").get_json() == {"findings": "", "impression": ""}
