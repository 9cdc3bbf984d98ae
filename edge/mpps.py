"""Modality Performed Procedure Step (N-CREATE, N-SET) on the worklist's port: a
modality that sends it says when it starts an ordered exam (IN PROGRESS) and when it
has done it (COMPLETED) or stopped (DISCONTINUED); the order's state follows. A modality
that does not send it loses nothing: the first image marks the order in progress.

A step is tied to its order by the Study Instance UID or the accession number in its
Scheduled Step Attributes; a step for no order of the box is refused (0x0110), and
nothing is guessed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.uid import generate_uid

from edge import orders
from edge.store import reader

log = logging.getLogger("radsetu.worklist")

SUCCESS, PROCESSING_FAILURE, NO_SUCH_INSTANCE, INVALID_VALUE = 0x0000, 0x0110, 0x0112, 0x0106
STATES = {"IN PROGRESS": "in_progress", "COMPLETED": "completed", "DISCONTINUED": "discontinued"}


def _keys(attrs: Dataset) -> tuple[str, str]:
    """(Study UID, accession number) of a step's first scheduled step."""
    steps = attrs.get("ScheduledStepAttributesSequence") or [Dataset()]
    return str(steps[0].get("StudyInstanceUID", "")), str(steps[0].get("AccessionNumber", ""))


def handle_create(event: Any, data_dir: Path) -> tuple[int, Dataset | None]:
    """N-CREATE: a step begins (IN PROGRESS) for one of the box's orders."""
    calling = event.assoc.requestor.ae_title
    try:
        attrs = event.attribute_list
        status = str(attrs.get("PerformedProcedureStepStatus", ""))
        uid = str(event.request.AffectedSOPInstanceUID or generate_uid())
        study_uid, accession = _keys(attrs)
    except Exception as exc:  # an identifier the box cannot read
        log.warning("MPPS from %s refused: %s", calling, exc)
        return PROCESSING_FAILURE, None
    if status != "IN PROGRESS":
        log.warning("MPPS from %s refused: a step begins IN PROGRESS, not %r", calling, status)
        return INVALID_VALUE, None
    with reader(data_dir) as db, db.atomic():
        order = orders.for_instance(db, study_uid, accession)
        if order is None or not orders.performed(db, order["accession"], uid, "in_progress"):
            log.warning("MPPS from %s refused: no order for study %s / accession %s",
                        calling, study_uid, accession)  # fmt: skip
            return PROCESSING_FAILURE, None
    log.info("MPPS %s from %s: order %s in progress", uid, calling, order["accession"])
    reply = Dataset()
    reply.PerformedProcedureStepStatus = status
    reply.SOPInstanceUID = uid
    return SUCCESS, reply


def handle_set(event: Any, data_dir: Path) -> tuple[int, Dataset | None]:
    """N-SET: the step is COMPLETED or DISCONTINUED (or only changes its details)."""
    calling = event.assoc.requestor.ae_title
    try:
        uid = str(event.request.RequestedSOPInstanceUID)
        status = str(event.modification_list.get("PerformedProcedureStepStatus", ""))
    except Exception as exc:
        log.warning("MPPS from %s refused: %s", calling, exc)
        return PROCESSING_FAILURE, None
    with reader(data_dir) as db, db.atomic():
        order = orders.of_step(db, uid)
        if order is None:
            log.warning("MPPS N-SET from %s for %s: no such step", calling, uid)
            return NO_SUCH_INSTANCE, None
        if status and status not in STATES:
            return INVALID_VALUE, None
        if status:
            orders.performed(db, order["accession"], uid, STATES[status])
    log.info("MPPS %s from %s: order %s %s", uid, calling, order["accession"], status or "updated")
    reply = Dataset()
    reply.PerformedProcedureStepStatus = status or "IN PROGRESS"
    return SUCCESS, reply
