"""Orders and the box's Modality Worklist, end to end with real tools: reception
registers orders on the clinic's page (headless Chromium), dcmtk's findscu and a
pynetdicom SCU query the box's worklist as modalities do, a real CT series rewritten
with the worklist's answer (as a modality writes it) goes in with storescu and meets
its order, the hub's worklist shows the order's clinical question and referring doctor,
and a study sent without the worklist is linked to its order by hand."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import types
import urllib.request
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep, ModalityWorklistInformationFind

from devkit.box import Box
from devkit.broker import Broker, Hub
from edge import orders, worklist
from edge.store import Store, reader
from tests.conftest import gone, need, pdf_text, screenshots, storescu, until, wait_for
from tests.helpers import delivered, make_study, sign_report, start_box
from tests.system.test_clinic import login
from tests.system.test_referrers import add_doctor

PASSWORD = "correct horse battery"
CALLERS = ["CT_ROOM1", "CR_ROOM2", "MWLSIM", "STORESCU"]
LOCAL = "ಲಕ್ಷ್ಮಿ ರಾವ್"  # Lakshmi Rao, in Kannada
QUESTION = "Fall at home, GCS 13: bleed?"


def add_order(b, base, **form):  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    b.get(base + "/orders")
    for field in ("name", "name-local", "patient-id", "age", "body", "question"):
        if form.get(field):
            b.find_element(By.ID, f"order-{field}").send_keys(form[field])
    Select(b.find_element(By.ID, "order-sex")).select_by_value(form["sex"])
    Select(b.find_element(By.ID, "order-exam")).select_by_value(form.get("exam", ""))
    if form.get("modality"):
        Select(b.find_element(By.ID, "order-modality")).select_by_value(form["modality"])
    if form.get("doctor"):
        Select(b.find_element(By.ID, "order-referrer")).select_by_visible_text(form["doctor"])
    if form.get("stat"):
        b.find_element(By.ID, "order-stat").click()
    page = b.find_element(By.ID, "order-form")
    b.find_element(By.ID, "order-save").click()
    gone(b, page)


def findscu(port: int, out: Path, *keys: str, aet: str = "CT_ROOM1") -> list[Dataset]:
    """dcmtk's findscu on the worklist model; each answer as a dataset."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.dcm"):
        old.unlink()
    asked = ["0010,0010", "0010,0020", "0010,0030", "0010,0040", "0008,0050", "0020,000D",
             "0008,0090", "0032,1060", "0040,1001", "0040,1002", "0040,1003"]  # fmt: skip
    cmd = [need("findscu"), "-W", "-aet", aet, "-aec", "RADSETU", "-X", "-od", str(out)]
    for k in asked:
        cmd += ["-k", k]
    for k in keys:
        cmd += ["-k", k]
    r = subprocess.run([*cmd, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"findscu: {r.returncode} {r.stderr[-1500:]}")
    return [pydicom.dcmread(p) for p in sorted(out.glob("*.dcm"))]


def step(key: str, value: str) -> str:
    """A key of the query's Scheduled Procedure Step."""
    return f"(0040,0100)[0].({key})={value}"


def test_orders_meet_their_studies_through_the_worklist(tmp_path, browser, boxes):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    today = dt.date.today().strftime("%Y%m%d")
    broker = Broker(tmp_path / "broker").start()
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    try:
        box = start_box(boxes, tmp_path / "box", broker.mqtt_config(),
                        worklist={"stations": ["CT=CT_ROOM1"]},
                        dicom={"allowed_callers": CALLERS})  # fmt: skip
        box.add_user("admin", PASSWORD, role="admin")
        b, base = browser, f"http://127.0.0.1:{box.web_port}"
        login(b, base, "admin", PASSWORD)
        until(b, lambda d: d.find_elements(By.ID, "nav-orders"))
        add_doctor(b, base, "Dr Asha Rao", "98450 12345", "", "kn", False)

        # hostile input on the form: refused with the reason, nothing stored
        add_order(b, base, name="<script>window.pwned=1</script>", **{"patient-id": "X1"},
                  sex="F", age="40", modality="CT")  # fmt: skip
        assert "Latin letters" in b.find_element(By.CSS_SELECTOR, ".flash.error").text
        add_order(b, base, name="Ravi", **{"patient-id": "X' OR 1=1"}, sex="M", age="40",
                  modality="CR")  # fmt: skip
        assert "patient ID" in b.find_element(By.CSS_SELECTOR, ".flash.error").text
        assert not b.find_elements(By.CSS_SELECTOR, "tr.order")

        add_order(b, base, name="Lakshmi Rao", **{"name-local": LOCAL, "patient-id": "BGK-0042"},
                  sex="F", age="45", exam="CT HEAD", doctor="Dr Asha Rao",
                  question=QUESTION, stat=True)  # fmt: skip
        add_order(b, base, name="Ravi Patil", **{"patient-id": "BGK-0043"}, sex="M", age="61",
                  exam="CR CHEST", question="Cough for 3 weeks")  # fmt: skip
        rows = b.find_elements(By.CSS_SELECTOR, "tr.order")
        assert len(rows) == 2 and all("scheduled" in r.text for r in rows)
        screenshots(b, "box-orders")

        # the modality's queries: by date, by modality, with and without the station
        port, out = box.worklist_port, tmp_path / "findscu"
        by_date = findscu(port, out, step("0040,0002", today))
        assert sorted(str(d.PatientID) for d in by_date) == ["BGK-0042", "BGK-0043"]
        (ct,) = findscu(port, out, step("0008,0060", "CT"), step("0040,0001", ""),
                        step("0040,0002", ""))  # fmt: skip
        assert ct.SpecificCharacterSet == "ISO_IR 192"
        assert ct.PatientName.alphabetic == "Lakshmi Rao"
        assert ct.PatientName.ideographic == LOCAL  # UTF-8 intact through dcmtk
        assert ct.ReasonForTheRequestedProcedure == QUESTION
        assert str(ct.ReferringPhysicianName) == "Dr Asha Rao"
        assert ct.RequestedProcedurePriority == "STAT" and ct.PatientSex == "F"
        sps = ct.ScheduledProcedureStepSequence[0]
        assert sps.Modality == "CT" and sps.ScheduledStationAETitle == "CT_ROOM1"
        mine = findscu(port, out, step("0040,0001", "CT_ROOM1"), step("0008,0060", ""))
        assert [str(d.PatientID) for d in mine] == ["BGK-0042"]
        # the CR order has no station: any station of its modality gets it
        cr = findscu(port, out, step("0040,0001", "CR_ROOM2"), step("0008,0060", ""),
                     aet="CR_ROOM2")  # fmt: skip
        assert [str(d.PatientID) for d in cr] == ["BGK-0043"]
        assert findscu(port, out, step("0040,0002", "19990101")) == []
        # a caller the clinic did not list is refused at association
        with pytest.raises(RuntimeError):
            findscu(port, out, aet="EVIL")

        # a second modality simulator: pynetdicom as the SCU, wildcards everywhere
        ae = AE(ae_title="MWLSIM")
        ae.add_requested_context(ModalityWorklistInformationFind)
        assoc = ae.associate("127.0.0.1", port, ae_title="RADSETU")
        assert assoc.is_established
        q = Dataset()
        q.PatientName, q.PatientID, q.AccessionNumber, q.StudyInstanceUID = "*", "*", "*", ""
        item = Dataset()
        item.Modality, item.ScheduledStationAETitle, item.ScheduledProcedureStepStartDate = (
            "*", "*", f"{today}-")  # fmt: skip
        q.ScheduledProcedureStepSequence = [item]
        answers = [i for s, i in assoc.send_c_find(q, ModalityWorklistInformationFind)
                   if s and s.Status == 0xFF00]  # fmt: skip
        assoc.release()
        assert len(answers) == 2
        assert all(set(a.dir()) <= {"SpecificCharacterSet", "PatientName", "PatientID",
                                    "AccessionNumber", "StudyInstanceUID",
                                    "ScheduledProcedureStepSequence"} for a in answers)  # fmt: skip

        # the CT as the modality writes it: a real series with the worklist's attributes
        files, _own_uid = make_study(tmp_path, "ct", 3)
        for f in files:
            ds = pydicom.dcmread(f)
            for key in (
                "PatientName",
                "PatientID",
                "PatientSex",
                "AccessionNumber",
                "StudyInstanceUID",
                "ReferringPhysicianName",
                "SpecificCharacterSet",
            ):
                setattr(ds, key, ct.get(key))  # fmt: skip
            ds.StudyDate, ds.StudyTime = today, dt.datetime.now().strftime("%H%M%S")
            ds.save_as(f)
        storescu(box.dicom_port, files, aet="CT_ROOM1")
        uid = str(ct.StudyInstanceUID)
        wait_for(lambda: delivered(box, uid), 60, "the ordered CT at the hub")

        def at_hub(study_uid: str) -> dict:
            rows = [s for s in hub.api("/api/worklist?all=1")["studies"]
                    if s["study_uid"] == study_uid]  # fmt: skip
            return rows[0] if rows else {}

        wait_for(lambda: at_hub(uid).get("clinical_note") == QUESTION, 30, "the question")
        row = at_hub(uid)
        assert row["priority"] == "stat" and row["referrer"]["name"] == "Dr Asha Rao"
        # the turnaround starts at the order; the report prints its question and doctor
        tat = hub.api(f"/api/studies/{uid}/turnaround")
        assert tat["times"]["ordered_at"] and tat["seconds"]["ordered_to_acquired"] >= 0
        report_id = sign_report(hub, uid, "No bleed.")
        req = urllib.request.Request(f"http://127.0.0.1:{hub.web_port}/api/reports/{report_id}/pdf",
                                     headers={"Authorization": f"Bearer {hub.token}"})  # fmt: skip
        pdf = tmp_path / "report.pdf"
        with urllib.request.urlopen(req, timeout=20) as r:
            pdf.write_bytes(r.read())
        text = " ".join(pdf_text(pdf).split())
        assert f"Clinical question: {QUESTION}" in text and "Referred by: Dr Asha Rao" in text
        assert f"Accession number: {ct.AccessionNumber}" in text
        b.get(base + "/orders")
        ordered = b.find_element(
            By.CSS_SELECTOR, f"tr.order[data-accession='{ct.AccessionNumber}']"
        )
        assert "reported" in ordered.text or "at the hub" in ordered.text  # its report may be in
        # the worklist no longer offers what was done
        assert [str(d.PatientID) for d in findscu(port, out)] == ["BGK-0043"]

        # a study sent without the worklist: offered for linking by hand, never guessed
        files, loose = make_study(tmp_path, "cr", 1, src="MR2_UNCR.dcm")
        storescu(box.dicom_port, files, aet="CR_ROOM2")
        wait_for(lambda: delivered(box, loose), 60, "the loose study at the hub")
        b.get(f"{base}/study/{loose}")
        assert not b.find_elements(By.ID, "order-linked")
        Select(b.find_element(By.ID, "order-choice")).select_by_index(0)
        b.find_element(By.ID, "order-link").click()
        until(b, lambda d: d.find_elements(By.ID, "order-linked"))
        wait_for(lambda: at_hub(loose).get("clinical_note") == "Cough for 3 weeks", 30,
                 "the linked order's question at the hub")  # fmt: skip
        b.get(base + "/audit")
        actions = {
            r.get_attribute("data-action") for r in b.find_elements(By.CSS_SELECTOR, ".audit-row")
        }
        assert {"order_add", "order_link"} <= actions
        assert b.execute_script("return window.pwned") is None
    finally:
        hub.stop()
        broker.stop()


def _event(query: Dataset | Exception) -> types.SimpleNamespace:
    """What pynetdicom hands the C-FIND handler: the caller and the decoded identifier
    (decoding a malformed one raises, as pynetdicom's does)."""

    class Event(types.SimpleNamespace):
        @property
        def identifier(self) -> Dataset:
            if isinstance(query, Exception):
                raise query
            return query

    return Event(assoc=types.SimpleNamespace(requestor=types.SimpleNamespace(ae_title="CT1")),
                 is_cancelled=False)  # fmt: skip


def test_a_query_gets_at_most_max_answers_and_a_bad_one_is_refused(tmp_path, caplog):
    store = Store(tmp_path / "data")
    for i in range(7):
        form = {"name_latin": f"Patient {chr(65 + i)}", "patient_id": f"P{i}", "sex": "F",
                "age": "30", "modality": "CT"}  # fmt: skip
        orders.create(store.db, form, set(), "", "reception")
    store.close()
    config = {"worklist": {"max_answers": 5}}
    q = Dataset()
    q.PatientName = "*"
    got = list(worklist.handle_find(_event(q), config, tmp_path / "data"))
    assert [s for s, _ in got] == [0xFF00] * 5 + [0x0000]
    assert "answered the first 5" in caplog.text
    bad = list(worklist.handle_find(_event(ValueError("bad VR")), config, tmp_path / "data"))
    assert bad == [(0xC000, None)] and "refused: bad VR" in caplog.text
    with reader(tmp_path / "data") as db:
        assert len(orders.scheduled(db)) == 7  # nothing lost by either


def _csrf(session: requests.Session, url: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', session.get(url).text)
    assert found
    return found[1]


def test_offline_the_worklist_mpps_and_an_order_met_by_accession(tmp_path, boxes):
    """No hub and no broker: orders, the worklist, MPPS and matching work on the box
    alone. The modality here keeps its own Study UID, so the order is met by its
    accession number."""
    box = Box(tmp_path / "box", quiet_seconds=1, dicom={"allowed_callers": CALLERS})
    boxes.append(box)
    box.start()
    box.add_user("reception", PASSWORD)
    base = f"http://127.0.0.1:{box.web_port}"
    s = requests.Session()
    r = s.post(base + "/login", data={"username": "reception", "password": PASSWORD,
                                      "csrf": _csrf(s, base + "/login")})  # fmt: skip
    assert r.ok and "/login" not in r.url
    form = {"name_latin": "Meena Kumari", "patient_id": "VJP-7", "sex": "F",
            "birth_date": "2999-01-01", "modality": "MR", "body_part": "BRAIN",
            "question": "Headache for a week", "stat": "on"}  # fmt: skip
    r = s.post(base + "/orders", data={**form, "csrf": _csrf(s, base + "/orders")})
    assert r.status_code == 400 and "not a date in the future" in r.text  # nothing stored
    form["birth_date"] = "1980-02-29"
    r = s.post(base + "/orders", data={**form, "csrf": _csrf(s, base + "/orders")})
    assert r.ok and "Meena Kumari" in r.text

    # an order made by mistake is cancelled, and the worklist no longer offers it
    gone = {**form, "name_latin": "Wrong Entry", "patient_id": "TMP-1"}
    s.post(base + "/orders", data={**gone, "csrf": _csrf(s, base + "/orders")})
    acc = re.search(
        r'data-accession="(\d+)"[^>]*>(?:(?!</tr>).)*Wrong Entry',
        s.get(base + "/orders").text,
        re.S,
    )
    assert acc
    r = s.post(f"{base}/orders/{acc[1]}/cancel", data={"csrf": _csrf(s, base + "/orders")})
    assert r.ok and '"progress">cancelled' in r.text

    ae = AE(ae_title="MWLSIM")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", box.worklist_port, ae_title="RADSETU")
    assert assoc.is_established
    q = Dataset()
    q.PatientID, q.AccessionNumber, q.PatientBirthDate, q.PatientAge = "VJP-7", "", "", ""
    (answer,) = [i for st, i in assoc.send_c_find(q, ModalityWorklistInformationFind)
                 if st and st.Status == 0xFF00]  # fmt: skip
    assert answer.PatientBirthDate == "19800229" and answer.PatientAge.startswith("0")
    q.PatientID = "TMP-1"
    assert not [i for st, i in assoc.send_c_find(q, ModalityWorklistInformationFind) if i]
    # malformed keys over the network: an overlong ID, a date that is no date, a name
    # with markup; answered with nothing (not refused), and the port serves on
    bad = Dataset()
    bad.PatientID, bad.PatientName = "X" * 200, "<script>alert(1)</script>*"
    step_q = Dataset()
    step_q.ScheduledProcedureStepStartDate = "2026-13-99"
    bad.ScheduledProcedureStepSequence = [step_q]
    statuses = [st.Status for st, _i in assoc.send_c_find(bad, ModalityWorklistInformationFind)]
    assert statuses == [0x0000]
    assert [i for st, i in assoc.send_c_find(q, ModalityWorklistInformationFind) if i] == []

    # the modality's performed procedure step: begun, then done
    step = Dataset()
    step.PerformedProcedureStepStatus = "IN PROGRESS"
    item = Dataset()
    item.AccessionNumber, item.StudyInstanceUID = answer.AccessionNumber, "1.2.3.4.5.6"
    step.ScheduledStepAttributesSequence = [item]
    step_uid = generate_uid()
    st, _ = assoc.send_n_create(step, ModalityPerformedProcedureStep, step_uid)
    assert st.Status == 0x0000
    # a step for an order the box never had is refused, and changes nothing
    stray = Dataset()
    stray.PerformedProcedureStepStatus = "IN PROGRESS"
    other = Dataset()
    other.AccessionNumber, other.StudyInstanceUID = "NO-SUCH", "9.9.9"
    stray.ScheduledStepAttributesSequence = [other]
    st, _ = assoc.send_n_create(stray, ModalityPerformedProcedureStep, generate_uid())
    assert st.Status == 0x0110
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    st, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, step_uid)
    assert st.Status == 0x0000
    assoc.release()
    page = s.get(base + "/orders").text
    assert "done at the machine" in page

    # the images, with the order's accession number but the modality's own Study UID
    files, uid = make_study(tmp_path, "mr", 2, src="MR2_UNCR.dcm")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.AccessionNumber, ds.PatientID, ds.PatientName = answer.AccessionNumber, "VJP-7", (
            "Meena Kumari")  # fmt: skip
        ds.save_as(f)
    storescu(box.dicom_port, files, aet="MWLSIM")
    wait_for(lambda: box.api(f"/api/studies/{uid}").get("clinical_note"), 30, "the order met")
    study = box.api(f"/api/studies/{uid}")
    assert study["clinical_note"] == "Headache for a week" and study["priority"] == "stat"
    # and the order follows its study: received (no hub here to send it to)
    wait_for(lambda: '"progress">received' in s.get(base + "/orders").text, 30, "received")
