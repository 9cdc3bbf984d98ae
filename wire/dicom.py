"""Just enough DICOM to find things in an instance without decoding it: the Part 10
meta header, and a walk over every element that proves the dataset is whole and notes
where chosen top-level elements are. Pure: bytes in, offsets out.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
PREAMBLE_AND_PREFIX = 132
MAX_META_BYTES = 64 * 1024
MAX_NESTING = 64

# explicit VRs with a 2-byte reserved field and a 4-byte length
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


class InvalidInstance(ValueError):
    """The bytes are not a whole, usable DICOM instance; ``reason`` says why for a person."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Meta:
    end: int  # offset of the first dataset byte in the file
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    implementation_class_uid: str = ""


def read_meta(head: bytes) -> Meta:
    """Parse the Part 10 preamble and file meta header at the start of ``head``.

    ``head`` must hold the whole header (the first 64 KiB of the file is plenty).
    """
    if len(head) < PREAMBLE_AND_PREFIX or head[128:132] != b"DICM":
        raise InvalidInstance(
            "no DICOM file meta header (no 'DICM' after the 128-byte preamble): "
            "not a DICOM Part 10 file"
        )
    pos = PREAMBLE_AND_PREFIX
    values: dict[int, bytes] = {}
    while True:
        if pos + 8 > len(head):
            if len(head) >= MAX_META_BYTES:
                raise InvalidInstance("file meta header is larger than 64 KiB")
            break  # header only, no dataset: check_structure says so
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", head, pos + 8) if pos + 12 <= len(head) else (-1,)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        if length < 0 or length == _UNDEFINED or start + length > len(head):
            raise InvalidInstance("file meta header is truncated or malformed")
        values[elem] = head[start : start + length]
        pos = start + length

    def text(elem: int) -> str:
        return values.get(elem, b"").rstrip(b"\x00 ").decode("ascii", "replace").strip()

    ts = text(0x0010)
    if not ts:
        raise InvalidInstance("file meta header has no Transfer Syntax UID (0002,0010)")
    return Meta(
        end=pos,
        transfer_syntax=ts,
        sop_class_uid=text(0x0002),
        sop_instance_uid=text(0x0003),
        implementation_class_uid=text(0x0012),
    )


@dataclass(frozen=True)
class Walked:
    """The walked dataset (inflated if it was deflated) and, for each wanted top-level
    tag found, its VR (empty when implicit), value offset and length in ``data``."""

    data: bytes | memoryview
    elements: dict[int, tuple[bytes, int, int]]

    def value(self, tag: int) -> bytes | None:
        found = self.elements.get(tag)
        return None if found is None else bytes(self.data[found[1] : found[1] + found[2]])


def check_structure(
    data: bytes | memoryview, transfer_syntax: str, limit: int, wanted: frozenset[int]
) -> Walked:
    """Walk every element of the dataset ``data`` and prove that it ends exactly where
    the bytes end: a truncated or garbled instance raises InvalidInstance.

    Values are skipped, not decoded, so this costs little even for large pixel data.
    """
    if transfer_syntax == DEFLATED_LE:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data, limit)
        except zlib.error as exc:
            raise InvalidInstance(f"deflated dataset does not inflate: {exc}") from exc
        if inflater.unconsumed_tail:
            raise InvalidInstance(f"deflated dataset inflates past {limit} bytes")
        if not inflater.eof:
            raise InvalidInstance("deflated dataset is truncated")
    if len(data) == 0:
        raise InvalidInstance("the dataset is empty")
    walker = _Walker(
        memoryview(data),
        implicit=transfer_syntax == IMPLICIT_VR_LE,
        little=transfer_syntax != EXPLICIT_VR_BE,
        wanted=wanted,
    )
    end = walker.dataset(0, len(data), depth=0, until_item_end=False, implicit=walker.implicit)
    if end != len(data):
        raise InvalidInstance(f"dataset ends at byte {end} of {len(data)}")
    return Walked(data, walker.found)


class _Walker:
    def __init__(self, buf: memoryview, implicit: bool, little: bool, wanted: frozenset[int]):
        self.buf = buf
        self.implicit = implicit
        self.e = "<" if little else ">"
        self.wanted = wanted
        self.found: dict[int, tuple[bytes, int, int]] = {}

    def _need(self, pos: int, n: int, end: int, what: str) -> None:
        if pos + n > end:
            raise InvalidInstance(
                f"dataset is truncated: {what} at byte {pos} needs {n} bytes, "
                f"only {max(end - pos, 0)} left"
            )

    def dataset(self, pos: int, end: int, depth: int, until_item_end: bool, implicit: bool) -> int:
        if depth > MAX_NESTING:
            raise InvalidInstance(f"sequences nested deeper than {MAX_NESTING} levels")
        buf, e = self.buf, self.e
        while pos < end:
            self._need(pos, 8, end, "element header")
            group, elem = struct.unpack_from(e + "HH", buf, pos)
            tag = (group << 16) | elem
            if tag == _ITEM_END and until_item_end:
                return pos + 8
            if group == 0xFFFE:
                raise InvalidInstance(f"unexpected delimiter ({group:04X},{elem:04X}) at {pos}")
            if implicit:
                (length,) = struct.unpack_from(e + "I", buf, pos + 4)
                vr = b""
                pos += 8
            else:
                vr = bytes(buf[pos + 4 : pos + 6])
                if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                    raise InvalidInstance(
                        f"element ({group:04X},{elem:04X}) at byte {pos} has no valid VR"
                    )
                if vr in _LONG_VRS:
                    self._need(pos, 12, end, "element header")
                    (length,) = struct.unpack_from(e + "I", buf, pos + 8)
                    pos += 12
                else:
                    (length,) = struct.unpack_from(e + "H", buf, pos + 6)
                    pos += 8
            if length == _UNDEFINED:
                # a sequence, encapsulated pixel data, or UN holding implicit-VR items
                pos = self.items(pos, end, depth + 1, implicit or vr == b"UN")
            else:
                self._need(pos, length, end, f"value of ({group:04X},{elem:04X})")
                if depth == 0 and tag in self.wanted:
                    self.found[tag] = (vr, pos, length)
                if vr == b"SQ" and length:
                    self.defined_sequence(pos, pos + length, depth + 1, implicit)
                pos += length
        if until_item_end:
            raise InvalidInstance("item has no item delimiter before the data ends")
        return pos

    def defined_sequence(self, pos: int, end: int, depth: int, implicit: bool) -> None:
        e = self.e
        while pos < end:
            self._need(pos, 8, end, "item header")
            group, elem, length = struct.unpack_from(e + "HHI", self.buf, pos)
            if (group << 16) | elem != _ITEM:
                raise InvalidInstance(f"expected an item in a sequence at byte {pos}")
            pos += 8
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, depth, until_item_end=True, implicit=implicit)
            else:
                self._need(pos, length, end, "item")
                self.dataset(pos, pos + length, depth, until_item_end=False, implicit=implicit)
                pos += length

    def items(self, pos: int, end: int, depth: int, implicit: bool) -> int:
        e = self.e
        while True:
            self._need(pos, 8, end, "item header")
            group, elem, length = struct.unpack_from(e + "HHI", self.buf, pos)
            tag = (group << 16) | elem
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise InvalidInstance(f"expected an item or sequence end at byte {pos - 8}")
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, depth, until_item_end=True, implicit=implicit)
            else:
                self._need(pos, length, end, "item")
                pos += length
