"""Referring doctors, end to end: the box's admin keeps them on the clinic's page
(headless Chromium), a study whose DICOM Referring Physician's Name matches one carries
that doctor to the hub, another gets one chosen on its page and the hub hears of it, and
the on-call contact reaches the hub with the box's status. Hostile input on the form is
refused with a reason and stores nothing."""

from __future__ import annotations

import pydicom

from devkit.broker import Broker, Hub
from tests.conftest import gone, screenshots, storescu, until, wait_for
from tests.helpers import delivered, make_study, start_box
from tests.system.test_clinic import login

PASSWORD = "correct horse battery"
RAO = {"name": "Dr. Asha Rao", "mobile": "+919845012345", "email": "", "language": "kn"}
PATIL = {"name": "Dr Meena Patil", "mobile": "", "email": "meena@example.in", "language": "hi"}


def named(files, who: str) -> None:  # type: ignore[no-untyped-def]
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ReferringPhysicianName = who
        ds.save_as(f)


def hub_referrer(hub: Hub, uid: str):  # type: ignore[no-untyped-def]
    rows = [s for s in hub.api("/api/worklist?all=1")["studies"] if s["study_uid"] == uid]
    return rows[0]["referrer"] if rows else "not yet"


def add_doctor(b, base, name, mobile, email, lang, on_call):  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    b.get(base + "/doctors")
    b.find_element(By.ID, "doctor-name").send_keys(name)
    b.find_element(By.ID, "doctor-mobile").send_keys(mobile)
    b.find_element(By.ID, "doctor-email").send_keys(email)
    Select(b.find_element(By.ID, "doctor-language")).select_by_value(lang)
    if on_call:
        b.find_element(By.ID, "doctor-on-call").click()
    form = b.find_element(By.ID, "doctor-form")
    b.find_element(By.ID, "doctor-save").click()
    gone(b, form)  # the answer's page, before going on


def test_referring_doctors_travel_with_their_studies(tmp_path, browser, boxes):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    broker = Broker(tmp_path / "broker").start()
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    try:
        box = start_box(boxes, tmp_path / "box", broker.mqtt_config(), sync={"status_seconds": 1})
        box.add_user("admin", PASSWORD, role="admin")
        b, base = browser, f"http://127.0.0.1:{box.web_port}"
        login(b, base, "admin", PASSWORD)
        until(b, lambda d: d.find_elements(By.ID, "nav-doctors"))

        # hostile and careless input: refused with the reason, nothing stored
        add_doctor(b, base, "<img src=x onerror=alert(1)>", "9845012345", "", "en", False)
        assert "without < or >" in b.find_element(By.CSS_SELECTOR, ".flash.error").text
        add_doctor(b, base, "Dr Typo", "12345", "", "en", False)
        assert "country code" in b.find_element(By.CSS_SELECTOR, ".flash.error").text
        assert not b.find_elements(By.CSS_SELECTOR, "tr.doctor")

        add_doctor(b, base, "Dr. Asha Rao", "98450 12345", "", "kn", False)
        add_doctor(b, base, "Dr Meena Patil", "", "meena@example.in", "hi", True)
        rows = b.find_elements(By.CSS_SELECTOR, "tr.doctor")
        assert len(rows) == 2 and "Dr Meena Patil" in rows[0].text  # the on-call one first
        assert rows[0].find_elements(By.CSS_SELECTOR, ".on-call")
        assert "+919845012345" in b.find_element(By.ID, "doctors").text
        screenshots(b, "box-referring-doctors")

        # the on-call contact reaches the hub with the box's status
        wait_for(
            lambda: (hub.api("/api/boxes")["boxes"][0].get("status") or {}).get("on_call") == PATIL,
            30, "the on-call contact at the hub",
        )  # fmt: skip

        # a study whose DICOM name matches: the doctor goes with it
        files, uid = make_study(tmp_path, "a", 2)
        named(files, "RAO^ASHA^^DR")
        storescu(box.dicom_port, files)
        wait_for(lambda: delivered(box, uid), 60, "study A at the hub")
        wait_for(lambda: hub_referrer(hub, uid) == RAO, 30, "study A's doctor at the hub")

        # a name that matches nobody: nobody is guessed; the clinic chooses on the page
        files, uid2 = make_study(tmp_path, "b", 2, src="MR2_UNCR.dcm")
        named(files, "SOMEONE^ELSE")
        storescu(box.dicom_port, files)
        wait_for(lambda: delivered(box, uid2), 60, "study B at the hub")
        wait_for(lambda: hub_referrer(hub, uid2) is None, 30, "study B at the hub")
        b.get(f"{base}/study/{uid2}")
        assert "on-call" in b.find_element(By.ID, "referrer-now").text
        Select(b.find_element(By.ID, "referrer")).select_by_visible_text("Dr Meena Patil")
        b.find_element(By.ID, "referrer-save").click()
        until(b, lambda d: "Dr Meena Patil" in d.find_element(By.ID, "referrer-now").text)
        wait_for(lambda: hub_referrer(hub, uid2) == PATIL, 30, "study B's doctor at the hub")

        # the audit log has each change
        b.get(base + "/audit")
        audit = b.find_elements(By.CSS_SELECTOR, ".audit-row")
        actions = {r.get_attribute("data-action") for r in audit}
        assert {"doctor_add", "referrer"} <= actions
    finally:
        hub.stop()
        broker.stop()
