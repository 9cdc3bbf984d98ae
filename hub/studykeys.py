"""The hub's key for a box's study, so that two clinics' studies never merge.

A Study Instance UID should be unique in the world, but a modality's broken UID
generator (or a compromised box) can send one that another clinic's study already
has. The hub keys studies by (box, Study UID): the first box to bring a UID keys its
study by the UID itself (every URL and API path stays the UID); another box's study
with the same UID is kept apart under ``<UID>~<box>``, with its own instances, its own
place in the reading room and its own reports, which go back to that box only (with
the real UID, the one the box knows). Each such case is recorded in ``uid_conflicts``
and raised on the operators' dashboard for a person to look into.
"""

from __future__ import annotations

import logging

from common.clock import utcnow
from hub.store import FileHubStore

log = logging.getLogger("radsetu.hub")

SEP = "~"  # never in a UID (digits and dots)


def real_uid(key: str) -> str:
    """The DICOM Study Instance UID of a hub study key."""
    return key.split(SEP, 1)[0]


def study_key(store: FileHubStore, box_id: str, study_uid: str) -> str:
    """The key under which ``box_id``'s study ``study_uid`` is kept (and is to be kept,
    for a study not seen yet); records the first clash of a UID between two boxes."""
    owner = store.db.execute(
        "SELECT box_id FROM hub_studies WHERE study_uid=? UNION ALL "
        "SELECT box_id FROM instances WHERE study_uid=? LIMIT 1",
        [study_uid, study_uid],
    ).fetchone()
    if owner is None or owner[0] == box_id:
        return study_uid
    key = f"{study_uid}{SEP}{box_id}"
    cur = store.db.execute(
        "INSERT INTO uid_conflicts(study_uid, first_box, other_box, at) VALUES (?,?,?,?) "
        "ON CONFLICT DO NOTHING",
        [study_uid, owner[0], box_id, utcnow()],
    )
    if cur.rowcount:
        log.error(
            "study UID %s came from box %s and now from box %s: kept apart as %s; "
            "a person must find out why (a modality's UID generator, or a box misbehaving)",
            study_uid,
            owner[0],
            box_id,
            key,
        )
    return key


def conflicts(store: FileHubStore) -> list[dict[str, str]]:
    return [
        dict(r)
        for r in store.db.query(
            "SELECT study_uid, first_box, other_box, at FROM uid_conflicts ORDER BY at"
        )
    ]
