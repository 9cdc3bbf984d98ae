"""The referring doctor at the hub (both index engines): from the manifest, from a study
update that came before the study, and a manifest whose doctor fails the check (the
study is taken, the doctor is not, and the log says why)."""

from __future__ import annotations

import logging

from devkit.corpus import data_file
from hub import reading
from hub.ingest import take_chunk, take_manifest
from hub.store import FileHubStore
from wire.codec import pack_bytes
from wire.manifest import Priority
from wire.messages import StudyUpdate

RAO = {"name": "ಡಾ. ಆಶಾ ರಾವ್", "mobile": "+919845012345", "email": "", "language": "kn"}


def arrive(store: FileHubStore, uid: str, tid: str, extra: dict) -> None:  # type: ignore[type-arg]
    inst = [(f"{uid}.1", data_file("693_UNCI.dcm").read_bytes())]
    m, chunks = pack_bytes(inst, chunk_size=1 << 20, transfer_id=tid, pixel_effort=0,
                           box_id="box-1", study_uid=uid, priority=Priority.ROUTINE,
                           extra=extra)  # fmt: skip
    take_manifest(store, m.to_json(), "test")
    for i, c in enumerate(chunks):
        take_chunk(store, tid, i, c, "test")


def test_the_doctor_from_the_manifest_an_update_or_neither(tmp_path, caplog):
    store = FileHubStore(tmp_path / "hub")
    arrive(store, "1.2.3", "t1", {"referrer": RAO})
    assert reading.reading_study(store, "1.2.3")["referrer"] == RAO

    # the clinic named the doctor before the study arrived: kept until it does
    update = StudyUpdate.decode(StudyUpdate("1.2.4", "routine", "", RAO).encode())
    assert not reading.clinic_update(
        store, "box-1", "1.2.4", update.priority, update.clinical_note, update.referrer
    )
    arrive(store, "1.2.4", "t2", {})
    assert reading.reading_study(store, "1.2.4")["referrer"] == RAO
    (row,) = [s for s in reading.worklist(store) if s["study_uid"] == "1.2.4"]
    assert row["referrer"] == RAO

    # a doctor that fails the check: the study comes in without one, and the log says why
    with caplog.at_level(logging.WARNING, logger="radsetu.hub"):
        arrive(store, "1.2.5", "t3", {"referrer": {**RAO, "name": "<script>x</script>"}})
    assert reading.reading_study(store, "1.2.5")["referrer"] is None
    assert "referrer: name" in caplog.text and "goes on without it" in caplog.text
    store.close()
