"""The store's self-check after a crash: temp files removed, files without a row
indexed, rows without a file dropped, anything unreadable quarantined. Every repair is
logged and kept in the ``repairs`` table (through ``Store.log_repair``)."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("radsetu.store")


@dataclass
class CheckReport:
    temp_files_removed: int = 0
    files_indexed: list[str] = field(default_factory=list)  # files that had no row
    rows_removed: list[str] = field(default_factory=list)  # rows whose file was gone
    quarantined: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.files_indexed or self.rows_removed or self.quarantined)


def check(store: Any, index_file: Any) -> CheckReport:
    """Repair the store after a crash: remove temp files, index files that have no
    row (``index_file(path)`` parses one into an InstanceInfo and its dataset
    offset), and drop rows whose file is gone. Every repair is logged and kept in
    the ``repairs`` table."""
    report = CheckReport()
    for p in store.tmp.iterdir():
        p.unlink(missing_ok=True)
        report.temp_files_removed += 1
    if report.temp_files_removed:
        log.info("removed %d temp files left by an interrupted write", report.temp_files_removed)
    known = {r[0] for r in store.db.execute("SELECT DISTINCT sha256 FROM instances")}
    for sub in sorted(store.objects.iterdir()):
        for p in sub.iterdir():
            sha = p.name.removesuffix(".dcm")
            if sha in known:
                continue
            _recover(store, p, sha, index_file, report)
    rows = store.db.execute("SELECT id, sop_instance_uid, study_uid, path, size FROM instances")
    for iid, sop, study, rel, size in rows.fetchall():
        p = store.root / rel
        try:
            ok = p.stat().st_size == size
        except FileNotFoundError:
            ok = False
        if not ok:
            with store.write_lock, store.db.atomic():
                store.drop_instance_row(iid)
                store.log_repair(
                    "row-without-file",
                    f"study {study} instance {sop}: file {rel} missing or wrong "
                    "size; row removed, send the instance again",
                )
            report.rows_removed.append(sop)
    return report


def _recover(store: Any, p: Path, sha: str, index_file: Any, report: CheckReport) -> None:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    problem = None
    if h.hexdigest() != sha:
        problem = "content does not match its name (damaged file)"
    else:
        try:
            info, offset = index_file(p)
        except Exception as exc:  # anything unparseable goes to quarantine
            problem = f"cannot be indexed: {exc}"
    if problem:
        dest = store.quarantine / p.name
        os.replace(p, dest)
        store.log_repair("quarantined", f"{p.name}: {problem}")
        report.quarantined.append(p.name)
        return
    dsha = hashlib.sha256()
    with open(p, "rb") as f:
        f.seek(offset)
        for block in iter(lambda: f.read(1 << 20), b""):
            dsha.update(block)
    with store.write_lock:
        exists = store.db.execute(
            "SELECT 1 FROM instances WHERE sop_instance_uid=? AND transfer_syntax=? "
            "AND dataset_sha256=?",
            [info.sop_instance_uid, info.transfer_syntax, dsha.hexdigest()],
        ).fetchone()
        if exists:  # an older copy of the same dataset is indexed: this one is spare
            p.unlink()
            store.log_repair("duplicate-file", f"{p.name}: same dataset already indexed")
            return
        store.index_kept(info, sha, dsha.hexdigest(), p.stat().st_size, p, "recovered", stat=False)
        store.log_repair(
            "file-without-row",
            f"study {info.study_uid} instance {info.sop_instance_uid}: file had "
            "no row (interrupted before commit); indexed",
        )
    report.files_indexed.append(info.sop_instance_uid)
