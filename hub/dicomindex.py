"""What DICOMweb answers from: the studies a reader may see, and each study's headers.

A study is visible when it is on the reading room's worklist (a row of ``hub_studies``:
verified, whichever clinic and state); a transfer still arriving, or an instance that
never made a study, is not. Studies are known by the hub's key (hub/studykeys.py: the
Study UID, or ``UID~box`` for a second clinic's study with the same UID). DICOMweb
shows a study by its UID, and a second clinic's study by a UID of its own made from its
key (``2.25.`` and a hash), so a viewer that follows its links always lands in the one
clinic's study.

The headers of a study's instances (without pixel data) are read once per process and
kept while the study's set of instances is unchanged: a viewer asks for the same
study's series and metadata many times while it opens it. They are read only when a
study's instances are asked for (``Study.instances``): a search by Study UID reads the
one study it finds, not every study on the hub. What a study-level search shows of a
study (``Summary``: its modalities and counts from the index, which keeps each
instance's series and modality, and its first header) is kept for many more studies
than its headers.
"""

from __future__ import annotations

import functools
import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydicom

from hub.store import FileHubStore

CACHED_STUDIES = 16  # studies whose every header is kept
CACHED_SUMMARIES = 4096  # studies whose study-level answer is kept


@dataclass
class Instance:
    key: str  # the object's key in the hub's store
    ds: pydicom.Dataset  # its header, no pixel data

    @property
    def series_uid(self) -> str:
        return str(self.ds.get("SeriesInstanceUID", ""))

    @property
    def sop_uid(self) -> str:
        return str(self.ds.get("SOPInstanceUID", ""))


def shown_uid(key: str) -> str:
    """The Study Instance UID that DICOMweb shows for a hub study key."""
    if "~" not in key:
        return key
    return "2.25." + str(int.from_bytes(hashlib.sha256(key.encode()).digest()[:16], "big"))


@dataclass
class Study:
    key: str  # the hub's study key
    row: dict[str, Any]  # its hub_studies row
    load: Callable[[], list[Instance]] = field(default=list, repr=False)

    @functools.cached_property
    def instances(self) -> list[Instance]:
        """Its instances' headers, read when first asked for."""
        return self.load()

    @property
    def uid(self) -> str:
        return shown_uid(self.key)

    def series(self) -> dict[str, list[Instance]]:
        out: dict[str, list[Instance]] = {}
        for i in self.instances:
            out.setdefault(i.series_uid, []).append(i)
        return out


_cache: OrderedDict[tuple[str, int, str], list[Instance]] = OrderedDict()
_lock = threading.Lock()


def _number(i: Instance) -> tuple[int, int]:
    def num(name: str) -> int:
        try:
            return int(i.ds.get(name) or 0)
        except (TypeError, ValueError):
            return 0

    return num("SeriesNumber"), num("InstanceNumber")


@dataclass(frozen=True)
class Summary:
    """What a study-level search shows of a study. The first instance's header is kept
    as its bytes (about 1.5 KB for a CT slice, where read into a Dataset it takes 37
    KB): thousands of studies' summaries stay within a few MB."""

    header: bytes | pydicom.Dataset  # of its first instance; a Dataset where not written
    modalities: list[str]
    series: int
    instances: int

    @property
    def first(self) -> pydicom.Dataset:
        if isinstance(self.header, pydicom.Dataset):
            return self.header
        return pydicom.dcmread(io.BytesIO(self.header))


def _header(ds: pydicom.Dataset) -> bytes | pydicom.Dataset:
    out = io.BytesIO()
    try:
        ds.save_as(out)
    except Exception:  # noqa: BLE001 - a header pydicom cannot write again is kept as read
        return ds
    return out.getvalue()


_summaries: OrderedDict[tuple[str, int, str], Summary | None] = OrderedDict()


def _tag(store: FileHubStore, key: str) -> tuple[str, int, str]:
    """The study and its set of instances: a new instance makes a new tag."""
    count, newest = store.db.execute(
        "SELECT count(*), coalesce(max(stored_at), '') FROM shown_instances WHERE study_uid=?",
        [key],
    ).fetchone()
    return key, int(count), str(newest)


def summary(store: FileHubStore, s: Study) -> Summary | None:
    """The study-level answer about ``s`` (None: no instance shown), kept while its
    instances are unchanged: a viewer's study list asks for every study each time it
    opens. Its counts and modalities come from the index, and one header is read."""
    tag = _tag(store, s.key)
    with _lock:
        if tag in _summaries:
            _summaries.move_to_end(tag)
            return _summaries[tag]
    found = _summary_of(store, s.key)
    with _lock:
        _summaries[tag] = found
        while len(_summaries) > CACHED_SUMMARIES:
            _summaries.popitem(last=False)
    return found


FROM_VIEWER = "viewer"  # instances.transfer_id of what a viewer stored (hub/stow.py)
# the first is a box's: a viewer's report never speaks for the study's header
_SHOWN_IN_ORDER = (
    "SELECT sop_instance_uid, sha256, path, series_uid, modality FROM shown_instances "
    f"WHERE study_uid=? ORDER BY transfer_id = '{FROM_VIEWER}', coalesce(series_number, 0), "
    "coalesce(instance_number, 0), stored_at"
)


def _summary_of(store: FileHubStore, key: str) -> Summary | None:
    rows = store.db.execute(_SHOWN_IN_ORDER, [key]).fetchall()
    undescribed = [(str(r[0]), str(r[1]), str(r[2])) for r in rows if r[3] is None]
    if undescribed:  # kept before the index had their series (m022): once
        store.describe_instances(undescribed)
        rows = store.db.execute(_SHOWN_IN_ORDER, [key]).fetchall()
    if not rows:
        return None
    with store.blobs.open(rows[0][2]) as f:
        first = pydicom.dcmread(f, stop_before_pixels=True)
    modalities = sorted({str(r[4]) for r in rows} - {""})
    return Summary(_header(first), modalities, len({r[3] for r in rows}), len({r[0] for r in rows}))


def _instances(store: FileHubStore, key: str) -> list[Instance]:
    tag = _tag(store, key)
    with _lock:
        if tag in _cache:
            _cache.move_to_end(tag)
            return _cache[tag]
    found: dict[str, Instance] = {}
    rows = store.db.execute(
        "SELECT sop_instance_uid, path FROM shown_instances WHERE study_uid=? ORDER BY stored_at",
        [key],
    ).fetchall()
    for sop, path in rows:
        with store.blobs.open(path) as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        found[str(sop)] = Instance(str(path), ds)  # the newest copy of an instance wins
    out = sorted(found.values(), key=_number)
    with _lock:
        _cache[tag] = out
        while len(_cache) > CACHED_STUDIES:
            _cache.popitem(last=False)
    return out


def visible_rows(
    store: FileHubStore, patient_id: str = "", key: str = "", clinic: str = ""
) -> list[dict[str, Any]]:
    """The worklist's studies (reported ones too), narrowed by patient, key or clinic;
    the newest first (a viewer's study list asks for its first page: OHIF's for 101)."""
    q, args = "SELECT * FROM hub_studies", []
    where = []
    for column, value in (("patient_id", patient_id), ("study_uid", key), ("box_id", clinic)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    if where:
        q += " WHERE " + " AND ".join(where)
    return [dict(r) for r in store.db.query(q + " ORDER BY verified_at DESC", args)]


def study(store: FileHubStore, uid: str, clinic: str = "") -> Study | None:
    """One visible study, by the UID DICOMweb shows (or its hub key), or None."""
    rows = visible_rows(store, key=uid, clinic=clinic)
    if not rows and uid.startswith("2.25."):
        twins = store.db.query("SELECT * FROM hub_studies WHERE study_uid LIKE '%~%'")
        rows = [dict(r) for r in twins if shown_uid(r["study_uid"]) == uid]
        rows = [r for r in rows if not clinic or r["box_id"] == clinic]
    if not rows:
        return None
    key = rows[0]["study_uid"]
    return Study(key, rows[0], functools.partial(_instances, store, key))


def studies(store: FileHubStore, patient_id: str = "", clinic: str = "") -> list[Study]:
    """The visible studies, narrowed by patient or clinic; no header read yet."""
    rows = visible_rows(store, patient_id=patient_id, clinic=clinic)
    return [
        Study(r["study_uid"], r, functools.partial(_instances, store, r["study_uid"])) for r in rows
    ]
