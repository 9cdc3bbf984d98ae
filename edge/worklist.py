"""The box's DICOM Modality Worklist: a C-FIND SCP of the Modality Worklist Information
Model – FIND, on its own port (``worklist.port``), answering a modality's query with the
clinic's scheduled orders (edge/orders.py).

A query matches on the Scheduled Procedure Step's start date (a date, a range, or
none), modality and station AE title, and on the patient's ID and name and the
accession number; an order registered with no station is offered to every station of
its modality (but a station ``worklist.stations`` gives to another modality). Each
answer carries the keys the query asked for, filled from the order:
patient demographics, accession number, Study Instance UID, requested procedure,
referring physician, the reason for the exam, and the scheduled step. Names in a local
script go as ISO_IR 192 (UTF-8) beside their Latin form (``Latin=local``, DICOM's
alphabetic and ideographic groups), so a modality that shows only ASCII still shows
the Latin one. At most ``worklist.max_answers`` answers go to one query.

The same port takes Modality Performed Procedure Step (edge/mpps.py) from modalities
that send it. The calling AE titles allowed at the DICOM port (``dicom.allowed_callers``) apply here
too, and so do its limits on connections (edge/scp.py: admit_by_address).
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    Verification,
)

from edge import mpps, orders
from edge.config import Config, stations
from edge.scp import admit_by_address, handle_echo, handle_rejected, harden
from edge.store import reader

log = logging.getLogger("radsetu.worklist")

PENDING, SUCCESS, CANCELLED, UNABLE = 0xFF00, 0x0000, 0xFE00, 0xC000


def _name(latin: str, local: str) -> str:
    return f"{latin}={local}" if local else latin


def entry(o: dict[str, Any], referrer: str) -> Dataset:
    """The worklist item of an order, every key filled."""
    ds = Dataset()
    text = " ".join([o["name_local"], referrer, o["question"]])
    ds.SpecificCharacterSet = "ISO_IR 192" if not text.isascii() else "ISO_IR 6"
    ds.PatientName = _name(o["name_latin"], o["name_local"])
    ds.PatientID = o["patient_id"]
    ds.PatientBirthDate = o["birth_date"]
    ds.PatientSex = o["sex"]
    ds.PatientAge = o["age"]
    ds.AccessionNumber = o["accession"]
    ds.StudyInstanceUID = o["study_uid"]
    ds.ReferringPhysicianName = referrer
    procedure = " ".join(x for x in (o["modality"], o["body_part"]) if x)
    ds.RequestedProcedureDescription = procedure
    ds.RequestedProcedureID = o["accession"]
    ds.RequestedProcedurePriority = "STAT" if o["stat"] else "ROUTINE"
    ds.ReasonForTheRequestedProcedure = o["question"]
    sps = Dataset()
    sps.Modality = o["modality"]
    sps.ScheduledStationAETitle = o["station_ae"]
    sps.ScheduledProcedureStepStartDate = o["scheduled_date"]
    sps.ScheduledProcedureStepStartTime = o["scheduled_time"]
    sps.ScheduledProcedureStepDescription = procedure
    sps.ScheduledProcedureStepID = o["accession"]
    sps.ScheduledPerformingPhysicianName = ""
    if o["body_part"]:
        sps.BodyPartExamined = o["body_part"][:16]
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


def _requested(full: Dataset, query: Dataset) -> Dataset:
    """``full`` narrowed to the keys the query asked for (all when it named none)."""
    asked = [e.keyword for e in query if e.keyword and e.keyword != "SpecificCharacterSet"]
    if not asked:
        return full
    out = Dataset()
    out.SpecificCharacterSet = full.SpecificCharacterSet
    for key in asked:
        if key == "ScheduledProcedureStepSequence" and key in full:
            wanted = query.ScheduledProcedureStepSequence
            keys = [e.keyword for e in wanted[0]] if len(wanted) else []
            item = full.ScheduledProcedureStepSequence[0]
            sub = Dataset()
            for k in keys or [e.keyword for e in item]:
                if k in item:
                    setattr(sub, k, item.get(k))
            out.ScheduledProcedureStepSequence = Sequence([sub])
        elif key in full:
            setattr(out, key, full.get(key))
    return out


def _text(ds: Dataset, key: str) -> str:
    value = ds.get(key, "")
    return str(value or "").strip()


def _matches(have: str, want: str, fold: bool = False) -> bool:
    """Single value, ``*``/``?`` wildcards, or universal (empty, ``*``)."""
    if not want or want == "*":
        return True
    if fold:
        have, want = have.casefold(), want.casefold()
    if "*" in want or "?" in want:
        return fnmatch.fnmatchcase(have, want.replace("[", "[[]"))
    return have == want


def _date_range(value: str) -> tuple[str, str]:
    if "-" in value:
        lo, _, hi = value.partition("-")
        return lo.strip(), hi.strip()
    return value, value


def select(
    query: Dataset, found: list[dict[str, Any]], stations: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The orders (already narrowed to the query's dates) the rest of the query takes;
    ``stations``: station AE title -> the modality ``worklist.stations`` gives it."""
    stations = stations or {}
    steps = query.get("ScheduledProcedureStepSequence") or [Dataset()]
    step = steps[0]
    out = []
    for o in found:
        station = _text(step, "ScheduledStationAETitle")
        if not _matches(o["modality"], _text(step, "Modality")):
            continue
        # an order with no station is offered to every station but another modality's
        if o["station_ae"] and not _matches(o["station_ae"], station):
            continue
        if not o["station_ae"] and stations.get(station, o["modality"]) != o["modality"]:
            continue
        names = (o["name_latin"], o["name_local"], _name(o["name_latin"], o["name_local"]))
        want_name = _text(query, "PatientName")
        if want_name and not any(_matches(n, want_name, fold=True) for n in names):
            continue
        if not _matches(o["patient_id"], _text(query, "PatientID")):
            continue
        if not _matches(o["accession"], _text(query, "AccessionNumber")):
            continue
        out.append(o)
    return out


def handle_find(event: Any, config: Config, data_dir: Path) -> Any:
    """C-FIND: a pending answer per scheduled step, then success (or the reason why not)."""
    calling = event.assoc.requestor.ae_title
    try:
        query = event.identifier
        steps = query.get("ScheduledProcedureStepSequence") or [Dataset()]
        lo, hi = _date_range(_text(steps[0], "ScheduledProcedureStepStartDate"))
        with reader(data_dir) as db:
            found = select(
                query, orders.scheduled(db, lo, hi), {ae: m for m, ae in stations(config).items()}
            )
            names = dict(db.execute("SELECT id, name FROM doctors").fetchall())
    except Exception as exc:  # a query the box cannot read: refused, the port serves on
        log.warning("worklist query from %s refused: %s", calling, exc)
        yield UNABLE, None
        return
    cap = config["worklist"]["max_answers"]
    if len(found) > cap:
        log.warning("worklist query from %s: %d steps, answered the first %d",
                    calling, len(found), cap)  # fmt: skip
    log.info("worklist query from %s: %d steps", calling, min(len(found), cap))
    for o in found[:cap]:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        referrer = names.get(o["referrer_id"], "") if o["referrer_id"] else ""
        yield PENDING, _requested(entry(o, referrer), query)
    yield SUCCESS, None


def start(config: Config, data_dir: Path) -> Any:
    """Start the worklist's server in the background; None when it is off."""
    w, d = config["worklist"], config["dicom"]
    if not w["enabled"]:
        return None
    harden(config)
    ae = AE(ae_title=d["ae_title"])
    ae.maximum_pdu_size = d["max_pdu"]
    ae.require_calling_aet = list(d["allowed_callers"])
    ae.add_supported_context(ModalityWorklistInformationFind)
    ae.add_supported_context(ModalityPerformedProcedureStep)
    ae.add_supported_context(Verification)
    ae.maximum_associations = d["max_connections"] + 1
    ae.acse_timeout = d["setup_seconds"]
    ae.network_timeout = ae.dimse_timeout = 60
    handlers = [
        (evt.EVT_C_FIND, handle_find, [config, data_dir]),
        (evt.EVT_N_CREATE, mpps.handle_create, [data_dir]),
        (evt.EVT_N_SET, mpps.handle_set, [data_dir]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_REJECTED, handle_rejected, [config]),
    ]
    try:
        server = ae.start_server((d["host"], w["port"]), block=False, evt_handlers=handlers)
    except OSError as exc:  # the images still come in: the worklist is not worth a box
        why = "modalities cannot fetch orders until worklist.port is free or changed"
        log.error("the modality worklist cannot listen on port %s (%s): %s", w["port"], exc, why)
        return None
    admit_by_address(server, config)
    log.info("modality worklist %s listening on %s:%s", d["ae_title"], d["host"], w["port"])
    return server
