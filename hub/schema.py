"""The hub's index schema: its migrations, in order, applied by ``FileHubStore`` when a
process opens the hub's data folder. Never edit one that has shipped; add the next."""

from __future__ import annotations

import json

import sqlite_utils
from sqlite_utils import Migrations

from common.db import create_audit_table
from common.sessions import create_session_tables

migrations = Migrations("radsetu.hub.store")


@migrations()
def m001_hub(db: sqlite_utils.Database) -> None:
    db.execute("""
        CREATE TABLE transfers (
            transfer_id TEXT PRIMARY KEY, box_id TEXT NOT NULL, study_uid TEXT NOT NULL,
            priority TEXT NOT NULL, state TEXT NOT NULL, reception TEXT NOT NULL,
            chunk_count INTEGER NOT NULL, chunks_held INTEGER NOT NULL,
            payload_bytes INTEGER NOT NULL, source TEXT NOT NULL,
            first_seen TEXT NOT NULL, updated TEXT NOT NULL, verified_at TEXT
        )""")
    db.execute("""
        CREATE TABLE instances (
            sop_instance_uid TEXT NOT NULL, sha256 TEXT NOT NULL,
            study_uid TEXT NOT NULL, box_id TEXT NOT NULL, transfer_id TEXT NOT NULL,
            size INTEGER NOT NULL, path TEXT NOT NULL, stored_at TEXT NOT NULL,
            PRIMARY KEY (sop_instance_uid, sha256)
        )""")
    db.execute("CREATE INDEX hub_instances_study ON instances(study_uid)")


@migrations()
def m002_manifest_apart(db: sqlite_utils.Database) -> None:
    """The manifest never changes: keep it apart from the state that changes with every
    chunk, so a chunk's update does not rewrite (nor re-read) every chunk hash."""
    db.execute("ALTER TABLE transfers ADD COLUMN manifest TEXT")
    for tid, raw in db.execute("SELECT transfer_id, reception FROM transfers").fetchall():
        d = json.loads(raw)
        manifest = d.pop("manifest", None)
        db.execute(
            "UPDATE transfers SET manifest=?, reception=? WHERE transfer_id=?",
            [json.dumps(manifest), json.dumps(d), tid],
        )


@migrations()
def m003_boxes_and_counts(db: sqlite_utils.Database) -> None:
    """Each box's last status, and per-transfer counts of what arrived twice."""
    db.execute("""
        CREATE TABLE boxes (
            box_id TEXT PRIMARY KEY, online INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT '{}', status_at TEXT,
            first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
            rejected INTEGER NOT NULL DEFAULT 0, last_rejection TEXT
        )""")
    for col in ("chunks_received", "duplicates", "resent_held"):
        db.execute(f"ALTER TABLE transfers ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0")


@migrations()
def m004_reports(db: sqlite_utils.Database) -> None:
    """Reports (a signed one never changes; an addendum is a new version) and their
    delivery to the box, retried until the box acknowledges."""
    db.execute("""
        CREATE TABLE reports (
            report_id TEXT NOT NULL, version INTEGER NOT NULL,
            study_uid TEXT NOT NULL, box_id TEXT NOT NULL,
            state TEXT NOT NULL,            -- draft | signed
            findings TEXT NOT NULL, impression TEXT NOT NULL,
            radiologist TEXT NOT NULL, critical INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL, signed_at TEXT, pdf_path TEXT,
            PRIMARY KEY (report_id, version)
        )""")
    db.execute("CREATE INDEX reports_study ON reports(study_uid)")
    db.execute("""
        CREATE TABLE deliveries (
            report_id TEXT NOT NULL, version INTEGER NOT NULL, box_id TEXT NOT NULL,
            state TEXT NOT NULL,            -- pending | acked
            attempts INTEGER NOT NULL DEFAULT 0, last_sent_at REAL,
            created_at TEXT NOT NULL, acked_at TEXT,
            PRIMARY KEY (report_id, version)
        )""")


@migrations()
def m005_reading(db: sqlite_utils.Database) -> None:
    """What the reading room needs of a study, and the times its turnaround is made of
    (the hub's clock, except ``acquired_at`` from the DICOM dates and
    ``received_at_box`` from the box's clock)."""
    db.execute("""
        CREATE TABLE hub_studies (
            study_uid TEXT PRIMARY KEY, box_id TEXT NOT NULL,
            patient_name TEXT NOT NULL, patient_id TEXT NOT NULL,
            modality TEXT NOT NULL, description TEXT NOT NULL,
            priority TEXT NOT NULL, priority_reason TEXT NOT NULL DEFAULT '',
            subspecialty TEXT NOT NULL DEFAULT '',
            claimed_by TEXT, assigned_to TEXT,
            acquired_at TEXT, received_at_box TEXT, verified_at TEXT NOT NULL,
            claimed_at TEXT, signed_at TEXT, report_at_box_at TEXT, printed_at TEXT
        )""")
    db.execute("CREATE INDEX hub_studies_order ON hub_studies(priority, verified_at)")


@migrations()
def m006_users(db: sqlite_utils.Database) -> None:
    """People who log in to the hub's pages."""
    db.execute("""
        CREATE TABLE users (
            username TEXT PRIMARY KEY, role TEXT NOT NULL,
            password_hash TEXT NOT NULL, created_at TEXT NOT NULL
        )""")


@migrations()
def m007_access_and_fleet(db: sqlite_utils.Database) -> None:
    """API tokens for scripts, the append-only audit log, and each box's history (its
    status over time, and the bytes that reached the hub per minute) for the
    operators' charts and alerts."""
    db.execute("""
        CREATE TABLE api_tokens (
            token_sha256 TEXT PRIMARY KEY, username TEXT NOT NULL, label TEXT NOT NULL,
            created_at TEXT NOT NULL, last_used_at TEXT
        )""")
    create_audit_table(db, "role TEXT NOT NULL")
    db.execute("""
        CREATE TABLE box_history (
            box_id TEXT NOT NULL, at REAL NOT NULL, online INTEGER NOT NULL,
            backlog_studies INTEGER, backlog_bytes INTEGER, disk_free INTEGER
        )""")
    db.execute("CREATE INDEX box_history_box ON box_history(box_id, at)")
    db.execute("""
        CREATE TABLE box_traffic (
            box_id TEXT NOT NULL, minute INTEGER NOT NULL, bytes INTEGER NOT NULL,
            PRIMARY KEY (box_id, minute)
        )""")


@migrations()
def m008_clinic_word(db: sqlite_utils.Database) -> None:
    """The clinic's clinical note on a study (and STAT or a note that came before the
    study did), and the hub's word back to the box (a radiologist is reading it)."""
    db.execute("ALTER TABLE hub_studies ADD COLUMN clinical_note TEXT NOT NULL DEFAULT ''")
    db.execute("""
        CREATE TABLE study_hints (
            study_uid TEXT PRIMARY KEY, box_id TEXT NOT NULL, priority TEXT NOT NULL,
            clinical_note TEXT NOT NULL, at TEXT NOT NULL
        )""")
    db.execute("""
        CREATE TABLE notices (
            id INTEGER PRIMARY KEY AUTOINCREMENT, box_id TEXT NOT NULL,
            study_uid TEXT NOT NULL, state TEXT NOT NULL, created_at TEXT NOT NULL,
            sent_at TEXT
        )""")


@migrations()
def m009_sessions(db: sqlite_utils.Database) -> None:
    """Sessions kept at the hub (a cookie is worth nothing after logout or a change of
    role), failed-login counters, disabled accounts, and API tokens that expire."""
    create_session_tables(db)
    # NULL: a token made before tokens expired; it lasts 90 days from its making
    db.execute("ALTER TABLE api_tokens ADD COLUMN expires REAL")


@migrations()
def m010_uid_conflicts(db: sqlite_utils.Database) -> None:
    """Study UIDs that came from two boxes: the second box's study is kept apart (its key
    is ``<UID>~<box>``, hub/studykeys.py) and a person is told."""
    db.execute("""
        CREATE TABLE uid_conflicts (
            study_uid TEXT NOT NULL, first_box TEXT NOT NULL, other_box TEXT NOT NULL,
            at TEXT NOT NULL, PRIMARY KEY (study_uid, other_box)
        )""")


@migrations()
def m011_box_broker(db: sqlite_utils.Database) -> None:
    """The broker each box was last heard on ("host:port"; several brokers share the
    fleet): reports and notices for a box go out through its broker."""
    db.execute("ALTER TABLE boxes ADD COLUMN broker TEXT NOT NULL DEFAULT ''")


@migrations()
def m012_leases(db: sqlite_utils.Database) -> None:
    """Who runs each of the hub's periodic jobs (the report sender per broker, the
    retention), so that a job runs in one process of a cluster, and in another within
    a lease's length after that process dies (hub/leases.py)."""
    db.execute("""
        CREATE TABLE leases (
            job TEXT PRIMARY KEY, holder TEXT NOT NULL, held_until REAL NOT NULL,
            held_since REAL NOT NULL
        )""")


@migrations()
def m013_shared_keys(db: sqlite_utils.Database) -> None:
    """Keys every hub process must share, on any machine: the one that signs the
    pages' session cookies (hub.users.session_key), so that a load balancer may send
    a person's requests to any web process."""
    db.execute("CREATE TABLE hub_keys (name TEXT PRIMARY KEY, value TEXT NOT NULL)")


@migrations()
def m014_referrers(db: sqlite_utils.Database) -> None:
    """The study's referring doctor as the clinic named them (wire/contact.py, as JSON;
    '' when the clinic named nobody), also on a word that came before its study."""
    db.execute("ALTER TABLE hub_studies ADD COLUMN referrer TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE study_hints ADD COLUMN referrer TEXT NOT NULL DEFAULT ''")


@migrations()
def m015_critical_results(db: sqlite_utils.Database) -> None:
    """Critical results (hub/critical.py) and the messages that tell people of them
    (hub/notify.py): who, by which channel, and what became of each try."""
    db.execute("""
        CREATE TABLE critical_results (
            report_id TEXT PRIMARY KEY, study_uid TEXT NOT NULL, box_id TEXT NOT NULL,
            code TEXT NOT NULL, token_sha256 TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,            -- open | confirmed
            opened_at TEXT NOT NULL, escalated_at TEXT,
            confirmed_at TEXT, confirmed_by TEXT, confirmed_how TEXT
        )""")
    db.execute("""
        CREATE TABLE notifications (
            id INTEGER PRIMARY KEY AUTOINCREMENT, report_id TEXT NOT NULL,
            channel TEXT NOT NULL,          -- sms | email
            recipient TEXT NOT NULL, name TEXT NOT NULL, language TEXT NOT NULL,
            role TEXT NOT NULL,             -- referrer | on_call
            token TEXT NOT NULL,            -- the link's, to write it into the message
            state TEXT NOT NULL,            -- pending | sent | failed
            attempts INTEGER NOT NULL, next_try REAL, last_error TEXT,
            created_at TEXT NOT NULL, sent_at TEXT
        )""")
    db.execute("CREATE INDEX notifications_report ON notifications(report_id)")


@migrations()
def m016_critical_turnaround(db: sqlite_utils.Database) -> None:
    """The turnaround's last step for a critical finding: when a person confirmed it."""
    db.execute("ALTER TABLE hub_studies ADD COLUMN critical_confirmed_at TEXT")


@migrations()
def m017_critical_operators(db: sqlite_utils.Database) -> None:
    """A critical result's second escalation: when the operators were alerted."""
    db.execute("ALTER TABLE critical_results ADD COLUMN operators_at TEXT")


@migrations()
def m018_orders(db: sqlite_utils.Database) -> None:
    """The clinic's order a study met (its accession number, and when it was ordered:
    where the turnaround starts)."""
    db.execute("ALTER TABLE hub_studies ADD COLUMN accession TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE hub_studies ADD COLUMN ordered_at TEXT")


@migrations()
def m019_birth_date(db: sqlite_utils.Database) -> None:
    """The patient's birth date (DICOM YYYYMMDD, or empty): priors are the same patient's
    only when it agrees (hub/priors.py)."""
    db.execute("ALTER TABLE hub_studies ADD COLUMN patient_birth_date TEXT NOT NULL DEFAULT ''")


@migrations()
def m020_previews(db: sqlite_utils.Database) -> None:
    """A STAT study's lossy preview (common/preview.py) is kept beside the lossless
    instances until they arrive: ``instances.lossy`` marks it; ``shown_instances`` is
    what viewers see (an instance's lossless version once it is in, else its preview);
    ``hub_studies.preview_ratio`` is set while the study is shown from a preview;
    ``reports.on_preview`` says what a report signed on a preview was read on."""
    db.execute("ALTER TABLE instances ADD COLUMN lossy INTEGER NOT NULL DEFAULT 0")
    db.execute("""
        CREATE VIEW shown_instances AS
        SELECT * FROM instances i WHERE i.lossy = 0 OR NOT EXISTS (
            SELECT 1 FROM instances l WHERE l.study_uid = i.study_uid
                AND l.sop_instance_uid = i.sop_instance_uid AND l.lossy = 0)""")
    db.execute("ALTER TABLE hub_studies ADD COLUMN preview_ratio REAL")
    db.execute("ALTER TABLE reports ADD COLUMN on_preview TEXT")


@migrations()
def m021_patient_index(db: sqlite_utils.Database) -> None:
    """A patient's studies at a clinic are found by index: the worklist counts each
    listed study's priors (hub/priors.py) on every view."""
    db.execute("CREATE INDEX hub_studies_patient ON hub_studies(box_id, patient_id)")


@migrations()
def m022_instance_series(db: sqlite_utils.Database) -> None:
    """Each instance's series and modality, read from its header as it is kept: a viewer's
    study list shows every study's modalities and series and instance counts, which
    were read from every header of every study before (hub/dicomindex.py). NULL: an
    instance kept before this migration, described when its study is first listed.
    The view is made again so that PostgreSQL, which fixes a view's columns when it is
    made, shows the new ones."""
    for column, kind in (
        ("series_uid", "TEXT"),
        ("modality", "TEXT"),
        ("series_number", "INTEGER"),
        ("instance_number", "INTEGER"),
    ):
        db.execute(f"ALTER TABLE instances ADD COLUMN {column} {kind}")
    db.execute("DROP VIEW shown_instances")
    db.execute("""
        CREATE VIEW shown_instances AS
        SELECT * FROM instances i WHERE i.lossy = 0 OR NOT EXISTS (
            SELECT 1 FROM instances l WHERE l.study_uid = i.study_uid
                AND l.sop_instance_uid = i.sop_instance_uid AND l.lossy = 0)""")


@migrations()
def m023_resend_requests(db: sqlite_utils.Database) -> None:
    """The hub's requests that a box send delivered studies again (hub/resends.py): sent
    until the box answers, and the answer kept for the operator."""
    db.execute("""
        CREATE TABLE resend_requests (
            request_id TEXT PRIMARY KEY, box_id TEXT NOT NULL,
            study_uids TEXT NOT NULL, every INTEGER NOT NULL,
            asked_by TEXT NOT NULL, asked_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, last_sent_at REAL,
            answered_at TEXT, answer TEXT
        )""")
    db.execute("CREATE INDEX resend_requests_box ON resend_requests(box_id, asked_at)")


@migrations()
def m024_clinic_orders(db: sqlite_utils.Database) -> None:
    """The clinics' orders as their boxes send them (hub/orders.py): the reading room
    sees an exam coming, STAT first, before its images are in."""
    db.execute("""
        CREATE TABLE clinic_orders (
            box_id TEXT NOT NULL, accession TEXT NOT NULL, study_uid TEXT NOT NULL,
            state TEXT NOT NULL, priority TEXT NOT NULL, modality TEXT NOT NULL,
            body_part TEXT NOT NULL, question TEXT NOT NULL, patient_name TEXT NOT NULL,
            patient_id TEXT NOT NULL, referrer TEXT, ordered_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (box_id, accession)
        )""")
    db.execute("CREATE INDEX clinic_orders_when ON clinic_orders(ordered_at)")


@migrations()
def m025_studies_by_accession(db: sqlite_utils.Database) -> None:
    """A clinic's studies found by accession number: the reading room's list of orders
    still coming (hub/orders.py) asks, for each order, whether its study is in."""
    db.execute("CREATE INDEX hub_studies_accession ON hub_studies(box_id, accession)")
