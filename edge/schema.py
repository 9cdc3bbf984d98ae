"""The box's index schema: every table, as sqlite-utils migrations applied at each
start (re-running is safe). Boxes in the field have these names recorded: never rename
the set or a step; add a new step instead."""

from __future__ import annotations

import sqlite_utils
from sqlite_utils import Migrations

from common.db import create_audit_table
from common.sessions import create_session_tables

migrations = Migrations("radsetu.edge.store")


@migrations()
def m001_index(db: sqlite_utils.Database) -> None:
    db.execute("""
        CREATE TABLE patients (
            key TEXT PRIMARY KEY,
            patient_id TEXT NOT NULL, name TEXT NOT NULL,
            birth_date TEXT NOT NULL, sex TEXT NOT NULL
        )""")
    db.execute("""
        CREATE TABLE studies (
            study_uid TEXT PRIMARY KEY,
            patient_key TEXT NOT NULL REFERENCES patients(key),
            study_date TEXT NOT NULL, study_time TEXT NOT NULL,
            description TEXT NOT NULL, accession_number TEXT NOT NULL,
            state TEXT NOT NULL,            -- receiving | ready
            priority TEXT NOT NULL,         -- routine | stat
            first_received TEXT NOT NULL, last_received TEXT NOT NULL,
            last_received_ts REAL NOT NULL, -- seconds since the epoch, for the quiet check
            ready_at TEXT
        )""")
    db.execute("CREATE INDEX studies_state ON studies(state, last_received_ts)")
    db.execute("""
        CREATE TABLE series (
            series_uid TEXT PRIMARY KEY,
            study_uid TEXT NOT NULL REFERENCES studies(study_uid),
            modality TEXT NOT NULL, series_number INTEGER, description TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX series_study ON series(study_uid)")
    db.execute("""
        CREATE TABLE instances (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- doubles as the arrival sequence
            sop_instance_uid TEXT NOT NULL,
            version INTEGER NOT NULL,
            flagged TEXT,                   -- why a person should look, or NULL
            series_uid TEXT NOT NULL REFERENCES series(series_uid),
            study_uid TEXT NOT NULL REFERENCES studies(study_uid),
            sop_class_uid TEXT NOT NULL, transfer_syntax TEXT NOT NULL,
            instance_number INTEGER,
            sha256 TEXT NOT NULL,           -- of the stored file, which is named after it
            dataset_sha256 TEXT NOT NULL,   -- of the dataset bytes after the meta header
            size INTEGER NOT NULL, path TEXT NOT NULL,
            source TEXT NOT NULL, received_at TEXT NOT NULL
        )""")
    db.execute(
        "CREATE UNIQUE INDEX instances_identity "
        "ON instances(sop_instance_uid, transfer_syntax, dataset_sha256)"
    )
    db.execute("CREATE INDEX instances_study ON instances(study_uid)")
    db.execute("CREATE INDEX instances_sha ON instances(sha256)")
    db.execute("""
        CREATE TABLE repairs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL
        )""")


@migrations()
def m002_sync(db: sqlite_utils.Database) -> None:
    """What the sync agent and retention keep: transfers, what each carries, purges."""
    db.execute("ALTER TABLE studies ADD COLUMN delivered_at TEXT")
    db.execute("ALTER TABLE studies ADD COLUMN priority_reason TEXT")
    db.execute("""
        CREATE TABLE transfers (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order
            transfer_id TEXT NOT NULL UNIQUE,
            study_uid TEXT NOT NULL REFERENCES studies(study_uid),
            follow_up_of TEXT,
            state TEXT NOT NULL,            -- sending | verified
            pack_path TEXT NOT NULL,        -- relative to data_dir; gone once verified
            header_bytes INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
            chunk_count INTEGER NOT NULL, stream_bytes INTEGER NOT NULL,
            payload_bytes INTEGER NOT NULL, instance_count INTEGER NOT NULL,
            acked TEXT NOT NULL DEFAULT '[]',   -- ranges the hub holds
            chunks_sent INTEGER NOT NULL DEFAULT 0,
            chunks_resent INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL, first_sent_at TEXT, verified_at TEXT
        )""")
    db.execute("CREATE INDEX transfers_study ON transfers(study_uid)")
    db.execute("""
        CREATE TABLE transfer_instances (
            transfer_id TEXT NOT NULL REFERENCES transfers(transfer_id),
            instance_id INTEGER NOT NULL,
            PRIMARY KEY (transfer_id, instance_id)
        )""")
    db.execute("CREATE INDEX transfer_instances_instance ON transfer_instances(instance_id)")
    db.execute("""
        CREATE TABLE purges (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL, study_uid TEXT NOT NULL, reason TEXT NOT NULL,
            instances INTEGER NOT NULL, bytes INTEGER NOT NULL
        )""")


@migrations()
def m003_reports(db: sqlite_utils.Database) -> None:
    """Reports that came back from the hub, and their printing."""
    db.execute("""
        CREATE TABLE reports (
            report_id TEXT NOT NULL, version INTEGER NOT NULL,
            study_uid TEXT NOT NULL, critical INTEGER NOT NULL DEFAULT 0,
            body TEXT NOT NULL, pdf_path TEXT NOT NULL, received_at TEXT NOT NULL,
            printed_at TEXT, print_count INTEGER NOT NULL DEFAULT 0,
            print_error TEXT, reprint INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (report_id, version)
        )""")


@migrations()
def m004_clinic(db: sqlite_utils.Database) -> None:
    """The clinic's page: staff accounts, the append-only audit log, the clinical note,
    what the hub says of a study (being read), and note/priority changes for the hub."""
    db.execute("ALTER TABLE studies ADD COLUMN clinical_note TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE studies ADD COLUMN hub_state TEXT")
    db.execute("ALTER TABLE studies ADD COLUMN hub_state_at TEXT")
    db.execute("ALTER TABLE studies ADD COLUMN update_pending INTEGER NOT NULL DEFAULT 0")
    db.execute("""
        CREATE TABLE users (
            username TEXT PRIMARY KEY, role TEXT NOT NULL, language TEXT NOT NULL,
            password_hash TEXT NOT NULL, created_at TEXT NOT NULL
        )""")
    create_audit_table(db)


@migrations()
def m005_held(db: sqlite_utils.Database) -> None:
    """Instances (or whole studies, instance_id 0) that could not be packed for a
    reason that will not pass by itself, with a growing back-off; and how many
    instances of each transfer went without the pixel coder."""
    db.execute("""
        CREATE TABLE held (
            study_uid TEXT NOT NULL,
            instance_id INTEGER NOT NULL,   -- instances.id, or 0: the study as a whole
            sop_instance_uid TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL,
            first_at TEXT NOT NULL, last_at TEXT NOT NULL,
            tries INTEGER NOT NULL DEFAULT 1,
            next_try_ts REAL NOT NULL,      -- seconds since the epoch
            PRIMARY KEY (study_uid, instance_id)
        )""")
    db.execute("ALTER TABLE transfers ADD COLUMN coder_fallbacks INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE transfers ADD COLUMN coder_fallback_reasons TEXT")


@migrations()
def m006_sessions(db: sqlite_utils.Database) -> None:
    """Sessions kept on the box (a cookie is worth nothing after logout), failed-login
    counters, and accounts that are disabled or must change their password."""
    create_session_tables(db)


@migrations()
def m007_doctors(db: sqlite_utils.Database) -> None:
    """The clinic's referring doctors and its on-call contact (edge/doctors.py), the
    Referring Physician's Name the modality wrote on a study, and the doctor chosen on
    its page (NULL: the one that name matches)."""
    db.execute("""
        CREATE TABLE doctors (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL, mobile TEXT NOT NULL, email TEXT NOT NULL,
            language TEXT NOT NULL, on_call INTEGER NOT NULL DEFAULT 0,
            active INTEGER NOT NULL DEFAULT 1, created_at TEXT NOT NULL
        )""")
    db.execute("ALTER TABLE studies ADD COLUMN referring_physician TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE studies ADD COLUMN referrer_id INTEGER")


@migrations()
def m008_critical_confirmed(db: sqlite_utils.Database) -> None:
    """A critical finding confirmed at the clinic: who told the doctor, what the doctor
    read back, and whether the hub still has to hear of it."""
    for col in (
        "critical_confirmed_by TEXT",
        "critical_confirmed_at TEXT",
        "critical_readback TEXT",
        "confirm_pending INTEGER NOT NULL DEFAULT 0",
    ):
        db.execute(f"ALTER TABLE reports ADD COLUMN {col}")


@migrations()
def m009_orders(db: sqlite_utils.Database) -> None:
    """Orders registered at reception (edge/orders.py), which the box's Modality
    Worklist serves, and the study each one met."""
    db.execute("""
        CREATE TABLE orders (
            accession TEXT PRIMARY KEY, study_uid TEXT NOT NULL UNIQUE,
            patient_id TEXT NOT NULL, name_latin TEXT NOT NULL, name_local TEXT NOT NULL,
            sex TEXT NOT NULL, birth_date TEXT NOT NULL, age TEXT NOT NULL,
            modality TEXT NOT NULL, body_part TEXT NOT NULL, question TEXT NOT NULL,
            referrer_id INTEGER, stat INTEGER NOT NULL, station_ae TEXT NOT NULL,
            scheduled_date TEXT NOT NULL, scheduled_time TEXT NOT NULL,
            state TEXT NOT NULL, linked_study TEXT,
            created_by TEXT NOT NULL, created_at TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX orders_day ON orders(scheduled_date)")
    db.execute("CREATE INDEX orders_linked ON orders(linked_study)")


@migrations()
def m010_mpps(db: sqlite_utils.Database) -> None:
    """The modality's performed procedure step an order is in (edge/mpps.py)."""
    db.execute("ALTER TABLE orders ADD COLUMN mpps_uid TEXT")


@migrations()
def m011_preview(db: sqlite_utils.Database) -> None:
    """A transfer is the study's lossless instances or their lossy preview (a STAT
    study's preview goes first: common/preview.py)."""
    db.execute("ALTER TABLE transfers ADD COLUMN kind TEXT NOT NULL DEFAULT 'lossless'")


@migrations()
def m012_previewed(db: sqlite_utils.Database) -> None:
    """The instances a preview has tried (edge/previews.py): packed in a preview, or
    found to have none. A STAT study's images are previewed as they arrive, each once."""
    db.execute("CREATE TABLE previewed (instance_id INTEGER PRIMARY KEY)")


@migrations()
def m013_orders_to_hub(db: sqlite_utils.Database) -> None:
    """An order the hub has not yet heard of as it is now (edge/downlink.py sends it on
    ``up/order``): set when reception makes or cancels it, and when its state changes.
    Orders made before are not sent."""
    db.execute("ALTER TABLE orders ADD COLUMN hub_pending INTEGER NOT NULL DEFAULT 0")


@migrations()
def m014_print_ack(db: sqlite_utils.Database) -> None:
    """A print the hub has not yet heard of (edge/downlink.py sends it on
    ``up/report-ack`` until the hub answers): set with ``printed_at``, in the same
    statement. Prints made before are not sent again."""
    db.execute("ALTER TABLE reports ADD COLUMN print_ack_pending INTEGER NOT NULL DEFAULT 0")
