"""Writes that survive a power cut: temp file, fsync, rename, fsync of the folder."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(final: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to a temp file in ``tmp_dir``, fsync it, rename it to ``final``
    and fsync ``final``'s folder: afterwards the file is whole or absent."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{uuid.uuid4().hex}.part"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)
