"""The measurements saved on a study from a viewer (hub/stow.py), read back for the
reading page: each structured report's numeric items (TID 1500's "Length 52.3 mm"),
with the finding or label of the measurement group they are in.

Real structured reports are odd (items without a value type, empty sequences): an
item that cannot be read is passed over, and a report that cannot be read at all is
listed with why, never an error on the page.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import pydicom

from hub.store import FileHubStore

log = logging.getLogger("radsetu.hub.measurements")
MAX_DEPTH = 12
MAX_ITEMS = 200  # a report's lines shown; more are counted, not listed
TRACKING_ID = "112039"  # DCM "Tracking Identifier"
FINDING = "121071"  # DCM "Finding"


@dataclass(frozen=True)
class Measurement:
    name: str
    value: str
    unit: str
    label: str = ""

    def line(self) -> str:
        what = f"{self.label}: " if self.label and self.label != self.name else ""
        return f"{what}{self.name} {self.value} {self.unit}".strip()


@dataclass
class Saved:
    sop_uid: str
    title: str
    saved_at: str
    measurements: list[Measurement] = field(default_factory=list)
    more: int = 0
    problem: str = ""


def of_study(store: FileHubStore, key: str) -> list[Saved]:
    """The study's structured reports, the first saved first."""
    out = []
    for sop, path, at in store.db.execute(
        "SELECT sop_instance_uid, path, stored_at FROM shown_instances "
        "WHERE study_uid=? AND modality='SR' ORDER BY stored_at",
        [key],
    ).fetchall():
        saved = Saved(str(sop), "", str(at))
        try:
            with store.blobs.open(path) as f:
                ds = pydicom.dcmread(f)
            saved.title = str(ds.get("SeriesDescription", "") or "Structured report")
            found = list(_numbers(ds.get("ContentSequence") or [], "", 0))
        except Exception as exc:  # a stored file that does not read: say so, go on
            log.warning("structured report %s of %s does not read: %s", sop, key, exc)
            saved.problem = f"does not read: {exc}"[:200]
            found = []
        saved.measurements, saved.more = found[:MAX_ITEMS], max(0, len(found) - MAX_ITEMS)
        out.append(saved)
    return out


def _code(item: Any, name: str) -> tuple[str, str]:
    """(code value, meaning) of an item's code sequence ``name``, or blanks."""
    seq = item.get(name) or []
    if not seq:
        return "", ""
    return str(seq[0].get("CodeValue", "") or ""), str(seq[0].get("CodeMeaning", "") or "")


def _number(item: Any) -> tuple[str, str] | None:
    seq = item.get("MeasuredValueSequence") or []
    if not seq:
        return None
    try:
        value = Decimal(str(seq[0].get("NumericValue", "")).strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    shown = f"{value:.2f}".rstrip("0").rstrip(".") if "." in f"{value:.2f}" else str(value)
    unit_code, unit_meaning = _code(seq[0], "MeasurementUnitsCodeSequence")
    return shown, (unit_code or unit_meaning)[:20]


def _numbers(seq: Any, label: str, depth: int) -> Any:
    """Each numeric item under ``seq``, with the label of the group it is in."""
    if depth > MAX_DEPTH:
        return
    finding = tracked = ""
    for item in seq:  # the group's label: its finding, else its tracking identifier
        code = _code(item, "ConceptNameCodeSequence")[0]
        if code == FINDING:
            finding = _code(item, "ConceptCodeSequence")[1]
        elif code == TRACKING_ID and item.get("TextValue"):
            tracked = str(item.TextValue).rsplit(":", 1)[-1]
    own = finding or tracked or label
    for item in seq:
        if item.get("ValueType", "") == "NUM":
            number = _number(item)
            if number is not None:
                name = _code(item, "ConceptNameCodeSequence")[1] or "Measurement"
                yield Measurement(name[:64], number[0], number[1], own[:64])
        if item.get("ContentSequence"):
            yield from _numbers(item.ContentSequence, own, depth + 1)
