"""The width and height a JPEG XL image declares, read from its first bytes without
decoding it (ISO/IEC 18181-1: the container's boxes, then the codestream's SizeHeader).

A decoder allocates what the image declares before it looks at anything else; a
record that says 512 x 512 in our header but 60000 x 60000 in its codestream must be
refused before it reaches the decoder.
"""

from __future__ import annotations

import struct

from wire.errors import RemoteProtocolError

SIGNATURE = b"\xff\x0a"  # a bare codestream
CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"


class _Bits:
    """The codestream's bits, least significant first."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        value = 0
        for i in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise RemoteProtocolError("JPEG XL size header runs past its bytes")
            value |= ((self.data[byte] >> (self.pos & 7)) & 1) << i
            self.pos += 1
        return value

    def size(self) -> int:
        """U32(1 + u(9), 1 + u(13), 1 + u(18), 1 + u(30))."""
        return 1 + self.u((9, 13, 18, 30)[self.u(2)])


_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def _codestream(data: bytes) -> bytes:
    if data.startswith(SIGNATURE):
        return data
    if not data.startswith(CONTAINER):
        raise RemoteProtocolError("not a JPEG XL image")
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            if pos + 16 > len(data):
                break
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            head = 16
        body = data[pos + head : pos + size if size else len(data)]
        if kind == b"jxlc":
            return body
        if kind == b"jxlp":
            return body[4:]  # a part's index, then the codestream's first bytes
        if size < head:
            break
        pos += size
    raise RemoteProtocolError("JPEG XL container without a codestream")


def jxl_size(data: bytes) -> tuple[int, int]:
    """(width, height) the image declares."""
    code = _codestream(data[: 1 << 16])
    if not code.startswith(SIGNATURE):
        raise RemoteProtocolError("JPEG XL codestream without its signature")
    bits = _Bits(code[2:])
    if bits.u(1):  # small
        height = (bits.u(5) + 1) * 8
    else:
        height = bits.size()
    ratio = bits.u(3)
    if ratio:
        num, den = _RATIOS[ratio]
        width = height * num // den
    elif code[2] & 1:  # small again
        width = (bits.u(5) + 1) * 8
    else:
        width = bits.size()
    return width, height
