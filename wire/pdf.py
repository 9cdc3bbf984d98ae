"""A small PDF writer for reports: text on A4 pages in Helvetica. Pure.

Enough for a radiology report (title, labelled lines, wrapped paragraphs), with no
dependency. Text is encoded as WinAnsi (Latin-1 for our purposes); characters outside
it print as ``?``.
"""

from __future__ import annotations

import textwrap

PAGE_W, PAGE_H = 595, 842  # A4 in points
MARGIN = 56
LEADING = 14
WRAP = 88  # characters of 10 pt Helvetica across the text width, roughly


def _escape(text: str) -> bytes:
    raw = text.encode("cp1252", errors="replace")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def layout(blocks: list[tuple[str, str]]) -> list[list[tuple[str, float, str]]]:
    """Pages of (font, size, line) from blocks of (kind, text); kind is ``title``,
    ``heading``, ``line`` (one line) or ``para`` (wrapped)."""
    pages: list[list[tuple[str, float, str]]] = [[]]
    room = (PAGE_H - 2 * MARGIN) // LEADING
    for kind, text in blocks:
        if kind == "title":
            lines = [("F2", 16.0, text), ("F1", 10.0, "")]
        elif kind == "heading":
            lines = [("F1", 10.0, ""), ("F2", 11.0, text)]
        elif kind == "para":
            lines = []
            for para in text.splitlines() or [""]:
                lines += [("F1", 10.0, w) for w in (textwrap.wrap(para, WRAP) or [""])]
        else:
            lines = [("F1", 10.0, text)]
        for line in lines:
            if len(pages[-1]) >= room:
                pages.append([])
            pages[-1].append(line)
    return pages


def render(blocks: list[tuple[str, str]], title: str = "Report") -> bytes:
    """The PDF's bytes."""
    pages = layout(blocks)
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    add(b"")  # 1: catalog, filled in below
    add(b"")  # 2: pages
    f1 = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    f2 = add(
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>"
    )
    kids = []
    for n, lines in enumerate(pages):
        ops = [b"BT", f"{MARGIN} {PAGE_H - MARGIN} Td".encode(), f"{LEADING} TL".encode()]
        for font, size, text in lines:
            ops.append(f"/{font} {size:g} Tf".encode())
            ops.append(b"(" + _escape(text) + b") Tj T*")
        ops.append(b"ET")
        footer = f"{title} - page {n + 1} of {len(pages)}"
        ops += [b"BT /F1 8 Tf", f"{MARGIN} {MARGIN // 2} Td".encode()]
        ops += [b"(" + _escape(footer) + b") Tj", b"ET"]
        stream = b"\n".join(ops)
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        kids.append(
            add(
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] " % (PAGE_W, PAGE_H)
                + b"/Resources << /Font << /F1 %d 0 R /F2 %d 0 R >> >> " % (f1, f2)
                + b"/Contents %d 0 R >>" % content
            )
        )
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = (
        b"<< /Type /Pages /Kids ["
        + b" ".join(b"%d 0 R" % k for k in kids)
        + b"] /Count %d >>" % len(kids)
    )
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
