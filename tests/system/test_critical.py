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
    with open(hub.config, "a") as f:
        f.write(f'[critical]\npublic_url = "{base}"\n')
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
        uid = study_of(tmp_path, box, "a", "693_UNCI.dcm", "RAO^ASHA")

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
        kannel.phone(reply=("+919900000000", "RadSetu", f"YES {code}"))
        wait_for(lambda: len(kannel.delivered()) >= 2, 20, "the gateway's answer to the stranger")
        assert "no open critical finding" in kannel.delivered()[-1][2]
        m = scrape(hub.web_port, operator)
        assert at(m, "radsetu_hub_critical_results", state="open") == 1

        # the doctor replies from their phone: confirmed, and told so
        kannel.phone(reply=(MOBILE, "RadSetu", f"YES {code}"))
        wait_for(lambda: at(scrape(hub.web_port, operator), "radsetu_hub_critical_results",
                            state="confirmed") == 1, 20, "the confirmation")  # fmt: skip
        wait_for(lambda: len(kannel.delivered()) >= 3, 20, "the gateway's answer to the doctor")
        assert kannel.delivered()[-1][1] == MOBILE and "confirmed" in kannel.delivered()[-1][2]

        # a second finding, confirmed through the link by name
        uid2 = study_of(tmp_path, box, "b", "MR2_UNCR.dcm", "RAO^ASHA")
        sign_critical(hub, uid2, "Large acute infarct, left MCA territory.")
        wait_for(lambda: len(kannel.delivered()) >= 4, 20, "the second SMS")
        link2 = re.search(r"(http://\S+/c/\S+?) ", kannel.delivered()[-1][2])[1]  # type: ignore[index]
        body = urllib.parse.urlencode({"name": "Dr Asha Rao"}).encode()
        with urllib.request.urlopen(urllib.request.Request(link2, data=body), timeout=10) as r:
            assert "Confirmed by" in r.read().decode()

        m = scrape(hub.web_port, operator)
        assert at(m, "radsetu_hub_critical_results", state="confirmed") == 2
        assert at(m, "radsetu_hub_notifications", channel="sms", state="sent") == 2
        assert at(m, "radsetu_hub_notifications", channel="email", state="sent") == 2
        audit = hub.api("/api/audit")["audit"]
        actions = [(a["action"], a["username"]) for a in audit if "critical" in a["action"]]
        assert actions.count(("critical_sent", "system")) == 4
        assert ("critical_confirmed", "Dr Asha Rao") in actions
        assert sum(1 for a, _ in actions if a == "critical_confirmed") == 2
        assert hub.api(f"/api/reports/{rid}")["critical"] is True
    finally:
        hub.stop()
        kannel.remove()
        mail.stop()
        broker.stop()
