"""A patient's earlier studies at the hub, as the worklist counts them."""

from __future__ import annotations

from hub import priors
from hub.store import FileHubStore


def add(store: FileHubStore, uid: str, box: str, pid: str, name: str, when: str,
        born: str = "") -> dict:  # fmt: skip
    row = {"study_uid": uid, "box_id": box, "patient_id": pid, "patient_name": name,
           "patient_birth_date": born, "modality": "CT", "description": "",
           "priority": "routine", "acquired_at": when, "verified_at": when}  # fmt: skip
    store.db.execute(
        f"INSERT INTO hub_studies({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
        list(row.values()),
    )
    return {**row, "signed_at": None}


def test_the_worklist_counts_each_patients_earlier_studies_reading_only_theirs(
    tmp_path, monkeypatch
):
    store = FileHubStore(tmp_path / "hub")
    now = add(store, "1.1", "clinic-a", "P1", "DOE^JANE", "2026-11-30", "19800101")
    add(store, "1.2", "clinic-a", "P1", "Doe Jane", "2025-01-01", "19800101")  # a prior
    add(store, "1.3", "clinic-a", "P1", "DOE^JANE", "2024-01-01")  # no birth date: alike
    add(store, "1.4", "clinic-a", "P1", "DOE^JANE", "2023-01-01", "19900101")  # another
    add(store, "1.5", "clinic-a", "P1", "ROE^RICHARD", "2023-01-01")  # another person
    add(store, "1.6", "clinic-b", "P1", "DOE^JANE", "2023-01-01")  # the same ID elsewhere
    add(store, "1.7", "clinic-a", "P1", "DOE^JANE", "2026-12-01")  # later: not a prior
    other = add(store, "2.1", "clinic-a", "P2", "SMITH^A", "2026-11-30")
    for i in range(50):  # the clinic's other patients, not on the list
        add(store, f"3.{i}", "clinic-a", f"X{i}", "SOMEONE", "2020-01-01")
    store.db.conn.commit()

    read: list[dict] = []
    real = store.db.query
    monkeypatch.setattr(store.db, "query", lambda *a: [read.append(r) or r for r in real(*a)])
    assert priors.counts(store, [now, other]) == {"1.1": 2}
    assert {r["patient_id"] for r in read} == {"P1", "P2"} and len(read) == 7
    assert [r["study_uid"] for r in priors.of_study(store, "1.1")] == ["1.2", "1.3"]
    store.close()
