"""Opening the box's data folder: its lock (one box per folder), its store as the
config describes it, and the self-check that runs before anything writes."""

from __future__ import annotations

import fcntl
import logging
import os

from common.config import Config
from common.dicomfile import index_existing
from edge.store import StatRules, Store

log = logging.getLogger("radsetu.edge")


class BoxRunning(Exception):
    """Another process serves this data folder."""


def lock_data_dir(config: Config) -> int:
    """Take the data folder's lock, held for as long as the process lives. The store's
    check removes temp files, so it must never run beside a box that is writing them."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(config.data_dir / "box.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise BoxRunning(
            f"a box is already running on {config.data_dir}: stop it first "
            "(or give this one another data_dir)"
        ) from exc
    return fd


def open_store(config: Config) -> Store:
    s = config["store"]
    st = config["stat"]
    return Store(
        config.data_dir,
        reserve_bytes=s["reserve_bytes"],
        quiet_seconds=s["quiet_seconds"],
        stat_rules=StatRules(tuple(st["modalities"]), tuple(st["description_words"])),
    )


def check_store(store: Store) -> None:
    report = store.check(index_existing)
    if report.clean:
        log.info("store check: clean (%d temp files removed)", report.temp_files_removed)
    else:
        log.warning(
            "store check repaired: %d files indexed, %d rows without files removed, "
            "%d files quarantined (see the repairs table)",
            len(report.files_indexed),
            len(report.rows_removed),
            len(report.quarantined),
        )
