"""An instance on its way into the store: a temp file written, hashed as it grows,
fsynced when closed."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# fsync releases the GIL: the disk flush runs while the caller hashes the same file
_FSYNC_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fsync")


class TempFile:
    """A file being written in the store's ``tmp/``: hashes as it goes, fsyncs on close.

    ``dataset_offset`` is where the dataset starts (after the file meta header); the
    dataset's own SHA-256 is taken from there on, so that the same dataset under two
    different meta headers is recognised as the same instance.
    """

    def __init__(self, path: Path, dataset_offset: int | None = None, create: bool = True):
        self.path = path
        self.size = 0
        self.dataset_offset = dataset_offset
        self._sha = hashlib.sha256()
        self._dsha = hashlib.sha256()
        self._f = open(path, "wb") if create else None  # noqa: SIM115 - closed in close()

    @classmethod
    def adopt(cls, path: Path, dataset_offset: int) -> TempFile:
        """Take over a complete file already written in the store's ``tmp/`` (by the
        DICOM receiver): hash it and fsync it, without copying it."""
        temp = cls(path, dataset_offset, create=False)
        with open(path, "rb") as f:
            # the disk flush and the hashing overlap: both release the GIL
            flushed = _FSYNC_POOL.submit(os.fsync, f.fileno())
            while block := f.read(1 << 20):
                temp._update(memoryview(block))
            flushed.result()
        return temp

    def write(self, data: bytes | memoryview) -> None:
        data = memoryview(data)  # slicing below must not copy
        assert self._f is not None, "write() on an adopted file"
        self._f.write(data)
        self._update(data)

    def _update(self, data: memoryview) -> None:
        self._sha.update(data)
        start, end = self.size, self.size + len(data)
        off = self.dataset_offset
        if off is not None and end > off:
            self._dsha.update(data[max(off - start, 0) :] if start < off else data)
        self.size = end

    def close(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def discard(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def dataset_sha256(self) -> str:
        return self._dsha.hexdigest()
