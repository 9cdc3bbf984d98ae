"""The reading room in a real browser (headless Chromium through selenium): log in,
find the study, claim it, scroll images with a preset, write and sign a report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from devkit.broker import Broker, Hub
from devkit.corpus import data_file, replicate
from tests.conftest import pdf_text, printed, storescu, until, wait_for
from tests.helpers import delivered, start_box
from tests.printing import assert_printed, made

EVIL = "<script>window.pwned=1</script>^Evil"


def test_radiologist_reads_and_signs(tmp_path, browser, boxes, cups_printer):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    # a real CT study (slices of 693_UNCI with new UIDs), its patient named with HTML
    files = replicate(data_file("693_UNCI.dcm"), tmp_path / "ct", 3)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientName = EVIL
        ds.save_as(f)
    uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    queue, out = cups_printer
    broker = Broker(tmp_path / "broker").start()
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    try:
        # the study comes the real way: storescu -> box -> MQTT -> hub
        box = start_box(boxes, tmp_path / "box", broker.mqtt_config(), printer=queue)
        storescu(box.dicom_port, files)
        wait_for(lambda: delivered(box, uid), 60, "the study at the hub")
        r = subprocess.run(
            [sys.executable, "-m", "radsetu", "hub", "user", "add", "dr-rao",
             "--role", "radiologist", "--config", str(hub.config)],
            input="correct horse battery\n", capture_output=True, text=True,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        base = f"http://127.0.0.1:{hub.web_port}"
        shots = tmp_path / "screenshots"  # not committed; kept with the test's files
        shots.mkdir()

        b = browser
        b.get(base + "/")
        assert "/login" in b.current_url  # nothing without a login
        b.find_element(By.ID, "username").send_keys("dr-rao")
        b.find_element(By.ID, "password").send_keys("wrong password!")
        b.find_element(By.ID, "login").click()
        until(b, lambda d: "Wrong user name or password" in d.page_source)
        b.find_element(By.ID, "username").send_keys("dr-rao")
        b.find_element(By.ID, "password").send_keys("correct horse battery")
        b.find_element(By.ID, "login").click()
        b.save_screenshot(str(shots / "worklist.png"))
        link = b.find_element(By.CSS_SELECTOR, "#worklist a.study")
        assert link.text.startswith("<script>")  # shown as text, never run
        assert b.execute_script("return window.pwned") is None
        link.click()

        def image_loaded(_d):
            return b.execute_script(
                "const i = document.getElementById('image');"
                "return i.complete && i.naturalWidth > 0 ? i.naturalWidth : 0"
            )

        assert until(b, image_loaded) == 512
        first = b.find_element(By.ID, "image").get_attribute("data-sop")
        Select(b.find_element(By.ID, "preset")).select_by_value("brain")
        until(b, lambda d: "preset=brain" in d.find_element(By.ID, "image").get_attribute("src"))
        until(b, image_loaded)
        b.find_element(By.ID, "next").click()
        until(b, lambda d: d.find_element(By.ID, "image").get_attribute("data-sop") != first)
        assert "2 / 3" in b.find_element(By.ID, "position").text
        assert "preset=brain" in b.find_element(By.ID, "image").get_attribute("src")
        until(b, lambda d: "Modality" in d.find_element(By.ID, "tags").text)
        b.save_screenshot(str(shots / "viewer.png"))

        b.find_element(By.ID, "claim").click()
        until(b, lambda d: "Being read by dr-rao" in d.find_element(By.ID, "claim-state").text)
        findings = b.find_element(By.ID, "findings")
        # the CT template (693_UNCI has no body part): where the draft starts
        assert findings.get_attribute("value").startswith("Technique:")
        findings.clear()
        findings.send_keys("No intracranial haemorrhage. No midline shift.")
        b.find_element(By.ID, "impression").send_keys("Normal CT head.")
        b.find_element(By.ID, "sign").click()
        until(b, lambda d: "Signed by dr-rao" in d.find_element(By.ID, "report-state").text)
        b.save_screenshot(str(shots / "signed.png"))

        # an addendum amends the signed report
        b.find_element(By.ID, "addendum").send_keys("Addendum: small old lacunar infarct.")
        b.find_element(By.ID, "add-addendum").click()
        until(b, lambda d: "Addendum 1: Signed by dr-rao" in d.page_source)
        assert "small old lacunar infarct" in b.page_source
        b.find_element(By.ID, "turnaround").click()
        assert "signed at" in b.find_element(By.ID, "turnaround").text
        b.find_element(By.ID, "turnaround-link").click()
        until(b, lambda d: "test-box" in d.find_element(By.ID, "turnaround-table").text)
        b.save_screenshot(str(shots / "turnaround.png"))

        report, _addendum = hub.api(f"/api/studies/{uid}/reports")["reports"]
        assert report["state"] == "signed" and report["radiologist"] == "dr-rao"
        assert report["findings"] == "No intracranial haemorrhage. No midline shift."
        assert hub.api("/api/worklist")["studies"] == []
        # a form posted without its CSRF token is refused
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"{base}/read/{uid}/claim", data=b"x=1", method="POST")
        req.add_header("Cookie", "; ".join(f"{c['name']}={c['value']}" for c in b.get_cookies()))
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400
        assert all(p.stat().st_size > 5000 for p in shots.iterdir())
        # the hub's audit log has who viewed, claimed, signed and added to the study
        rows = hub.api("/api/audit")["audit"]
        mine = {r["action"] for r in rows if r["username"] == "dr-rao" and r["study_uid"] == uid}
        assert {"view", "claim", "sign", "addendum"} <= mine, mine
        assert any(r["action"] == "login_failed" for r in rows)

        # and the clinic's printer prints it: the report and then its addendum
        rid = report["report_id"]
        done = wait_for(lambda: len(printed(out, rid)) == 2 and printed(out, rid), 60, "prints")
        shown = {}
        for paper in done:
            text = pdf_text(made(hub, paper))
            for phrase in ("No intracranial haemorrhage", "lacunar infarct"):
                if phrase in text:
                    assert_printed(paper, made(hub, paper), phrase)
                    shown[phrase] = paper
        assert len(shown) == 2
    finally:
        hub.stop()
        broker.stop()


def test_pages_need_a_login(tmp_path):
    hub = Hub(tmp_path / "hub", {"enabled": False}).start()
    try:
        import urllib.request

        for path in ("/", "/read/1.2.3"):
            with urllib.request.urlopen(f"http://127.0.0.1:{hub.web_port}{path}", timeout=10) as r:
                assert "/login" in r.url and "Log in" in r.read().decode()
        # the cookies' key is in the index, the same for every web process of the hub
        assert not Path(hub.data_dir / "session.key").exists()
    finally:
        hub.stop()
