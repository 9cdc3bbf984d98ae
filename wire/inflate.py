"""zstd decoding with a ceiling: a small hostile record never inflates past the size
its instance declares."""

from __future__ import annotations

from collections.abc import Iterator

import zstandard


class Inflated(Exception):
    pass


class _Sink:
    def __init__(self, limit: int):
        self.limit, self.total = limit, 0
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.total += len(data)
        if self.total > self.limit:
            raise Inflated(self.total)
        self.parts.append(bytes(data))
        return len(data)


ZSTD_SLICE = 256  # compressed bytes per step: at most 64 blocks of 128 KiB out


class BoundedZstd:
    """zstd decoding that stops as soon as the output passes ``limit`` bytes (the
    instance's declared size): a small record made to inflate to gigabytes costs at
    most one output buffer more than the instance itself."""

    def __init__(self, limit: int):
        self._sink = _Sink(limit)
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            self._sink,  # type: ignore[arg-type]  # any object with write() serves
            write_size=1 << 17,
        )

    def pieces(self, data: bytes | memoryview) -> Iterator[bytes]:
        """The output of ``data``, fed ZSTD_SLICE bytes at a time: one slice inflates to
        at most a few MiB (a 4-byte block can stand for 128 KiB), so a small hostile
        record never sits in memory inflated whole."""
        view = memoryview(data)
        for start in range(0, len(view), ZSTD_SLICE):
            self._writer.write(view[start : start + ZSTD_SLICE])
            if self._sink.parts:
                out = b"".join(self._sink.parts)
                self._sink.parts.clear()
                yield out
