"""A patient's earlier studies at the hub, for comparison.

Studies are the same patient's when they come from the same clinic (box), carry the same
Patient ID, the same name once case, the DICOM ``^`` separators and spacing are set
aside, and the same birth date when both studies have one. A Patient ID is the
clinic's own: the same number at another clinic is another person, and a study without
a Patient ID has no priors (never guessed from a name alone). Earlier means acquired
earlier (the hub's arrival time when the DICOM dates are missing).
"""

from __future__ import annotations

import re
from typing import Any

from hub.store import FileHubStore

COLUMNS = (
    "study_uid, box_id, patient_id, patient_name, patient_birth_date, modality, "
    "description, acquired_at, verified_at, signed_at"
)


def same_person(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("^", " ")).strip().upper()


def _born_alike(a: dict[str, Any], b: dict[str, Any]) -> bool:
    x, y = a.get("patient_birth_date") or "", b.get("patient_birth_date") or ""
    return not x or not y or x == y


def _when(row: dict[str, Any]) -> str:
    return str(row.get("acquired_at") or row.get("verified_at") or "")


def _patients(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["patient_id"]:
            key = (r["box_id"], r["patient_id"], same_person(r["patient_name"]))
            groups.setdefault(key, []).append(r)
    return groups


def of_study(store: FileHubStore, study_uid: str) -> list[dict[str, Any]]:
    """The earlier studies of this study's patient, newest first."""
    found = [dict(r) for r in store.db.query(
        f"SELECT {COLUMNS} FROM hub_studies WHERE study_uid=?", [study_uid])]  # fmt: skip
    if not found or not found[0]["patient_id"]:
        return []
    me = found[0]
    rows = [dict(r) for r in store.db.query(
        f"SELECT {COLUMNS} FROM hub_studies WHERE box_id=? AND patient_id=?",
        [me["box_id"], me["patient_id"]])]  # fmt: skip
    person = same_person(me["patient_name"])
    out = [
        r
        for r in rows
        if r["study_uid"] != study_uid
        and same_person(r["patient_name"]) == person
        and _born_alike(r, me)
        and _when(r) < _when(me)
    ]
    return sorted(out, key=_when, reverse=True)


def counts(store: FileHubStore, studies: list[dict[str, Any]]) -> dict[str, int]:
    """How many earlier studies each of ``studies`` (worklist rows) has. Only the listed
    patients' studies are read, a clinic at a time (by the index on box and Patient
    ID), not every study of the listed clinics."""
    patients: dict[str, set[str]] = {}
    for s in studies:
        if s.get("patient_id"):
            patients.setdefault(s["box_id"], set()).add(s["patient_id"])
    rows: list[dict[str, Any]] = []
    for box_id, ids in sorted(patients.items()):
        listed = sorted(ids)
        for at in range(0, len(listed), 500):  # within any engine's limit of parameters
            part = listed[at : at + 500]
            marks = ",".join("?" for _ in part)
            rows += [dict(r) for r in store.db.query(
                f"SELECT {COLUMNS} FROM hub_studies WHERE box_id=? AND patient_id IN ({marks})",
                [box_id, *part])]  # fmt: skip
    groups = _patients(rows)
    out = {}
    for s in studies:
        if not s.get("patient_id"):
            continue
        same = groups.get((s["box_id"], s["patient_id"], same_person(s["patient_name"])), [])
        n = sum(
            1
            for r in same
            if r["study_uid"] != s["study_uid"] and _born_alike(r, s) and _when(r) < _when(s)
        )
        if n:
            out[s["study_uid"]] = n
    return out
