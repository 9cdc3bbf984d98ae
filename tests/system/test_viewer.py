"""The radiologist's viewer: OHIF served by a real hub over the hub's own DICOMweb.

The studies are real files: slices of a real head CT (pydicom-data 693_UNCI) made into
a study and an earlier study of the same patient (new UIDs), pydicom's own JPEG 2000,
RLE, big-endian and plain CT instances, and two clinics' studies that share one Study
UID. They reach the hub as a pack file each (``radsetu pack`` → ``radsetu hub
import``), the way a study on a USB stick does.

DICOMweb is checked with an independent client (dicomweb-client from PyPI) and
pydicom's own decoding; OHIF in headless Chromium, with WebGL drawn in software.
"""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from devkit.broker import Hub
from devkit.corpus import data_file, replicate
from edge.sneakernet import pack, sources_from_folder
from hub import ohifinstall
from hub.ingest import import_pack
from hub.store import FileHubStore
from tests.conftest import ROOT, chromium, until
from wire.manifest import Priority

OHIF = ROOT / "build" / "ohif" / "current"
PASSWORD = "correct horse battery"
PATIENT = "CQ500-CT-310"  # what 693_UNCI carries
SHOTS = ROOT / "test-artifacts" / "screenshots"


def pack_in(hub: Hub, folder: Path, box_id: str = "clinic-a") -> None:
    """A study as a pack file into the hub's store (what ``radsetu pack`` and ``radsetu
    hub import`` do, in this process: the commands have tests of their own)."""
    sources, skipped = sources_from_folder(folder)
    assert sources and not skipped, skipped
    out = folder.with_suffix(".pack")
    pack(sources, out, box_id, 256 * 1024, 3, Priority.ROUTINE, pixel_effort=None)
    store = FileHubStore(hub.data_dir)
    try:
        assert import_pack(store, str(out))["verified"]
    finally:
        store.close()


def restudy(files: list[Path], **attrs: str) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        for k, v in attrs.items():
            setattr(ds, k, v)
        ds.save_as(f)


@pytest.fixture(scope="module")
def viewer_hub(tmp_path_factory):
    if not (OHIF / "index.html").is_file():
        pytest.fail("OHIF is not installed: make test runs scripts/ensure-ohif.py")
    w = tmp_path_factory.mktemp("viewer")
    hub = Hub(w / "hub", {"enabled": False}, sections={"viewer": {"ohif_dir": str(OHIF)}})
    ct = replicate(data_file("693_UNCI.dcm"), w / "ct", 4)
    restudy(ct, StudyDate="20261130", StudyDescription="CT HEAD PLAIN", PatientBirthDate="19800505")
    prior = replicate(data_file("693_UNCI.dcm"), w / "prior", 2)
    restudy(prior, StudyDate="20200101", StudyDescription="PRIOR HEAD", PatientBirthDate="19800505")
    # the same clinic's ID and name, born on another day: another person, no prior
    twin = replicate(data_file("693_UNCI.dcm"), w / "twin", 1)
    restudy(
        twin, StudyDate="20190101", StudyDescription="NOT THIS ONE", PatientBirthDate="19700101"
    )
    other_uid = generate_uid()
    for name in ("JPEG2000.dcm", "SC_rgb_rle.dcm", "MR_small_bigendian.dcm", "CT_small.dcm"):
        f = replicate(Path(get_testdata_file(name)), w / "other" / name, 1, other_uid)
        restudy(f, PatientID="OTHER-1", PatientName="Other^Patient")
    shared = generate_uid()
    replicate(data_file("693_UNCI.dcm"), w / "shared-a", 2, shared)
    clinic_b = replicate(data_file("693_UNCI.dcm"), w / "shared-b", 3, shared)
    # another clinic's patient: the same UID and the same Patient ID, another person
    restudy(clinic_b, PatientName="Other^Person", StudyDescription="OTHER CLINIC HEAD")
    for folder in ("ct", "prior", "shared-a", "twin"):
        pack_in(hub, w / folder)
    pack_in(hub, w / "shared-b", box_id="clinic-b")
    for sub in sorted((w / "other").iterdir()):
        pack_in(hub, sub)
    hub.start()
    hub.add_user("dr-rao", "radiologist", PASSWORD)
    hub.add_user("ops", "operator", PASSWORD)
    uids = {
        "ct": str(pydicom.dcmread(ct[0]).StudyInstanceUID),
        "prior": str(pydicom.dcmread(prior[0]).StudyInstanceUID),
        "other": other_uid,
        "shared": shared,
    }
    files = {"ct": ct, "other": sorted((w / "other").glob("*/*.dcm")), "b": clinic_b}
    yield hub, uids, files
    hub.stop()


def logged_in(base: str, user: str = "dr-rao") -> requests.Session:
    s = requests.Session()
    page = s.get(base + "/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf
    r = s.post(base + "/login", data={"username": user, "password": PASSWORD,
                                      "csrf": csrf.group(1)})  # fmt: skip
    assert r.ok and "/login" not in r.url
    return s


def dicom_json(items: list[dict]) -> list[pydicom.Dataset]:
    """Each item parsed as the DICOM JSON model (PS3.18 F.2): keys are tags, each with
    a VR and a Value, InlineBinary or BulkDataURI."""
    out = []
    for item in items:
        for tag, attr in item.items():
            assert re.fullmatch(r"[0-9A-F]{8}", tag), tag
            assert "vr" in attr and len(attr["vr"]) == 2, (tag, attr)
            assert set(attr) <= {"vr", "Value", "InlineBinary", "BulkDataURI"}, (tag, attr)
        out.append(pydicom.Dataset.from_json(item, bulk_data_uri_handler=lambda *_a: b""))
    return out


def test_dicomweb_answers_an_independent_client(viewer_hub):
    from dicomweb_client.api import DICOMwebClient

    hub, uids, files = viewer_hub
    base = f"http://127.0.0.1:{hub.web_port}"
    # no login: every DICOMweb request is refused, and so is OHIF's page
    assert requests.get(base + "/dicomweb/studies").status_code == 401
    assert requests.get(base + f"/dicomweb/studies/{uids['ct']}/metadata").status_code == 401
    r = requests.get(base + "/ohif/viewer", allow_redirects=False)
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    # nor is OHIF's page by its file's name, which names a study's clinic
    asked = f"/ohif/index.html?StudyInstanceUIDs={uids['ct']}"
    r = requests.get(base + asked)
    assert r.url.startswith(base + "/login") and "clinic-a" not in r.text
    page = logged_in(base).get(base + asked)
    assert page.url == base + f"/ohif/?StudyInstanceUIDs={uids['ct']}"
    assert '"/dicomweb/clinics/clinic-a"' in page.text
    # an operator is no reader
    ops = logged_in(base, "ops")
    assert ops.get(base + "/dicomweb/studies").status_code == 403

    client = DICOMwebClient(base + "/dicomweb", session=logged_in(base))
    studies = dicom_json(client.search_for_studies())
    keys = {str(d.StudyInstanceUID) for d in studies}
    assert {uids["ct"], uids["prior"], uids["other"], uids["shared"]} <= keys
    assert len(keys) == len(studies)  # the second clinic's study stays apart
    mine = dicom_json(client.search_for_studies(search_filters={"PatientID": PATIENT}))
    assert {str(d.StudyInstanceUID) for d in mine} >= {uids["ct"], uids["prior"]}
    assert all(str(d.PatientID) == PATIENT for d in mine)
    found = dicom_json(client.search_for_studies(
        search_filters={"00100010": "CQ500*", "StudyDate": "20200101-20201231"},
        fields=["00100030"]))  # fmt: skip
    assert [str(d.StudyInstanceUID) for d in found] == [uids["prior"]]

    # one clinic's UID: clinic A's two images, never clinic B's three
    shared = dicom_json(client.search_for_instances(uids["shared"], fields=["PatientID"]))
    assert len(shared) == 2 and all(d.PatientID == PATIENT for d in shared)
    (twin,) = [d for d in studies if str(d.PatientName) == "Other^Person"]
    assert str(twin.StudyInstanceUID) != uids["shared"]  # a UID of its own, valid
    b = dicom_json(client.search_for_instances(str(twin.StudyInstanceUID), fields=["PatientName"]))
    assert len(b) == 3 and all(d.PatientName == "Other^Person" for d in b)
    # one clinic's root (what OHIF gets): its own patients only, whatever the number
    clinic_a = DICOMwebClient(base + "/dicomweb/clinics/clinic-a", session=client._session)
    theirs = dicom_json(clinic_a.search_for_studies(search_filters={"PatientID": PATIENT}))
    assert {str(d.PatientName) for d in theirs} == {PATIENT}
    assert str(twin.StudyInstanceUID) not in {str(d.StudyInstanceUID) for d in theirs}
    assert (
        client._session.get(
            base + f"/dicomweb/clinics/clinic-a/studies/{twin.StudyInstanceUID}/series"
        ).status_code
        == 404
    )

    # the CT: series, instances, metadata with the pixel data by reference, frames
    (series,) = dicom_json(client.search_for_series(uids["ct"]))
    assert int(series.NumberOfSeriesRelatedInstances) == 4
    meta = client.retrieve_series_metadata(uids["ct"], str(series.SeriesInstanceUID))
    dicom_json(meta)
    assert all("BulkDataURI" in m["7FE00010"] for m in meta)
    for f in files["ct"]:
        ds = pydicom.dcmread(f)
        where = (uids["ct"], str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        (frame,) = client.retrieve_instance_frames(*where, frame_numbers=[1])
        assert frame == ds.pixel_array.astype("<i2").tobytes()
        got = client.retrieve_instance(*where)
        assert got.SOPInstanceUID == ds.SOPInstanceUID
        assert np.array_equal(got.pixel_array, ds.pixel_array)
    one = meta[0]
    # dicomweb-client sends "Host: 127.0.0.1" without the port, so the absolute URIs in
    # its answers lack it too (a browser sends the port): the path is what is checked
    uri = urllib.parse.urlsplit(one["7FE00010"]["BulkDataURI"])
    assert uri.path.startswith(f"/dicomweb/studies/{uids['ct']}/series/")
    pixels = client.retrieve_bulkdata(base + uri.path)[0]
    sop = one["00080018"]["Value"][0]
    ref = next(d for d in map(pydicom.dcmread, files["ct"]) if d.SOPInstanceUID == sop)
    assert pixels == ref.PixelData

    # pydicom's own odd files: compressed frames as stored when asked with their
    # syntax, else decoded to native little endian; both equal pydicom's decoding
    for f in files["other"]:
        ds = pydicom.dcmread(f)
        where = (uids["other"], str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        (native,) = client.retrieve_instance_frames(
            *where,
            frame_numbers=[1],
            media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),),
        )
        want = ds.pixel_array
        assert native == want.astype(want.dtype.newbyteorder("<")).tobytes(), f.name
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            (stored,) = client.retrieve_instance_frames(
                *where, frame_numbers=[1], media_types=(("application/octet-stream", "*"),)
            )
            assert stored == next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
        # the whole instance: as stored when its syntax is accepted, else decoded
        got = client.retrieve_instance(*where, media_types=(("application/dicom", "*"),))
        assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        le = client.retrieve_instance(
            *where, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),)
        )
        assert le.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1", f.name
        assert np.array_equal(le.pixel_array, want), f.name
        png = client.retrieve_instance_rendered(*where, media_types=("image/png",))
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # a frame that is not there, an attribute that is not a tag
    assert (
        client._session.get(
            base + f"/dicomweb/studies/{uids['other']}/series/x/instances/y/frames/1"
        ).status_code
        == 404
    )
    assert client._session.get(base + "/dicomweb/studies?Nonsense=1").status_code == 400

    # every study opened is audited as a view, by whom, and how
    audit = requests.get(
        base + "/api/audit?action=view", headers={"Authorization": f"Bearer {hub.token}"}
    ).json()
    rows = audit["audit"]
    viewed = {(r["username"], r["study_uid"], r["detail"]) for r in rows if r["action"] == "view"}
    assert ("dr-rao", uids["ct"], "dicomweb") in viewed


def window(values: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Cornerstone's linear VOI: lower -> 0, upper -> 255."""
    return np.clip((values - lower) / (upper - lower) * 255.0, 0, 255)


def flat_point(ds: pydicom.Dataset, lower: float, upper: float) -> tuple[int, int, float]:
    """(column, row, displayed value) of a pixel inside a patch of one grey, so the
    display's interpolation and rounding cannot move it."""
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    shown = window(hu, lower, upper)
    rows, cols = shown.shape
    best = None
    for r in range(rows // 4, 3 * rows // 4, 4):
        for c in range(cols // 4, 3 * cols // 4, 4):
            patch = shown[r - 6 : r + 7, c - 6 : c + 7]
            if 40 < shown[r, c] < 215 and np.ptp(patch) < 2:
                best = (c, r, float(shown[r, c]))
                break
        if best:
            break
    assert best, "no flat patch of mid grey in the slice"
    return best


VIEWPORT = """
const els = window.cornerstone ? cornerstone.getEnabledElements() : [];
return els.map(e => {
  const vp = e.viewport;
  const id = vp.getCurrentImageId ? vp.getCurrentImageId() : null;
  const ready = !!(id && vp.getImageData && vp.getImageData());
  return {id: id, ready: ready, voi: ready ? vp.getProperties().voiRange : null,
          box: vp.element.getBoundingClientRect().toJSON()};
});
"""


def shown_button(d, text: str) -> list:  # type: ignore[no-untyped-def, type-arg]
    from selenium.webdriver.common.by import By

    found = d.find_elements(By.XPATH, f"//*[(self::button or @role='button') and "
                                      f"normalize-space(.)='{text}']")  # fmt: skip
    return [e for e in found if e.is_displayed()]


def test_ohif_shows_the_study_measures_it_and_opens_its_prior(viewer_hub, tmp_path):
    from PIL import Image
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    hub, uids, files = viewer_hub
    base = f"http://127.0.0.1:{hub.web_port}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    b = chromium(tmp_path / "chromium", webgl=True)
    try:
        b.get(base + "/ohif/viewer?StudyInstanceUIDs=" + uids["ct"])
        assert "/login" in b.current_url  # OHIF is behind the hub's login
        b.find_element(By.ID, "username").send_keys("dr-rao")
        b.find_element(By.ID, "password").send_keys(PASSWORD)
        b.find_element(By.ID, "login").click()
        # the login leads back to OHIF
        until(b, lambda d: urllib.parse.urlsplit(d.current_url).path == "/ohif/viewer")
        b.get(base + "/")
        row = until(b, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#worklist tr")
                                  if "CT HEAD PLAIN" in r.text])[0]  # fmt: skip
        assert "1 earlier" in row.find_element(By.CSS_SELECTOR, "td.priors").text
        b.save_screenshot(str(SHOTS / "hub-worklist-priors.png"))
        row.find_element(By.CSS_SELECTOR, "a.open").click()
        until(b, lambda d: len(d.window_handles) == 2)
        b.switch_to.window(b.window_handles[1])
        assert "/ohif/viewer" in b.current_url
        assert b.execute_script("return window.radsetuDicomweb") == "/dicomweb/clinics/clinic-a"

        def shown(d):
            vps = d.execute_script(VIEWPORT)
            return vps if vps and all(v["ready"] for v in vps) else None

        (vp,) = until(b, shown, 60)
        assert uids["ct"] in vp["id"]
        # the study browser: this patient's studies at this clinic, not the other clinic's
        # patient with the same number
        until(b, lambda d: "PRIOR HEAD" in d.find_element(By.TAG_NAME, "body").text, 20)
        assert "OTHER CLINIC HEAD" not in b.find_element(By.TAG_NAME, "body").text
        b.execute_script(
            "return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
        )

        # the pixel under a known point is the windowed value of the DICOM pixel there
        sop = re.search(r"/instances/([0-9.]+)/frames", vp["id"]).group(1)
        ds = next(
            pydicom.dcmread(f) for f in files["ct"] if pydicom.dcmread(f).SOPInstanceUID == sop
        )
        lower, upper = vp["voi"]["lower"], vp["voi"]["upper"]
        col, row_, want = flat_point(ds, lower, upper)
        at = b.execute_script(
            "const vp = cornerstone.getEnabledElements()[0].viewport;"
            "const w = cornerstone.utilities.imageToWorldCoords("
            "arguments[0], [arguments[1], arguments[2]]);"
            "return vp.worldToCanvas(w);", vp["id"], col + 0.5, row_ + 0.5)  # fmt: skip
        shot = Image.open(io.BytesIO(b.get_screenshot_as_png())).convert("RGB")
        x, y = int(vp["box"]["left"] + at[0]), int(vp["box"]["top"] + at[1])
        r, g, bl = shot.getpixel((x, y))
        assert abs(r - want) <= 3 and r == g == bl, ((r, g, bl), want)
        box = tuple(int(vp["box"][k]) for k in ("left", "top", "right", "bottom"))
        grey = np.asarray(shot.crop(box))
        assert grey.std() > 20  # not a blank canvas
        b.save_screenshot(str(SHOTS / "ohif-ct.png"))

        # a length drawn with the mouse reads the distance that Pixel Spacing gives
        b.find_element(By.CSS_SELECTOR, "[data-cy='MeasurementTools-split-button-primary']").click()
        canvas = b.find_element(By.CSS_SELECTOR, "[data-cy='viewport-pane'] canvas")
        cw, ch = canvas.size["width"], canvas.size["height"]
        start, end = (-cw // 8, -ch // 10), (cw // 8, ch // 12)
        chain = ActionChains(b).move_to_element_with_offset(canvas, *start).click_and_hold()
        for k in range(1, 11):
            chain.move_to_element_with_offset(canvas, start[0] + (end[0] - start[0]) * k // 10,
                                              start[1] + (end[1] - start[1]) * k // 10)  # fmt: skip
        chain.release().perform()
        length = until(b, lambda d: d.execute_script(
            "const a = cornerstoneTools.annotation.state.getAllAnnotations()"
            ".filter(a => a.metadata.toolName === 'Length');"
            "if (!a.length) return null;"
            "const stats = Object.values(a[0].data.cachedStats)[0];"
            "if (!stats || stats.length === undefined) return null;"
            "const id = a[0].metadata.referencedImageId;"
            "return {mm: stats.length, unit: stats.unit, points: a[0].data.handles.points.map("
            "p => cornerstone.utilities.worldToImageCoords(id, p))};"), 20)  # fmt: skip
        (c1, r1), (c2, r2) = length["points"]
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        want_mm = math.hypot((c2 - c1) * col_mm, (r2 - r1) * row_mm)
        assert length["unit"] == "mm" and want_mm > 20
        assert abs(length["mm"] - want_mm) < 0.05, (length, want_mm)
        # where the mouse went: a stroke about a quarter of the canvas wide
        assert abs(c2 - c1) > 40
        b.save_screenshot(str(SHOTS / "ohif-ct-length.png"))

        # saved at the hub: tracked, then "Create SR" in the measurements panel, named
        b.find_element(By.CSS_SELECTOR, "[data-cy='prompt-begin-tracking-yes-btn']").click()
        b.find_element(By.CSS_SELECTOR, "[data-cy='trackedMeasurements-btn']").click()
        until(b, lambda d: shown_button(d, "Create SR"), 20)[0].click()
        until(b, lambda d: d.find_element(By.CSS_SELECTOR, "[data-cy='dialog-input']"), 20)
        b.find_element(By.CSS_SELECTOR, "[data-cy='dialog-input']").send_keys("Head <b>width</b>")
        until(b, lambda d: shown_button(d, "Save"), 20)[0].click()
        api = logged_in(base)
        series_url = f"{base}/dicomweb/clinics/clinic-a/studies/{uids['ct']}/series"

        def saved(_d):
            r = api.get(series_url)
            found = [s for s in r.json() if s["00080060"]["Value"] == ["SR"]] if r.ok else []
            return found or None

        (sr,) = until(b, saved, 30)
        assert sr["0008103E"]["Value"] == ["Head <b>width</b>"]
        b.save_screenshot(str(SHOTS / "ohif-ct-saved-sr.png"))
        # read back on the reading page, and into the draft's findings
        b.switch_to.window(b.window_handles[0])
        b.get(base + f"/read/{uids['ct']}")
        section = b.find_element(By.ID, "measurements")
        assert "Head <b>width</b>" in section.text  # shown as text
        (line,) = [e.text for e in section.find_elements(By.CSS_SELECTOR, "li.measurement")]
        assert line == f"Length {round(length['mm'], 2):g} mm", (line, length)
        b.find_element(By.CSS_SELECTOR, "#measurements .to-findings").click()
        assert b.find_element(By.ID, "findings").get_attribute("value").endswith(line)
        # a viewer opened again lists the saved report with the study's series
        b.switch_to.window(b.window_handles[1])
        b.refresh()
        until(b, lambda d: "SR" in d.find_element(By.ID, "root").text.split(), 60)
        b.close()  # its drawing in software would slow the next one

        # the prior, side by side: from the reading page's "compare" link
        b.switch_to.window(b.window_handles[0])
        b.get(base + f"/read/{uids['ct']}")
        link = b.find_element(By.CSS_SELECTOR, "#priors a.compare")
        assert "PRIOR HEAD" in b.find_element(By.ID, "priors").text
        assert "NOT THIS ONE" not in b.find_element(By.ID, "priors").text
        b.get(link.get_attribute("href"))

        seen: list = []  # type: ignore[type-arg]

        def both(d):  # the study and its prior, each in a viewport shown (OHIF may fill
            # the second viewport with the study's own series before the prior is loaded)
            seen[:] = d.execute_script(VIEWPORT)
            v = [x for x in seen if x["ready"]]
            ours = [x for x in v if uids["ct"] in x["id"]]
            prior = [x for x in v if uids["prior"] in x["id"]]
            return [ours[0], prior[0]] if ours and prior else None

        try:
            vps = until(b, both, 60)
        except TimeoutException:  # what was shown, for the log
            b.save_screenshot(str(SHOTS / "ohif-ct-with-prior-failed.png"))
            text = b.find_element(By.TAG_NAME, "body").text[:600]
            raise AssertionError(f"not both of {uids} shown: {seen}; the page: {text!r}") from None
        left, right = sorted(vps, key=lambda v: v["box"]["left"])
        assert left["box"]["right"] <= right["box"]["left"] + 1  # beside, not on top
        b.save_screenshot(str(SHOTS / "ohif-ct-with-prior.png"))
        errors = [e["message"] for e in b.get_log("browser")
                  if e["level"] == "SEVERE" and "/dicomweb/" in e["message"]]  # fmt: skip
        assert not errors, errors
    finally:
        b.quit()


def test_the_installer_refuses_a_tarball_that_is_not_the_pinned_one(tmp_path):
    fake = tmp_path / "ohif-app.tgz"
    fake.write_bytes(b"\x1f\x8b not OHIF")
    with pytest.raises(ohifinstall.InstallError, match="SHA-512"):
        ohifinstall.install(fake, tmp_path / "ohif")
    assert not (tmp_path / "ohif" / "current").exists()
    cmd = [sys.executable, "-m", "radsetu", "hub", "install-viewer", str(fake)]
    r = subprocess.run([*cmd, "--dest", str(tmp_path / "ohif")], capture_output=True, text=True)
    assert r.returncode != 0 and f"is not @ohif/app {ohifinstall.VERSION}" in r.stderr
