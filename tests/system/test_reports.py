"""Reports: drafted and signed at the hub, carried back over MQTT, kept once at the box
and printed through a real CUPS queue (cups-pdf), whose output ``pdftotext`` reads."""

from __future__ import annotations

import time
import urllib.error

import pytest

from devkit.box import Box
from devkit.broker import Broker, Hub
from tests.conftest import SCREENSHOTS, pdf_text, printed, storescu, wait_for
from tests.helpers import delivered, make_study, start_box
from tests.printing import assert_printed, made


@pytest.fixture
def site(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    yield broker, hub
    hub.stop()
    broker.stop()


def test_reports_draft_sign_addendum_at_the_hub(tmp_path, site, boxes):
    broker, hub = site
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config())
    files, uid = make_study(tmp_path, "study", 2)
    storescu(box.dicom_port, files)
    wait_for(lambda: delivered(box, uid), 40, "the study at the hub")

    def refused(path, body, method=None):
        with pytest.raises(urllib.error.HTTPError) as e:
            hub.api(path, body, method)
        return e.value.code, e.value.read().decode()

    assert refused("/api/studies/1.2.3/reports", {"findings": "x"})[0] == 404
    draft = hub.api(
        f"/api/studies/{uid}/reports", {"findings": "<b>bold</b>", "radiologist": "Dr A"}
    )
    rid = draft["report_id"]
    assert draft["state"] == "draft" and draft["delivery"] is None
    hub.api(f"/api/reports/{rid}", {"findings": "No fracture.", "impression": "Normal."}, "PUT")
    assert refused(f"/api/reports/{rid}", {"findings": 5}, "PUT")[0] == 400
    signed = hub.api(f"/api/reports/{rid}/sign", {})
    assert signed["state"] == "signed" and signed["signed_at"]
    code, text = refused(f"/api/reports/{rid}", {"findings": "changed"}, "PUT")
    assert code == 409 and "addendum" in text
    assert refused(f"/api/reports/{rid}/sign", {})[0] == 409
    add = hub.api(
        f"/api/reports/{rid}/addenda",
        {"findings": "Also: old rib fracture.", "radiologist": "Dr B"},
    )
    assert add["version"] == 2 and add["state"] == "signed"
    assert hub.api(f"/api/reports/{rid}")["version"] == 2
    pdf = hub.data_dir / add["pdf_path"]
    text = pdf_text(pdf)
    assert "ADDENDUM" in text and "old rib fracture" in text and "Dr B" in text
    # both versions reach the box, each once
    wait_for(lambda: len(box.api("/api/reports")["reports"]) == 2, 40, "both versions at the box")
    rows = hub.api(f"/api/studies/{uid}/reports")["reports"]
    wait_for(
        lambda: all(
            r["delivery"]["state"] == "acked"
            for r in hub.api(f"/api/studies/{uid}/reports")["reports"]
        ),
        20,
        "acks at the hub",
    )
    assert [r["version"] for r in rows] == [1, 2]


def test_signed_report_is_printed_at_the_box(tmp_path, site, boxes, cups_printer):
    broker, hub = site
    queue, out = cups_printer
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config(), printer=queue)
    files, uid = make_study(tmp_path, "study", 3)
    storescu(box.dicom_port, files)
    wait_for(lambda: delivered(box, uid), 40, "the study at the hub")
    findings = "Consolidation in the right lower lobe, in keeping with pneumonia."
    r = hub.api(
        f"/api/studies/{uid}/reports",
        {"findings": findings, "impression": "Pneumonia.", "radiologist": "Dr Rao"},
    )
    hub.api(f"/api/reports/{r['report_id']}/sign", {})
    files_out = wait_for(lambda: printed(out, r["report_id"]), 60, "the printed PDF")
    text = pdf_text(made(hub, files_out[0]))
    assert "right lower lobe" in text and "Dr Rao" in text and uid in text
    assert_printed(files_out[0], made(hub, files_out[0]), "right lower lobe", "Dr Rao", uid)
    patient = box.api(f"/api/studies/{uid}")
    assert patient["patient_id"] in text and "Patient:" in text and "CT" in text
    (at_box,) = box.api("/api/reports")["reports"]
    assert at_box["print_count"] == 1 and at_box["printed_at"] and at_box["findings"] == findings
    # a reprint prints once more
    box.api(f"/api/reports/{r['report_id']}/print", {})
    wait_for(lambda: box.api("/api/reports")["reports"][0]["print_count"] == 2, 60, "the reprint")


def test_report_signed_while_the_box_is_offline_arrives_once(tmp_path, site, boxes, cups_printer):
    broker, hub = site
    queue, out = cups_printer
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config(), printer=queue)
    files, uid = make_study(tmp_path, "study", 2)
    storescu(box.dicom_port, files)
    wait_for(lambda: delivered(box, uid), 40, "the study at the hub")
    box.stop()
    wait_for(lambda: not hub.api("/api/boxes")["boxes"][0]["online"], 20, "the box offline")
    r = hub.api(
        f"/api/studies/{uid}/reports",
        {
            "findings": "Large subdural haematoma with midline shift.",
            "radiologist": "Dr Iyer",
            "critical": True,
        },
    )
    rid = r["report_id"]
    hub.api(f"/api/reports/{rid}/sign", {})
    time.sleep(3)  # the hub tries; nobody is there to take it
    assert hub.api(f"/api/reports/{rid}")["delivery"]["state"] == "pending"
    box.start()
    wait_for(lambda: printed(out, rid), 60, "the report printed after the box came back")
    wait_for(lambda: hub.api(f"/api/reports/{rid}")["delivery"]["state"] == "acked", 40, "the ack")
    time.sleep(3)  # anything sent twice would have arrived by now
    reports = box.api("/api/reports")["reports"]
    assert len(reports) == 1 and reports[0]["critical"] is True and reports[0]["print_count"] == 1
    (paper,) = printed(out, rid)
    assert "subdural" in pdf_text(made(hub, paper))
    assert_printed(paper, made(hub, paper), "Large subdural haematoma")
    assert "CRITICAL" in box.log_text()


def test_worklist_claims_and_turnaround(tmp_path, site, boxes, cups_printer):
    """STAT first, then the longest waiting; filters; one reader at a time; passing a
    study on; and every turnaround step recorded up to the print at the clinic."""
    broker, hub = site
    queue, out = cups_printer
    box = start_box(
        boxes,
        tmp_path / "box",
        broker.mqtt_config(),
        printer=queue,
        stat={"calling_ae_titles": ["ER"]},
    )
    ct, ct_uid = make_study(tmp_path, "ct", 2)
    mr, mr_uid = make_study(tmp_path, "mr", 1, src="MR2_UNCR.dcm")
    storescu(box.dicom_port, ct)
    wait_for(lambda: delivered(box, ct_uid), 40, "the routine CT at the hub")
    storescu(box.dicom_port, mr, aet="ER")
    wait_for(lambda: delivered(box, mr_uid), 40, "the STAT MR at the hub")
    box.api(f"/api/studies/{ct_uid}")  # both exist at the box
    wl = hub.api("/api/worklist")["studies"]
    assert [s["study_uid"] for s in wl] == [mr_uid, ct_uid]  # STAT first though newer
    assert wl[0]["priority"] == "stat" and wl[1]["priority"] == "routine"
    assert wl[0]["modality"] == "MR" and wl[0]["box_id"] == "test-box"
    assert [s["study_uid"] for s in hub.api("/api/worklist?modality=CT")["studies"]] == [ct_uid]
    assert hub.api("/api/worklist?clinic=elsewhere")["studies"] == []

    hub.api(f"/api/studies/{mr_uid}/claim", {"radiologist": "Dr A"})
    for path, who in (("claim", "Dr B"), ("release", "Dr B")):
        with pytest.raises(urllib.error.HTTPError) as e:
            hub.api(f"/api/studies/{mr_uid}/{path}", {"radiologist": who})
        assert e.value.code == 409 and "Dr A" in e.value.read().decode()
    passed = hub.api(
        f"/api/studies/{mr_uid}/assign", {"subspecialty": "msk", "radiologist": "Dr M"}
    )
    assert passed["subspecialty"] == "msk" and passed["claimed_by"] is None
    assert [s["study_uid"] for s in hub.api("/api/worklist?subspecialty=msk")["studies"]] == [
        mr_uid
    ]
    hub.api(f"/api/studies/{mr_uid}/claim", {"radiologist": "Dr M"})

    r = hub.api(
        f"/api/studies/{mr_uid}/reports", {"findings": "Rotator cuff tear.", "radiologist": "Dr M"}
    )
    hub.api(f"/api/reports/{r['report_id']}/sign", {})
    assert [s["study_uid"] for s in hub.api("/api/worklist")["studies"]] == [ct_uid]
    wait_for(lambda: printed(out, r["report_id"]), 60, "the print")
    tat = wait_for(
        lambda: (t := hub.api(f"/api/studies/{mr_uid}/turnaround"))["times"]["printed_at"] and t,
        30,
        "the printed step at the hub",
    )
    times = tat["times"]
    for step in ("received_at_box", "verified_at", "claimed_at", "signed_at", "report_at_box_at"):
        assert times[step], step
    assert times["verified_at"] <= times["claimed_at"] <= times["signed_at"]
    assert times["signed_at"] <= times["report_at_box_at"] <= times["printed_at"]
    assert tat["seconds"]["hub_to_signed"] >= 0
    summary = {(g["clinic"], g["priority"]): g for g in hub.api("/api/turnaround")["turnaround"]}
    stat = summary[("test-box", "stat")]["seconds"]
    assert stat["hub_to_signed"]["n"] == 1 and stat["hub_to_signed"]["median"] >= 0
    assert summary[("test-box", "routine")]["seconds"]["hub_to_signed"]["n"] == 0


NAMES = {
    "kannada": ("ಶ್ರೀನಿವಾಸ ಕುಲಕರ್ಣಿ", "ಬಲ ಶ್ವಾಸಕೋಶದಲ್ಲಿ ನ್ಯುಮೋನಿಯಾ."),
    "devanagari": ("प्रियंका शर्मा", "दाहिने फेफड़े में निमोनिया।"),
}


def named_study(tmp_path, name: str, patient: str):  # type: ignore[no-untyped-def]
    """A real study whose patient is named in an Indian script (ISO_IR 192)."""
    import pydicom

    files, uid = make_study(tmp_path, name, 1)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = patient
        ds.save_as(f)
    return files, uid


def test_a_report_prints_in_kannada_and_devanagari(tmp_path, site, boxes, cups_printer):
    """Patients named in Kannada and in Devanagari, findings in those scripts beside
    Latin, at a clinic whose language is Kannada: the report's PDF embeds subsets of the
    Noto fonts for each script, its headings are in Kannada beside English, its text
    comes back as written (conjuncts and vowel signs shaped), and the page printed
    through CUPS shows it."""
    import subprocess

    broker, hub = site
    queue, out = cups_printer
    # a clinic in Karnataka: its reports' headings in Kannada beside English
    box = Box(tmp_path / "box", mqtt=broker.mqtt_config(), printer=queue, quiet_seconds=1)
    boxes.append(box)
    box.start(env={"RADSETU_LANGUAGE": "kn"})
    for script, (patient, finding) in NAMES.items():
        files, uid = named_study(tmp_path, script, patient)
        storescu(box.dicom_port, files)
        wait_for(lambda uid=uid: delivered(box, uid), 40, "the study at the hub")
        r = hub.api(f"/api/studies/{uid}/reports", {"findings": f"{finding} Right lower lobe.",
                                                    "impression": finding,
                                                    "radiologist": "Dr Rao"})  # fmt: skip
        hub.api(f"/api/reports/{r['report_id']}/sign", {})
        (pdf,) = wait_for(lambda r=r: printed(out, r["report_id"]), 60, "the printed PDF")
        fonts = subprocess.run(["pdffonts", str(made(hub, pdf))], capture_output=True,
                               text=True).stdout  # fmt: skip
        family = "NotoSansKannada" if script == "kannada" else "NotoSansDevanagari"
        # embedded, as a subset (a six-letter tag before the name), with a Unicode map
        (row,) = [line for line in fonts.splitlines() if f"+{family} " in line]
        assert row.split()[-5:-2] == ["yes", "yes", "yes"], fonts
        # the hub's PDF reads back as written (pdftotext may split a syllable whose
        # vowel sign is drawn before its consonant: compare without spaces), and the
        # printed page shows the same ink there
        text = "".join(pdf_text(made(hub, pdf)).split())
        phrases = (patient, finding, "Right lower lobe.", "Dr Rao", "Findings / ಕಂಡುಬಂದ ಅಂಶಗಳು",
                   "Patient / ರೋಗಿ:")  # fmt: skip
        for words in phrases:
            assert "".join(words.split()) in text, (words, text)
        assert_printed(pdf, made(hub, pdf), *phrases)
        # the printed page as an image, for people to look at (test-artifacts/)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["pdftoppm", "-r", "80", "-png", "-singlefile", str(pdf),
                        str(SCREENSHOTS / f"printed-report-{script}")], check=True,
                       capture_output=True)  # fmt: skip
