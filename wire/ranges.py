"""A set of chunk indexes kept as sorted half-open ranges: the compact form of an ack."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator

from wire.errors import RemoteProtocolError


class RangeSet:
    """Sorted, non-overlapping, non-adjacent ``[start, end)`` ranges of non-negative ints."""

    __slots__ = ("_r",)

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()):
        self._r: list[list[int]] = []
        for start, end in ranges:
            self.add_range(start, end)

    def add(self, i: int) -> bool:
        """Add one index; True if it was new."""
        if i in self:
            return False
        self.add_range(i, i + 1)
        return True

    def add_range(self, start: int, end: int) -> None:
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        if start == end:
            return
        out: list[list[int]] = []
        placed = False
        for s, e in self._r:
            if e < start:
                out.append([s, e])
            elif end < s:
                if not placed:
                    out.append([start, end])
                    placed = True
                out.append([s, e])
            else:
                start, end = min(s, start), max(e, end)
        if not placed:
            out.append([start, end])
        out.sort()
        self._r = out

    def discard(self, i: int) -> None:
        out: list[list[int]] = []
        for s, e in self._r:
            if s <= i < e:
                if s < i:
                    out.append([s, i])
                if i + 1 < e:
                    out.append([i + 1, e])
            else:
                out.append([s, e])
        self._r = out

    def __contains__(self, i: object) -> bool:
        if not isinstance(i, int):
            return False
        k = bisect_right(self._r, [i, float("inf")]) - 1
        return k >= 0 and self._r[k][0] <= i < self._r[k][1]

    def __len__(self) -> int:
        return sum(e - s for s, e in self._r)

    def __iter__(self) -> Iterator[int]:
        for s, e in self._r:
            yield from range(s, e)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self._r == other._r

    def __repr__(self) -> str:
        return f"RangeSet({self.to_json()})"

    def missing(self, count: int) -> Iterator[int]:
        """Indexes in ``range(count)`` not in the set, in order."""
        pos = 0
        for s, e in self._r:
            yield from range(pos, min(s, count))
            pos = max(pos, e)
        yield from range(pos, count)

    def to_json(self) -> list[list[int]]:
        return [list(r) for r in self._r]

    @classmethod
    def from_json(cls, data: object, limit: int) -> RangeSet:
        """Parse ranges from a peer; every index must be below ``limit``."""
        if not isinstance(data, list):
            raise RemoteProtocolError(f"ranges must be a list, got {type(data).__name__}")
        out = cls()
        for item in data:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
            ):
                raise RemoteProtocolError(f"bad range {item!r}: expected [start, end]")
            start, end = item
            if not 0 <= start < end <= limit:
                raise RemoteProtocolError(f"range {item!r} outside [0, {limit})")
            out.add_range(start, end)
        return out
