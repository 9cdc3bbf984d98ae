"""Reports that came back to the box: kept durably, acknowledged, printed.

A report (one version of it) is kept once: its PDF is written to a temp file, fsynced
and renamed into ``data_dir/reports/``, then its row is committed; only then does the
sync agent acknowledge it to the hub. The same (report, version) again changes
nothing and is acknowledged again (the hub's first ack may have been lost).

The printer thread prints each report once, with CUPS ``lp`` to ``[print] printer``;
with no printer set, the PDF waits for the browser's print. A reprint is asked for
through the web API and printed once more.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import sqlite_utils

from common.clock import utcnow
from common.durable import write_durably
from edge.store import Store

log = logging.getLogger("radsetu.reports")


def keep(store: Store, report: dict[str, Any], pdf: bytes) -> bool:
    """Keep a report; False if this version was already kept."""
    rid, version = report["report_id"], report["version"]
    db = store.db
    if db.execute(
        "SELECT 1 FROM reports WHERE report_id=? AND version=?", [rid, version]
    ).fetchone():
        return False
    final = store.root / "reports" / f"{rid}-v{version}.pdf"
    write_durably(final, pdf, store.tmp)
    with store.write_lock, db.atomic():
        db.execute(
            """INSERT INTO reports(report_id, version, study_uid, critical, body, pdf_path,
                   received_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING""",
            [
                rid,
                version,
                report["study_uid"],
                int(report.get("critical") is True),
                json.dumps(report),
                str(final.relative_to(store.root)),
                utcnow(),
            ],
        )
    if report.get("critical"):
        log.warning("CRITICAL report %s for study %s arrived", rid, report["study_uid"])
    else:
        log.info("report %s version %d for study %s arrived", rid, version, report["study_uid"])
    return True


def listing(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Reports, critical first, then newest first."""
    out = []
    for row in db.query(
        """SELECT r.report_id, r.version, r.study_uid, r.critical, r.body, r.received_at,
                  r.printed_at, r.print_count, r.print_error, r.reprint
           FROM reports r ORDER BY r.critical DESC, r.received_at DESC"""
    ):
        row = dict(row)
        body = json.loads(row.pop("body"))
        row["critical"] = bool(row["critical"])
        row.update({k: body.get(k, "") for k in ("findings", "impression", "radiologist")})
        row["signed_at"] = body.get("signed_at")
        out.append(row)
    return out


def unconfirmed_critical(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Critical findings nobody at the clinic has yet confirmed telling the doctor about:
    the report, its study's patient and the impression, oldest first."""
    out = []
    for row in db.query(
        """SELECT r.report_id, r.version, r.study_uid, r.body, r.received_at, p.name
           FROM reports r LEFT JOIN studies s ON s.study_uid = r.study_uid
           LEFT JOIN patients p ON p.key = s.patient_key
           WHERE r.critical=1 AND r.critical_confirmed_at IS NULL
           AND r.version = (SELECT max(version) FROM reports x WHERE x.report_id=r.report_id)
           ORDER BY r.received_at"""
    ):
        row = dict(row)
        body = json.loads(row.pop("body"))
        row["impression"] = body.get("impression") or body.get("findings", "")
        row["patient_name"] = row.pop("name") or ""
        out.append(row)
    return out


def confirm_critical(db: sqlite_utils.Database, report_id: str, by: str, readback: str) -> bool:
    """A named member of staff told the doctor; the hub hears of it (``confirm_pending``)."""
    cur = db.execute(
        "UPDATE reports SET critical_confirmed_by=?, critical_confirmed_at=?, "
        "critical_readback=?, confirm_pending=1 WHERE report_id=? AND critical=1 "
        "AND critical_confirmed_at IS NULL",
        [by, utcnow(), readback, report_id],
    )
    return bool(cur.rowcount)


def pending_confirmations(db: sqlite_utils.Database) -> list[tuple[str, int, str, str]]:
    rows = db.execute(
        "SELECT report_id, version, critical_confirmed_by, critical_readback FROM reports "
        "WHERE confirm_pending=1"
    ).fetchall()
    return [tuple(r) for r in rows]


def pending_print_acks(db: sqlite_utils.Database) -> list[tuple[str, int]]:
    rows = db.execute("SELECT report_id, version FROM reports WHERE print_ack_pending=1").fetchall()
    return [(r[0], r[1]) for r in rows]


def print_ack_sent(db: sqlite_utils.Database, report_id: str, version: int) -> None:
    """The hub has the print: nothing pending unless it was printed again since (a
    reprint changes nothing at the hub, which keeps the first print's time)."""
    db.execute(
        "UPDATE reports SET print_ack_pending=0 WHERE report_id=? AND version=?",
        [report_id, version],
    )


def confirmation_sent(db: sqlite_utils.Database, report_id: str, version: int) -> None:
    db.execute(
        "UPDATE reports SET confirm_pending=0 WHERE report_id=? AND version=?",
        [report_id, version],
    )


def ask_reprint(db: sqlite_utils.Database, report_id: str) -> bool:
    cur = db.execute(
        "UPDATE reports SET reprint=1 WHERE report_id=? AND version="
        "(SELECT max(version) FROM reports WHERE report_id=?)",
        [report_id, report_id],
    )
    return bool(cur.rowcount)


def pdf_path(db: sqlite_utils.Database, root: Path, report_id: str) -> Path | None:
    row = db.execute(
        "SELECT pdf_path FROM reports WHERE report_id=? ORDER BY version DESC LIMIT 1",
        [report_id],
    ).fetchone()
    return root / row[0] if row else None


class Printer(threading.Thread):
    """Prints what has not been printed, and what a person asked to print again."""

    def __init__(
        self,
        store: Store,
        printer: str,
        every: float = 1.0,
    ):
        super().__init__(name="printer", daemon=True)
        self.store = store
        self.printer = printer
        self.every = every
        self.stop_event = threading.Event()
        self.lp = shutil.which("lp")

    def run(self) -> None:
        if not self.printer:
            log.info(
                "no [print] printer: reports wait on the clinic's page for the browser's print"
            )
            return
        while not self.stop_event.wait(self.every):
            try:
                self.print_due()
            except Exception:  # keep the thread; the next round tries again
                log.exception("printing failed")

    def print_due(self) -> None:
        db = self.store.db
        rows = db.execute(
            "SELECT report_id, version, pdf_path, reprint FROM reports "
            "WHERE (printed_at IS NULL AND print_error IS NULL) OR reprint=1 "
            "ORDER BY critical DESC, received_at"
        ).fetchall()
        for rid, version, rel, _reprint in rows:
            error = self._lp(rid, version, self.store.root / rel)
            with self.store.write_lock, db.atomic():
                if error is None:  # the hub hears of it (print_ack_pending, downlink.py)
                    db.execute(
                        "UPDATE reports SET printed_at=?, print_count=print_count+1, reprint=0, "
                        "print_error=NULL, print_ack_pending=1 WHERE report_id=? AND version=?",
                        [utcnow(), rid, version],
                    )
                else:
                    db.execute(
                        "UPDATE reports SET print_error=?, reprint=0 WHERE report_id=? "
                        "AND version=?",
                        [error, rid, version],
                    )

    def _lp(self, rid: str, version: int, path: Path) -> str | None:
        if self.lp is None:
            return "CUPS is not installed (no lp command): install cups-client"
        r = subprocess.run(
            [self.lp, "-d", self.printer, "-t", f"radsetu-report-{rid}-v{version}", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            why = (r.stderr or r.stdout).strip()[:300]
            log.error("printing report %s on %s failed: %s", rid, self.printer, why)
            return f"lp failed: {why} (check the printer {self.printer!r} in CUPS)"
        log.info(
            "report %s version %d sent to printer %s: %s",
            rid,
            version,
            self.printer,
            r.stdout.strip(),
        )
        return None
