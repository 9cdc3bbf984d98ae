"""The durable store on a real filesystem and a real SQLite index."""

import hashlib
import io
import os

import pydicom
import pytest

from common.dicomfile import InvalidInstance, index_existing
from devkit.corpus import data_file, pydicom_file
from edge.intake import accept_file
from edge.store import Outcome, Store, StoreFull

BIG = 1 << 40


def keep(store, path, source="test"):
    with open(path, "rb") as f:
        return accept_file(store, f, os.path.getsize(path), source, BIG)


def rows(store, sql, args=()):
    return store.db.execute(sql, list(args)).fetchall()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data", reserve_bytes=0, quiet_seconds=60)
    yield s
    s.close()


def test_kept_byte_for_byte_under_its_sha256(store):
    src = data_file("693_UNCI.dcm")
    got = keep(store, src)
    assert got.outcome is Outcome.STORED
    stored = store.object_path(got.sha256)
    assert stored.read_bytes() == src.read_bytes()
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == got.sha256
    ((sha, size, ts),) = rows(store, "SELECT sha256, size, transfer_syntax FROM instances")
    assert (sha, size, ts) == (got.sha256, src.stat().st_size, "1.2.840.10008.1.2.1")
    assert list(store.tmp.iterdir()) == []


def test_same_instance_twice_changes_nothing(store):
    src = pydicom_file("CT_small.dcm")
    keep(store, src)
    before = rows(store, "SELECT * FROM instances")
    assert keep(store, src).outcome is Outcome.DUPLICATE
    assert rows(store, "SELECT * FROM instances") == before
    assert list(store.tmp.iterdir()) == []


def test_same_uid_other_bytes_is_a_flagged_new_version(store, tmp_path):
    src = pydicom_file("CT_small.dcm")
    keep(store, src)
    ds = pydicom.dcmread(src)
    ds.PatientName = "Changed^Name"
    other = tmp_path / "other.dcm"
    ds.save_as(other)
    assert keep(store, other).outcome is Outcome.NEW_VERSION
    versions = rows(store, "SELECT version, flagged FROM instances ORDER BY version")
    assert [v for v, _ in versions] == [1, 2]
    assert versions[0][1] is None and "different bytes" in versions[1][1]


def test_refused_instance_leaves_nothing(store):
    with pytest.raises(InvalidInstance):
        accept_file(store, io.BytesIO(b"not dicom" * 100), 900, "test", BIG)
    assert rows(store, "SELECT count(*) FROM instances") == [(0,)]
    assert list(store.tmp.iterdir()) == []


def test_reserve_refuses_before_writing(tmp_path):
    s = Store(tmp_path / "d", reserve_bytes=1 << 60)
    with pytest.raises(StoreFull, match="Disk almost full"):
        keep(s, pydicom_file("CT_small.dcm"))
    assert list(s.tmp.iterdir()) == []
    s.close()


def test_self_check_repairs_what_a_crash_leaves(store):
    a = keep(store, pydicom_file("CT_small.dcm"))
    b = keep(store, data_file("693_UNCI.dcm"))
    # a temp file from an interrupted write
    (store.tmp / "deadbeef.part").write_bytes(b"half an instance")
    # a whole file renamed into place whose row never committed
    src = pydicom_file("MR_small.dcm").read_bytes()
    orphan_sha = hashlib.sha256(src).hexdigest()
    store.object_path(orphan_sha).write_bytes(src)
    # a damaged file that is nobody's
    store.object_path("ab" + "0" * 62).write_bytes(b"garbage")
    # a row whose file went missing
    store.object_path(b.sha256).unlink()

    report = store.check(index_existing)
    assert report.temp_files_removed == 1
    assert len(report.files_indexed) == 1
    assert len(report.rows_removed) == 1
    assert report.quarantined == ["ab" + "0" * 62 + ".dcm"]
    shas = {r[0] for r in rows(store, "SELECT sha256 FROM instances")}
    assert shas == {a.sha256, orphan_sha}
    kinds = sorted(r[0] for r in rows(store, "SELECT kind FROM repairs"))
    assert kinds == ["file-without-row", "quarantined", "row-without-file"]
    # a second check finds nothing more to do
    assert store.check(index_existing).clean


def test_quiet_study_becomes_ready(store):
    got = keep(store, pydicom_file("CT_small.dcm"))
    study = got.info.study_uid
    ((last,),) = rows(store, "SELECT last_received_ts FROM studies")
    assert store.mark_ready(now_ts=last + 59) == []
    assert store.mark_ready(now_ts=last + 60) == [study]
    assert rows(store, "SELECT state FROM studies") == [("ready",)]
    # a late instance of the same study puts it back to receiving
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    late = io.BytesIO()
    ds.save_as(late)
    accept_file(store, io.BytesIO(late.getvalue()), len(late.getvalue()), "t", BIG)
    assert rows(store, "SELECT state FROM studies") == [("receiving",)]


def test_migrations_rerun_safely(tmp_path):
    s = Store(tmp_path / "d")
    first = rows(s, "SELECT name FROM _sqlite_migrations ORDER BY name")
    s.close()
    s = Store(tmp_path / "d")
    assert rows(s, "SELECT name FROM _sqlite_migrations ORDER BY name") == first
    assert [n for (n,) in first] == [
        "m001_index",
        "m002_sync",
        "m003_reports",
        "m004_clinic",
        "m005_held",
        "m006_sessions",
        "m007_doctors",
        "m008_critical_confirmed",
        "m009_orders",
        "m010_mpps",
        "m011_preview",
        "m012_previewed",
        "m013_orders_to_hub",
        "m014_print_ack",
    ]
    s.close()


def test_dataset_from_the_network_gets_our_header_and_keeps_its_bytes(store):
    """The receiver's fallback path: the dataset copied behind a header of ours."""
    from common.dicomfile import build_meta
    from devkit.corpus import dataset_bytes
    from edge.intake import accept_dataset

    src = data_file("693_UNCI.dcm")
    ds = dataset_bytes(src)
    meta = pydicom.dcmread(src, stop_before_pixels=True)
    got = accept_dataset(
        store,
        io.BytesIO(ds),
        len(ds),
        meta.SOPClassUID,
        meta.SOPInstanceUID,
        "1.2.840.10008.1.2.1",
        "dicom:TEST",
        BIG,
    )
    kept = store.object_path(got.sha256).read_bytes()
    assert kept == build_meta(meta.SOPClassUID, meta.SOPInstanceUID, "1.2.840.10008.1.2.1") + ds
    with pytest.raises(InvalidInstance, match="the request names"):
        accept_dataset(
            store,
            io.BytesIO(ds),
            len(ds),
            meta.SOPClassUID,
            "1.2.3.4",
            "1.2.840.10008.1.2.1",
            "dicom:TEST",
            BIG,
        )
    assert list(store.tmp.iterdir()) == []


def test_stat_rules_by_modality_and_description(tmp_path):
    """693_UNCI is a CT with series description "5/5mm Plain"; MR2_UNCR an MR with
    study description "SHOULDER"."""
    from edge.store import StatRules

    ct, mr = data_file("693_UNCI.dcm"), data_file("MR2_UNCR.dcm")
    for name, rules, stat_one in (
        ("modality", StatRules(modalities=("mr",)), "SHOULDER"),
        ("series words", StatRules(description_words=("PLAIN",)), ""),
        ("study words", StatRules(description_words=("shoulder",)), "SHOULDER"),
    ):
        s = Store(tmp_path / name, stat_rules=rules)
        keep(s, ct)
        keep(s, mr)
        got = dict(rows(s, "SELECT description, priority FROM studies"))
        assert got[stat_one] == "stat", name
        assert [p for d, p in got.items() if d != stat_one] == ["routine"], name
        s.close()


def test_only_a_delivered_study_still_on_the_box_is_sent_again(store):
    """``radsetu edge resend``'s rules, and a purge that cannot take a study which went
    back to ``ready`` meanwhile (the command runs in another process than the box)."""
    from edge import resend, studies

    a = keep(store, pydicom_file("CT_small.dcm")).info.study_uid
    b = keep(store, data_file("693_UNCI.dcm")).info.study_uid
    store.mark_ready(now_ts=10**10)
    assert resend.resend(store.db, a).why == "not delivered yet (ready): it is on its way"
    assert resend.resend(store.db, "1.2.3").why == "not on this box"
    (iid,) = rows(store, "SELECT id FROM instances WHERE study_uid=?", [a])[0]
    store.db.execute(
        "INSERT INTO transfers(transfer_id, study_uid, state, pack_path, header_bytes, chunk_size,"
        " chunk_count, stream_bytes, payload_bytes, instance_count, created_at)"
        " VALUES ('t1', ?, 'verified', '', 0, 1, 1, 1, 1, 1, '')",
        [a],
    )
    store.db.execute(
        "INSERT INTO transfer_instances(transfer_id, instance_id) VALUES ('t1', ?)", [iid]
    )
    for uid in (a, b):
        studies.move(store.db, uid, "delivered", ("ready",))
    assert resend.delivered(store.db) == [a, b]

    got = resend.resend(store.db, a, "engineer")
    assert got.queued and got.instances == 1 and got.why.startswith("queued: 1 instances")
    assert rows(store, "SELECT state FROM studies WHERE study_uid=?", [a]) == [("ready",)]
    # every instance is unsent again, and the transfer that carried it is still known
    assert rows(store, "SELECT count(*) FROM transfer_instances") == [(0,)]
    assert rows(store, "SELECT state FROM transfers") == [("verified",)]
    assert rows(store, "SELECT username, action, study_uid FROM audit") == [
        ("engineer", "resend", a)
    ]
    # the box's purge, which read the study as delivered before, takes nothing now
    assert store.purge_study(a, "test") == 0
    assert rows(store, "SELECT count(*) FROM instances WHERE study_uid=?", [a]) == [(1,)]

    assert store.purge_study(b, "delivered more than 30 days ago") > 0
    why = resend.resend(store.db, b).why
    assert why.startswith("deleted from the box on ") and "30 days" in why
