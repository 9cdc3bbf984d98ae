"""The clinic's page in a real browser (headless Chromium), end to end: a ZIP uploaded
from the page goes over a real broker to a real hub; the receptionist watches it go,
marks it STAT with a note the radiologist sees, the report comes back and prints on
a real CUPS queue. Screenshots at phone and desktop width go to test-artifacts/."""

from __future__ import annotations

import re
import zipfile

import pydicom
import pytest

from devkit.broker import Broker, Hub
from devkit.corpus import data_file, replicate
from tests.conftest import pdf_text, printed, screenshots, until, wait_for
from tests.helpers import delivered, start_box
from tests.printing import assert_printed, made

EVIL = "<script>window.pwned=1</script>^Evil"
PASSWORD = "correct horse battery"


def evil_zip(tmp_path, count: int) -> tuple:  # type: ignore[type-arg]
    """A real CT study (slices of 693_UNCI with new UIDs) whose patient name holds HTML,
    zipped in a folder the way a CD's contents would be."""
    files = replicate(data_file("693_UNCI.dcm"), tmp_path / "ct", count)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientName = EVIL
        ds.save_as(f)
    zpath = tmp_path / "study.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in files:
            z.write(f, f"DICOM/{f.name}")
    return zpath, str(pydicom.dcmread(files[0]).StudyInstanceUID)


def login(b, base: str, name: str, password: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    b.get(base + "/")
    assert "/login" in b.current_url  # nothing without a login
    b.find_element(By.NAME, "username").send_keys(name)
    b.find_element(By.NAME, "password").send_keys(password)
    b.find_element(By.CSS_SELECTOR, "#login button").click()


def where(b, uid: str) -> str:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    row = b.find_element(By.CSS_SELECTOR, f'tr.study[data-uid="{uid}"]')
    return row.find_element(By.CSS_SELECTOR, ".where").get_attribute("data-where")


def test_clinic_flow_in_the_browser(tmp_path, browser, boxes, cups_printer):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    queue, out = cups_printer
    zpath, uid = evil_zip(tmp_path, 8)
    broker = Broker(tmp_path / "broker").start()
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    try:
        # a slow link (150 kB/s) so that "sending" lasts long enough to be watched
        box = start_box(
            boxes,
            tmp_path / "box",
            broker.mqtt_config(),
            printer=queue,
            clinic="Bagalkot General",
            sync={"max_bytes_per_second": 150_000, "chunk_bytes": 32768},
        )
        box.add_user("asha", PASSWORD, role="admin")
        base = f"http://127.0.0.1:{box.web_port}"
        b = browser
        login(b, base, "asha", "wrong password!")
        until(b, lambda d: "Wrong user name or password" in d.page_source)
        login(b, base, "asha", PASSWORD)
        until(b, lambda d: d.find_elements(By.ID, "health"))
        screenshots(b, "clinic-home-empty")

        # upload the ZIP from the page, with its progress
        b.find_element(By.ID, "nav-upload").click()
        b.find_element(By.ID, "files").send_keys(str(zpath))
        b.find_element(By.ID, "send").click()
        until(b, lambda d: "Imported: 8" in d.find_element(By.ID, "result").text, 60)
        assert b.find_element(By.ID, "bar").get_attribute("value") == "100"
        screenshots(b, "clinic-upload")

        # watch it go: waiting -> sending (a progress bar) -> at the hub
        b.find_element(By.ID, "nav-home").click()
        row = until(b, lambda d: d.find_element(By.CSS_SELECTOR, f'tr.study[data-uid="{uid}"]'))
        assert row.find_element(By.CSS_SELECTOR, ".patient").text.startswith(EVIL[:31])  # text
        assert b.execute_script("return window.pwned") is None
        seen = set()

        def reached_hub(d):  # type: ignore[no-untyped-def]
            state = where(d, uid)
            seen.add(state)
            if state == "sending":
                bar = d.find_element(By.CSS_SELECTOR, f'tr[data-uid="{uid}"] .sending')
                if bar.is_displayed() and "MB" in bar.text:
                    seen.add("progress shown")
                    if "sending-shot" not in seen:
                        seen.add("sending-shot")
                        screenshots(d, "clinic-sending")
            return state == "at the hub"

        until(b, reached_hub, 120)
        assert "sending" in seen and "progress shown" in seen, seen
        assert delivered(box, uid)
        screenshots(b, "clinic-at-the-hub")

        # mark it STAT with a clinical note: the radiologist's worklist shows both
        b.find_element(By.CSS_SELECTOR, f'tr[data-uid="{uid}"] a.patient').click()
        b.find_element(By.ID, "stat").click()
        b.find_element(By.ID, "clinical_note").send_keys(
            "Fall from height, GCS 13. <b>R/O bleed</b>"
        )
        b.find_element(By.ID, "save").click()
        until(b, lambda d: "Saved" in d.page_source)
        screenshots(b, "clinic-study")

        def on_worklist():  # type: ignore[no-untyped-def]
            rows = [s for s in hub.api("/api/worklist")["studies"] if s["study_uid"] == uid]
            return (
                rows and rows[0]["priority"] == "stat" and "R/O bleed" in rows[0]["clinical_note"]
            )

        wait_for(on_worklist, 30, "STAT and the note at the hub")

        # a radiologist claims it: the clinic sees "being read"
        hub.api(f"/api/studies/{uid}/claim", {"radiologist": "dr-rao"})
        b.find_element(By.ID, "nav-home").click()
        until(b, lambda d: where(d, uid) == "being read", 30)

        # the report comes back, prints on the clinic's printer, and shows as printed
        r = hub.api(
            f"/api/studies/{uid}/reports",
            {"findings": "Small right frontal contusion.", "impression": "Contusion.",
             "radiologist": "dr-rao", "critical": True},
        )  # fmt: skip
        hub.api(f"/api/reports/{r['report_id']}/sign", {"radiologist": "dr-rao"})
        until(b, lambda d: where(d, uid) == "printed", 90)
        first = wait_for(lambda: printed(out, r["report_id"]), 60, "the printed PDF")
        assert "Small right frontal contusion" in pdf_text(made(hub, first[0]))
        assert_printed(first[0], made(hub, first[0]), "Small right frontal contusion")

        # the reports page: critical first, view, print again
        b.find_element(By.ID, "nav-reports").click()
        rep = b.find_element(By.CSS_SELECTOR, f'tr.report[data-report="{r["report_id"]}"]')
        assert "critical" in rep.get_attribute("class")
        assert rep.find_element(By.CSS_SELECTOR, ".patient").text.startswith(EVIL[:31])
        screenshots(b, "clinic-reports")
        first_done = first[0].stat().st_mtime_ns
        rep.find_element(By.CSS_SELECTOR, "button.print").click()
        until(b, lambda d: "Sent to the printer" in d.page_source)
        # (cups-pdf names its file by the job's title: the reprint replaces the first)
        wait_for(
            lambda: box.api("/api/reports")["reports"][0]["print_count"] == 2, 60, "the reprint"
        )
        again = wait_for(lambda: printed(out, r["report_id"], first_done), 60, "the reprint's PDF")
        assert_printed(again[0], made(hub, again[0]), "Small right frontal contusion")

        # her own language, kept for her next login
        Select(b.find_element(By.NAME, "language")).select_by_value("kn")
        until(b, lambda d: "ವರದಿಗಳು" in d.page_source)
        b.find_element(By.ID, "nav-home").click()
        until(b, lambda d: "ಇಂದಿನ ಸ್ಕ್ಯಾನ್‌ಗಳು" in d.page_source)
        assert where(b, uid) == "printed"
        assert "ಮುದ್ರಿಸಲಾಗಿದೆ" in b.page_source
        screenshots(b, "clinic-home-kannada")

        # the audit log has a row for each thing she did
        b.find_element(By.ID, "nav-audit").click()
        actions = {
            e.get_attribute("data-action"): e.text
            for e in b.find_elements(By.CSS_SELECTOR, "tr.audit-row")
        }
        for action in ("login_failed", "login", "upload", "view", "stat", "note", "print"):
            assert action in actions, (action, sorted(actions))
        assert uid in actions["upload"] and "asha" in actions["stat"]
        screenshots(b, "clinic-audit")
        signed = hub.api("/api/audit?action=sign")["audit"]
        assert [r["study_uid"] for r in signed] == [uid]
        assert b.execute_script("return window.pwned") is None
    finally:
        hub.stop()
        broker.stop()


@pytest.mark.parametrize("lang", ["hi", "kn"])
def test_every_message_is_translated(lang):
    """Each message of the clinic's pages has a translation in each catalogue, and the
    placeholders (%(name)s) are the same on both sides."""
    import ast
    from pathlib import Path

    from jinja2 import Environment

    from edge import clinic, doctors, i18n, orders

    root = Path(clinic.__file__).parent
    env = Environment(extensions=["jinja2.ext.i18n"])
    wanted = set(clinic.STATE_ORDER) | set(doctors.FORM_ERRORS.values())
    wanted |= set(orders.FORM_ERRORS.values()) | set(orders.PROGRESS)
    for page in (root / "pages").glob("*.html"):
        for _line, _fn, msg in env.extract_translations(page.read_text()):
            wanted.update(m for m in (msg if isinstance(msg, tuple) else (msg,)) if m)
    for module in (
        "clinic.py",
        "login.py",
        "pages.py",
        "progress.py",
        "uploads.py",
        "doctorpages.py",
        "criticalpages.py",
        "orderpages.py",
    ):  # the page code
        for node in ast.walk(ast.parse((root / module).read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_":
                if node.args and isinstance(node.args[0], ast.Constant):
                    wanted.add(node.args[0].value)
    assert len(wanted) > 40
    cat = i18n.catalogue(lang)
    missing = sorted(m for m in wanted if not cat.get(m))
    assert not missing, f"{lang}: no translation for {missing}"
    for m in wanted:
        assert sorted(re.findall(r"%\(\w+\)s", m)) == sorted(re.findall(r"%\(\w+\)s", cat[m])), m
