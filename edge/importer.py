"""``radsetu edge import PATH``: studies from a USB stick or CD (folder, DICOMDIR, ZIP).

Every file goes through the same intake as a C-STORE (same checks, same durable
write) and is kept byte for byte. ZIP entries are read as streams and never
extracted by name, so no entry can land outside the store; names that try to
(``../``, absolute paths) are refused outright, and so are archives that would
inflate far beyond their size (ZIP bombs).
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO, TextIO

import pydicom

from common.dicomfile import InvalidInstance
from edge.intake import accept_file
from edge.store import Outcome, Store, StoreFull

log = logging.getLogger("radsetu.import")

BOMB_MIN_BYTES = 16 * 1024 * 1024  # tiny entries may compress absurdly well; harmless


@dataclass
class Candidate:
    name: str  # what the person sees in the summary
    size: int
    open: Callable[[], BinaryIO]
    refused: str | None = None  # known bad before reading


@dataclass
class Summary:
    imported: int = 0
    already_there: int = 0
    new_versions: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    bytes_imported: int = 0
    stopped: str | None = None  # why the import stopped early, if it did
    studies: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.refused and self.stopped is None

    def lines(self) -> list[str]:
        out = [
            f"imported:      {self.imported} instances ({self.bytes_imported / 1e6:.1f} MB) "
            f"in {len(self.studies)} studies",
            f"already there: {self.already_there}",
        ]
        if self.new_versions:
            out.append(f"new versions:  {self.new_versions} (same UID, other bytes: flagged)")
        out.append(f"refused:       {len(self.refused)}")
        by_reason = Counter(reason for _, reason in self.refused)
        for reason, n in by_reason.most_common():
            examples = [name for name, r in self.refused if r == reason][:3]
            more = f" and {n - len(examples)} more" if n > len(examples) else ""
            out.append(f"  {n} x {reason}: {', '.join(examples)}{more}")
        if self.stopped:
            out.append(f"STOPPED: {self.stopped}")
        return out


def unsafe_zip_name(name: str) -> bool:
    """True if an entry name would point outside a folder it was extracted to."""
    if "\x00" in name:
        return True
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or pure.anchor or ".." in pure.parts:
            return True
    return False


def _zip_candidates(
    path: Path, max_bytes: int, max_total: int, max_ratio: int
) -> Iterator[Candidate]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        yield Candidate(path.name, 0, _no_open, refused=f"not a readable ZIP: {exc}")
        return
    infos = [i for i in zf.infolist() if not i.is_dir()]
    total = sum(i.file_size for i in infos)
    if total > max_total:
        yield Candidate(
            path.name,
            0,
            _no_open,
            refused=(
                f"ZIP would unpack to {total / 1e9:.1f} GB, more than the "
                f"{max_total / 1e9:.1f} GB limit (import.max_total_bytes): refused as a ZIP bomb"
            ),
        )
        return
    for info in infos:
        name = f"{path.name}:{info.filename}"
        refused = None
        if unsafe_zip_name(info.filename):
            refused = "unsafe entry name (path traversal): not read"
        elif info.flag_bits & 0x1:
            refused = "encrypted ZIP entry"
        elif info.file_size > max_bytes:
            refused = f"entry of {info.file_size} bytes is over the per-instance limit"
        elif info.file_size > BOMB_MIN_BYTES and info.file_size > max_ratio * max(
            info.compress_size, 1
        ):
            refused = (
                f"entry inflates {info.file_size // max(info.compress_size, 1)}:1, "
                f"more than import.max_zip_ratio ({max_ratio}): refused as a ZIP bomb"
            )
        yield Candidate(name, info.file_size, lambda info=info: zf.open(info), refused)


def _no_open() -> BinaryIO:
    raise AssertionError("refused candidates are never opened")


def _file_candidate(p: Path, name: str) -> Candidate:
    try:
        st = p.lstat()
    except OSError as exc:
        return Candidate(name, 0, _no_open, refused=f"cannot read: {exc.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return Candidate(name, 0, _no_open, refused="not a regular file (link or device)")
    return Candidate(name, st.st_size, lambda: open(p, "rb"))  # noqa: SIM115


def _find_case_insensitive(base: Path, parts: list[str]) -> Path | None:
    # CDs written with upper-case 8.3 names are often mounted lower-case
    cur = base
    for part in parts:
        exact = cur / part
        if exact.exists():
            cur = exact
            continue
        try:
            match = next((c for c in cur.iterdir() if c.name.lower() == part.lower()), None)
        except OSError:
            return None
        if match is None:
            return None
        cur = match
    return cur


def _dicomdir_candidates(dicomdir: Path) -> Iterator[Candidate]:
    base = dicomdir.parent.resolve()
    try:
        ds = pydicom.dcmread(dicomdir)
        records = ds.DirectoryRecordSequence
    except Exception as exc:
        yield Candidate(dicomdir.name, 0, _no_open, refused=f"unreadable DICOMDIR: {exc}")
        return
    for rec in records:
        ref = rec.get("ReferencedFileID")
        if not ref:
            continue
        parts = [ref] if isinstance(ref, str) else list(ref)
        name = "/".join(parts)
        if any(p in ("", ".", "..") or "/" in p or "\\" in p for p in parts):
            yield Candidate(name, 0, _no_open, refused="DICOMDIR points outside the medium")
            continue
        found = _find_case_insensitive(base, parts)
        if found is None:
            yield Candidate(name, 0, _no_open, refused="listed in DICOMDIR but missing")
            continue
        if not found.resolve().is_relative_to(base):
            yield Candidate(name, 0, _no_open, refused="DICOMDIR points outside the medium")
            continue
        yield _file_candidate(found, name)


def candidates(path: Path, max_bytes: int, max_total: int, max_ratio: int) -> Iterator[Candidate]:
    """What to import from ``path``: a folder (its DICOMDIR if it has one), a DICOMDIR,
    a ZIP, or a single file."""
    if path.is_dir():
        dicomdir = _find_case_insensitive(path, ["DICOMDIR"])
        if dicomdir is not None and dicomdir.is_file():
            yield from _dicomdir_candidates(dicomdir)
            return
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                p = Path(root) / f
                rel = str(p.relative_to(path))
                if zipfile.is_zipfile(p):
                    yield from _zip_candidates(p, max_bytes, max_total, max_ratio)
                else:
                    yield _file_candidate(p, rel)
    elif path.name.upper() == "DICOMDIR":
        yield from _dicomdir_candidates(path)
    elif zipfile.is_zipfile(path):
        yield from _zip_candidates(path, max_bytes, max_total, max_ratio)
    else:
        yield _file_candidate(path, path.name)


class Progress:
    """A progress bar on a terminal; a line every tenth of the way otherwise."""

    def __init__(self, total: int, out: TextIO = sys.stderr):
        self.total, self.done, self.out = total, 0, out
        self.tty = out.isatty()
        self.started = time.monotonic()
        self._last_tenth = -1

    def step(self, nbytes: int) -> None:
        self.done += 1
        frac = self.done / self.total if self.total else 1.0
        if self.tty:
            bar = "#" * int(frac * 30)
            self.out.write(f"\r[{bar:<30}] {self.done}/{self.total} files")
            if self.done == self.total:
                self.out.write("\n")
            self.out.flush()
        elif int(frac * 10) > self._last_tenth:
            self._last_tenth = int(frac * 10)
            self.out.write(f"import: {self.done}/{self.total} files ({frac:.0%})\n")
            self.out.flush()


def run_import(
    store: Store,
    path: Path,
    max_bytes: int,
    max_total: int,
    max_ratio: int,
    progress_out: TextIO | None = sys.stderr,
    source: str = "",
) -> Summary:
    """Import everything under ``path``; never raises for a bad file, only reports it."""
    summary = Summary()
    todo = list(candidates(path, max_bytes, max_total, max_ratio))
    progress = Progress(len(todo), progress_out) if progress_out else None
    source = source or f"import:{path.name or path}"
    for i, c in enumerate(todo):
        try:
            if c.refused:
                raise InvalidInstance(c.refused)
            with c.open() as f:
                accepted = accept_file(store, f, c.size, source, max_bytes)
        except InvalidInstance as exc:
            summary.refused.append((c.name, exc.reason))
            log.warning("import refused %s: %s", c.name, exc.reason)
        except StoreFull as exc:
            summary.stopped = f"{exc} ({len(todo) - i} files not imported)"
            log.error("import stopped at %s: %s", c.name, exc)
            break
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            reason = f"cannot read: {exc}"
            summary.refused.append((c.name, reason))
            log.warning("import refused %s: %s", c.name, reason)
        else:
            summary.studies.add(accepted.info.study_uid)
            if accepted.outcome is Outcome.DUPLICATE:
                summary.already_there += 1
            else:
                summary.imported += 1
                summary.bytes_imported += accepted.size
                if accepted.outcome is Outcome.NEW_VERSION:
                    summary.new_versions += 1
        if progress:
            progress.step(c.size)
    return summary
