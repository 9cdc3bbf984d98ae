"""A critical finding reaches the referring doctor, who confirms it, with real parts: a
broker, a hub and a box; Kannel (bearerbox, smsbox, fakesmsc as the operator's SMS
centre) and an SMTP server on loopback. The SMS (in the doctor's language, with the
patient's initials only) and the e-mail go within seconds of signing; a reply "YES
<code>" from the doctor's phone confirms one result, the link in the message another;
replies from other phones, forged keys and guessed links confirm nothing; every
hand-off and confirmation is in the audit log and in /metrics."""

from __future__ import annotations

import re
import secrets
import urllib.error
import urllib.parse
import urllib.request

import pydicom

from devkit.broker import Broker, Hub
from devkit.kannel import Kannel
from devkit.mailbox import Mailbox
from tests.conftest import storescu, wait_for
from tests.helpers import box_login, delivered, make_study, start_box
from tests.system.test_metrics import at, scrape

PASSWORD = "correct horse battery"
MOBILE = "+919845012345"
ON_CALL = "+919900000001"
ESCALATE = 6.0  # seconds: critical.confirm_minutes as a tenth of a minute


def add_doctor(box, cookie: str, form: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    url = f"http://127.0.0.1:{box.web_port}/doctors"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Cookie": cookie})) as r:
        csrf = re.search(r'name="csrf" value="([^"]+)"', r.read().decode())[1]  # type: ignore[index]
        cookie = (r.headers.get("Set-Cookie") or cookie).split(";")[0]  # the token is in it
    body = urllib.parse.urlencode({"csrf": csrf, **form}).encode()
    req = urllib.request.Request(url, data=body, headers={"Cookie": cookie})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def study_of(tmp_path, box, name: str, src: str, doctor: str) -> str:  # type: ignore[no-untyped-def]
    files, uid = make_study(tmp_path, name, 1, src=src)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ReferringPhysicianName = doctor
        ds.PatientName = "RAMAPPA^BASAVARAJ"
        ds.save_as(f)
    storescu(box.dicom_port, files)
    wait_for(lambda: delivered(box, uid), 60, f"study {name} at the hub")
    return uid


def sign_critical(hub: Hub, uid: str, impression: str) -> str:
    body = {"findings": impression, "impression": impression, "radiologist": "Dr B"}
    r = hub.api(f"/api/studies/{uid}/reports", {**body, "critical": True})
    hub.api(f"/api/reports/{r['report_id']}/sign", {})
    return str(r["report_id"])


def test_a_critical_finding_reaches_the_doctor_who_confirms_it(tmp_path, boxes):
    broker = Broker(tmp_path / "broker").start()
    mail = Mailbox().start()
    kannel = Kannel(tmp_path / "kannel")
    key = secrets.token_urlsafe(16)
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub"), sections={
        "sms": {"url": kannel.sendsms_url, "username": kannel.username,
                "password": kannel.password, "inbound_key": key},
        "smtp": {"host": "127.0.0.1", "port": mail.port},
    })  # fmt: skip
    base = f"http://127.0.0.1:{hub.web_port}"
    with open(hub.config, "a") as f:  # unconfirmed for 6 s: escalated
        f.write(f'[critical]\npublic_url = "{base}"\nconfirm_minutes = {ESCALATE / 60}\n')
    kannel.inbound_url = f"{base}/api/sms/inbound?key={key}&from=%p&text=%a"
    kannel.start()
    hub.start()
    try:
        operator = hub.add_user("ops", "operator", PASSWORD)
        box = start_box(boxes, tmp_path / "box", broker.mqtt_config(), sync={"status_seconds": 1})
        box.add_user("admin", PASSWORD, role="admin")
        cookie = box_login(box.web_port, "admin", PASSWORD)
        add_doctor(box, cookie, {"name": "Dr Asha Rao", "mobile": "98450 12345",
                                 "email": "asha@example.in", "language": "kn"})  # fmt: skip
        add_doctor(box, cookie, {"name": "Dr On Call", "mobile": ON_CALL, "language": "en",
                                 "on_call": "on"})  # fmt: skip
        wait_for(lambda: (hub.api("/api/boxes")["boxes"][0]["status"].get("on_call") or {})
                 .get("mobile") == ON_CALL, 30, "the on-call contact at the hub")  # fmt: skip
        uid = study_of(tmp_path, box, "a", "693_UNCI.dcm", "RAO^ASHA")
        uid2 = study_of(tmp_path, box, "b", "MR2_UNCR.dcm", "RAO^ASHA")

        # signed critical: the SMS in Kannada and the e-mail go at once
        rid = sign_critical(hub, uid, "Acute subdural haematoma, 9 mm, midline shift.")
        wait_for(lambda: kannel.delivered(), 20, "the SMS at the operator's centre")
        ((sender, to, text),) = kannel.delivered()
        assert (sender, to) == ("RadSetu", MOBILE)
        assert "ಗಂಭೀರ ಫಲಿತಾಂಶ" in text and "subdural" in text
        assert "R.B." in text and "RAMAPPA" not in text  # initials only (the default)
        code = re.search(r"YES (\d{4})", text)[1]  # type: ignore[index]
        link = re.search(r"(http://\S+/c/\S+?) ", text)[1]  # type: ignore[index]
        wait_for(lambda: mail.messages, 20, "the e-mail")
        (msg,) = mail.messages
        assert msg["To"] == "asha@example.in" and "critical" in msg["Subject"]
        assert f"YES {code}" in msg.get_content()

        # a second finding, confirmed at once through the link, by name
        sign_critical(hub, uid2, "Large acute infarct, left MCA territory.")
        wait_for(lambda: len(kannel.delivered()) >= 2, 20, "the second SMS")
        link2 = re.search(r"(http://\S+/c/\S+?) ", kannel.delivered()[-1][2])[1]  # type: ignore[index]
        body = urllib.parse.urlencode({"name": "Dr Asha Rao"}).encode()
        with urllib.request.urlopen(urllib.request.Request(link2, data=body), timeout=10) as r:
            assert "Confirmed by" in r.read().decode()

        # the first is not confirmed in time: the on-call contact is told, and the
        # operators see an alert
        wait_for(lambda: [m for m in kannel.delivered() if m[1] == ON_CALL], ESCALATE + 20,
                 "the escalation to the on-call contact")  # fmt: skip
        (told,) = [m for m in kannel.delivered() if m[1] == ON_CALL]
        assert "CRITICAL finding" in told[2] and "subdural" in told[2]
        signed_at = hub.api(f"/api/reports/{rid}")["signed_at"]
        (escalated,) = hub.api("/api/audit?action=critical_escalated")["audit"]
        took = seconds_between(signed_at, escalated["at"])
        print(f"escalated {took:.1f} s after signing (critical.confirm_minutes: {ESCALATE} s)")
        assert ESCALATE <= took <= ESCALATE + 5

        # nobody confirms for as long again: the operators see an alert
        def alerted_kinds() -> set[str]:
            return {a["kind"] for a in hub.api("/api/fleet", token=operator)["alerts"]}

        wait_for(lambda: "critical_unconfirmed" in alerted_kinds(), ESCALATE + 20, "the alert")
        (alerted,) = hub.api("/api/audit?action=critical_to_operators")["audit"]
        assert 2 * ESCALATE <= seconds_between(signed_at, alerted["at"]) <= 2 * ESCALATE + 5

        # the link opens a page with the finding; a guessed one opens nothing
        with urllib.request.urlopen(link, timeout=10) as r:
            assert "subdural" in r.read().decode()
        try:
            urllib.request.urlopen(base + "/c/" + secrets.token_urlsafe(24), timeout=10)
            raise AssertionError("a guessed link opened a result")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404

        # a forged reply (no key, or from another phone) confirms nothing
        phone = urllib.parse.quote(MOBILE)
        forged = f"{base}/api/sms/inbound?key=wrong&from={phone}&text=YES+{code}"
        try:
            urllib.request.urlopen(forged, timeout=10)
            raise AssertionError("a forged key was taken")
        except urllib.error.HTTPError as exc:
            assert exc.code == 403
        kannel.phone(reply=("+919900000009", "RadSetu", f"YES {code}"))
        wait_for(lambda: [m for m in kannel.delivered() if m[1] == "+919900000009"], 20,
                 "the gateway's answer to the stranger")  # fmt: skip
        assert "no open critical finding" in kannel.delivered()[-1][2]
        m = scrape(hub.web_port, operator)
        assert at(m, "radsetu_hub_critical_results", state="open") == 1

        # the doctor replies from their phone: confirmed, and told so
        kannel.phone(reply=(MOBILE, "RadSetu", f"YES {code}"))
        wait_for(lambda: at(scrape(hub.web_port, operator), "radsetu_hub_critical_results",
                            state="confirmed") == 2, 20, "the confirmation")  # fmt: skip
        wait_for(lambda: "confirmed" in kannel.delivered()[-1][2], 20, "the answer to the doctor")
        assert kannel.delivered()[-1][1] == MOBILE

        m = scrape(hub.web_port, operator)
        assert at(m, "radsetu_hub_notifications", channel="sms", state="sent") == 3
        assert at(m, "radsetu_hub_notifications", channel="email", state="sent") == 2
        audit = hub.api("/api/audit")["audit"]
        actions = [(a["action"], a["username"]) for a in audit if "critical" in a["action"]]
        assert actions.count(("critical_sent", "system")) == 5
        assert ("critical_confirmed", "Dr Asha Rao") in actions
        assert sum(1 for a, _ in actions if a == "critical_confirmed") == 2
        assert hub.api(f"/api/reports/{rid}")["critical"] is True
        kinds = {a["kind"] for a in hub.api("/api/fleet", token=operator)["alerts"]}
        assert "critical_unconfirmed" not in kinds
        tat = hub.api(f"/api/studies/{uid}/turnaround")
        assert tat["seconds"]["signed_to_critical_confirmed"] > ESCALATE
    finally:
        hub.stop()
        kannel.remove()
        mail.stop()
        broker.stop()


def seconds_between(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def test_the_clinic_sees_a_critical_finding_until_staff_confirm_it(tmp_path, browser, boxes):
    """The box is offline when the report is signed: it shows the finding as soon as
    the report is in, on every page, with a sound, until a named member of staff
    writes what the doctor read back; the hub then has the result confirmed."""
    import sqlite3

    from selenium.webdriver.common.by import By

    from tests.conftest import screenshots, until
    from tests.system.test_clinic import login

    broker = Broker(tmp_path / "broker").start()
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    try:
        operator = hub.add_user("ops", "operator", PASSWORD)
        box = start_box(boxes, tmp_path / "box", broker.mqtt_config(), sync={"status_seconds": 1})
        box.add_user("asha", PASSWORD)
        uid = study_of(tmp_path, box, "c", "693_UNCI.dcm", "")
        box.stop()  # the clinic's link is down while the radiologist signs
        sign_critical(hub, uid, "Tension pneumothorax, right.")
        box.start()
        wait_for(lambda: box.api("/api/reports")["reports"], 30, "the report at the box")

        b, base = browser, f"http://127.0.0.1:{box.web_port}"
        login(b, base, "asha", PASSWORD)
        for page in ("/", "/upload", "/reports"):
            b.get(base + page)
            alert = b.find_element(By.ID, "critical-alerts")
            assert "Tension pneumothorax" in alert.text and "BASAVARAJ" in alert.text
        until(b, lambda d: int(d.find_element(By.ID, "critical-alerts").get_attribute(
            "data-sounded") or 0) >= 1)  # fmt: skip
        screenshots(b, "box-critical-finding")
        b.find_element(By.CSS_SELECTOR, "#critical-alerts a").click()
        b.find_element(By.ID, "readback").send_keys("Right tension pneumothorax; needle now")
        b.find_element(By.ID, "critical-confirm").click()
        until(b, lambda d: not d.find_elements(By.ID, "critical-alerts"))
        b.get(base + "/upload")
        assert not b.find_elements(By.ID, "critical-alerts")

        # the hub hears of it: the result is confirmed, by the named member of staff
        wait_for(lambda: at(scrape(hub.web_port, operator), "radsetu_hub_critical_results",
                            state="confirmed") == 1, 30, "the confirmation at the hub")  # fmt: skip
        audit = hub.api("/api/audit?action=critical_confirmed")["audit"]
        assert [a["username"] for a in audit] == ["asha (test-box)"]
        assert "needle now" in audit[0]["detail"] or audit[0]["study_uid"] == uid
        with sqlite3.connect(box.data_dir / "index.db") as db:
            rows = db.execute(
                "SELECT username, detail FROM audit WHERE action='critical_confirmed'"
            ).fetchall()
        assert rows and rows[0][0] == "asha" and "needle now" in rows[0][1]

        def pending() -> int:  # cleared once the hub answered that it has it (down/kept)
            with sqlite3.connect(box.data_dir / "index.db") as db:
                return int(db.execute("SELECT sum(confirm_pending) FROM reports").fetchone()[0])

        wait_for(lambda: pending() == 0, 30, "the box told that the hub has it")
    finally:
        hub.stop()
        broker.stop()
