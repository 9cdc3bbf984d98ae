"""The report as a PDF, in the scripts the clinic's patients are named in.

fpdf2 lays the text out and shapes it with HarfBuzz (uharfbuzz), so Devanagari and
Kannada print with their conjuncts and vowel signs in place beside Latin. The fonts
are Noto's, from Debian's ``fonts-noto-core``: Noto Sans for Latin and the rest, Noto
Sans Devanagari and Noto Sans Kannada for their scripts. Each line is cut into runs
of one script, each written in its font (fpdf2's own fallback fonts, with shaping on,
were seen to print the Latin that follows a Devanagari line with the wrong glyphs).
Only the glyphs used are embedded (a subset of each font).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fpdf import FPDF

from hub.errors import HubError

#: where Debian's fonts-noto-core puts the fonts
FONT_DIR = Path("/usr/share/fonts/truetype/noto")
FONTS = ("NotoSans", "NotoSansDevanagari", "NotoSansKannada")
#: a run of one Indic script, with the spaces, joiners and dandas inside it
_RUN = re.compile(
    r"([\u0900-\u097F\uA8E0-\uA8FF\u200C\u200D]+(?:\s+[\u0900-\u097F\uA8E0-\uA8FF\u200C\u200D]+)*)"
    r"|([\u0C80-\u0CFF\u200C\u200D]+(?:\s+[\u0C80-\u0CFF\u200C\u200D]+)*)"
)
SIZES = {"title": 16.0, "heading": 11.0, "line": 10.0, "para": 10.0}


def _fonts(pdf: Any) -> None:
    missing = [
        f"{file}-{style}.ttf"
        for file in FONTS
        for style in ("Regular", "Bold")
        if not (FONT_DIR / f"{file}-{style}.ttf").is_file()
    ]
    if missing:
        raise HubError(
            f"the report's fonts are missing from {FONT_DIR} ({', '.join(missing)}): "
            "install Debian's fonts-noto-core",
            500,
        )
    for family in FONTS:
        pdf.add_font(family, "", str(FONT_DIR / f"{family}-Regular.ttf"))
        pdf.add_font(family, "B", str(FONT_DIR / f"{family}-Bold.ttf"))
    pdf.set_text_shaping(True)


def runs(line: str) -> list[tuple[str, str]]:
    """(font family, text) for each run of one script in ``line``."""
    out, pos = [], 0
    for m in _RUN.finditer(line):
        if m.start() > pos:
            out.append(("NotoSans", line[pos : m.start()]))
        out.append(("NotoSansDevanagari" if m.group(1) else "NotoSansKannada", m.group(0)))
        pos = m.end()
    if pos < len(line):
        out.append(("NotoSans", line[pos:]))
    return out


def render(blocks: list[tuple[str, str]], title: str = "") -> bytes:
    """An A4 PDF from blocks of (kind, text); kind is ``title``, ``heading``, ``line``
    (one line, wrapped if it must be) or ``para`` (a paragraph, its line breaks
    kept)."""
    pdf = FPDF(format="A4", unit="pt")
    pdf.set_margins(56, 56)
    pdf.set_auto_page_break(True, margin=56)
    pdf.set_title(title)
    pdf.set_creator("RadSetu")
    _fonts(pdf)
    pdf.add_page()
    for kind, text in blocks:
        size = SIZES.get(kind, 10.0)
        style = "B" if kind in ("title", "heading") else ""
        height = size * 1.45
        if kind == "heading":
            pdf.ln(8)
        for line in text.splitlines() or [""]:
            for family, part in runs(line):
                pdf.set_font(family, style, size)
                pdf.write(height, part)
            pdf.ln(height)
        if kind == "title":
            pdf.ln(6)
    return bytes(pdf.output())
