"""What DICOMweb answers from: headers are read for the studies asked about, and a
study-level answer is kept while the study is unchanged."""

from __future__ import annotations

import io

import pydicom
from pydicom.uid import generate_uid

from devkit.corpus import pydicom_file
from hub import dicomindex as index
from hub.ingest import take_chunk, take_manifest
from hub.store import FileHubStore
from wire.codec import pack_bytes
from wire.manifest import Priority


def study_of(n: int, modality: str = "CT") -> tuple[str, list[tuple[str, bytes]]]:
    """A study of ``n`` real CT slices (pydicom's CT_small) with new UIDs, in 2 series."""
    study, series = generate_uid(), [generate_uid(), generate_uid()]
    out = []
    for i in range(n):
        ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series[i % 2]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Modality, ds.InstanceNumber = modality, i + 1
        buf = io.BytesIO()
        ds.save_as(buf)
        out.append((str(ds.SOPInstanceUID), buf.getvalue()))
    return study, out


def arrive(store: FileHubStore, study: str, instances: list[tuple[str, bytes]]) -> None:
    tid = generate_uid().replace(".", "")[-32:]
    m, chunks = pack_bytes(instances, chunk_size=1 << 16, transfer_id=tid, box_id="box-1",
                           study_uid=study, priority=Priority.ROUTINE)  # fmt: skip
    take_manifest(store, m.to_json(), "test")
    for i, c in enumerate(chunks):
        ack = take_chunk(store, tid, i, c, "test")
    assert ack["verified"] is True


def test_headers_are_read_only_for_the_study_asked_about_and_summaries_are_kept(
    tmp_path, monkeypatch
):
    store = FileHubStore(tmp_path / "hub")
    made = [study_of(4) for _ in range(6)]
    for study, instances in made:
        arrive(store, study, instances)
    opened: list[str] = []
    real_open = store.blobs.open
    monkeypatch.setattr(store.blobs, "open", lambda path: opened.append(path) or real_open(path))

    found = index.study(store, made[2][0])
    assert found is not None and opened == []  # nothing read until its instances are asked for
    assert {i.sop_uid for i in found.instances} == {sop for sop, _ in made[2][1]}
    assert len(opened) == 4

    listed = index.studies(store)
    assert len(listed) == 6 and len(opened) == 4  # listing reads no header
    opened.clear()
    first = [index.summary(store, s) for s in listed]
    assert all(s is not None and (s.series, s.instances, s.modalities) == (2, 4, ["CT"])
               for s in first)  # fmt: skip
    assert [s.key for s in listed] == [study for study, _ in reversed(made)]  # newest first
    assert first[2] is not None and first[2].first.StudyInstanceUID == made[3][0]
    read_once = len(opened)
    assert read_once == 6  # one header a study: counts and modalities are in the index
    again = [index.summary(store, s) for s in index.studies(store)]
    assert again == first and len(opened) == read_once  # kept: no header read again

    # a new instance makes the study's answer new
    study, instances = made[0]
    _, more = study_of(1, "MR")
    sop, data = more[0]
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyInstanceUID = study
    buf = io.BytesIO()
    ds.save_as(buf)
    arrive(store, study, [(sop, buf.getvalue())])
    (changed,) = [index.summary(store, s) for s in index.studies(store) if s.key == study]
    assert changed is not None and changed.instances == 5 and changed.modalities == ["CT", "MR"]
    assert changed.series == 3
    store.close()


def test_instances_kept_before_the_index_had_their_series_are_described_when_listed(
    tmp_path,
):
    store = FileHubStore(tmp_path / "hub")
    study, instances = study_of(5, "MR")
    arrive(store, study, instances)
    kept = store.db.execute(
        "SELECT series_uid, modality, series_number, instance_number FROM instances"
    ).fetchall()
    assert sorted(r[3] for r in kept) == [1, 2, 3, 4, 5] and {r[1] for r in kept} == {"MR"}
    assert len({r[0] for r in kept}) == 2
    # as a hub's index holds them after migration m022, for instances kept before it
    store.db.execute(
        "UPDATE instances SET series_uid=NULL, modality=NULL, series_number=NULL, "
        "instance_number=NULL"
    )
    (listed,) = index.studies(store)
    found = index.summary(store, listed)
    assert found is not None and (found.series, found.instances, found.modalities) == (
        2,
        5,
        ["MR"],
    )
    assert found.first.InstanceNumber == 1  # the first by series and instance number
    assert (
        store.db.execute("SELECT count(*) FROM instances WHERE series_uid IS NULL").fetchone()[0]
        == 0
    )  # written down: the next hub process reads no header for them
    assert sorted(
        r[0] for r in store.db.execute("SELECT instance_number FROM instances").fetchall()
    ) == [1, 2, 3, 4, 5]
    store.close()


def test_a_study_list_page_is_the_newest_studies_and_reads_only_their_headers(
    tmp_path, monkeypatch
):
    from hub import access, users
    from tests.helpers import hub_app

    app, store = hub_app(tmp_path)
    users.add(store, "dr-rao", "radiologist", "correct horse battery")
    auth = {"Authorization": f"Bearer {access.add_token(store, 'dr-rao', 'test')}"}
    made = [study_of(2) for _ in range(5)]
    for study, instances in made:
        arrive(store, study, instances)
    newest_first = [study for study, _ in reversed(made)]
    summed: list[str] = []
    real = index._summary_of
    monkeypatch.setattr(index, "_summary_of", lambda st, key: summed.append(key) or real(st, key))

    def page(query: str) -> list[str]:
        r = app.test_client().get(f"/dicomweb/studies{query}", headers=auth)
        assert r.status_code in (200, 204), r.data
        return [item["0020000D"]["Value"][0] for item in (r.json or [])]

    assert page("?limit=2") == newest_first[:2]
    assert summed == newest_first[:2]  # the other studies' headers are not read
    assert page("?limit=2&offset=2") == newest_first[2:4]
    assert page("") == newest_first
    assert page("?offset=5") == []
    assert app.test_client().get("/dicomweb/studies?limit=x", headers=auth).status_code == 400
    store.close()
