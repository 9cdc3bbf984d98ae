"""What a printed report shows. cups-pdf's output is the page as printed, but CUPS's
PostScript step keeps each glyph's shape and drops its Unicode (the report's fonts are
embedded subsets, CID-keyed): text cannot be read back from it. So the text is read
from the PDF the hub made (the bytes the box printed), and the printed page must show
the same ink where that PDF has the words."""

from __future__ import annotations

import html
import re
import subprocess
from pathlib import Path

import numpy as np

DPI = 100
#: the share of ink (within a phrase's box) that may differ between the two renderings
#: of one page: seen from 0.002 to 0.026 for the same text, 0.1 for "(ID 8)" printed
#: where the copy has "(ID 7)", 1.0 for another line
TOLERANCE = 0.06
_WORD = re.compile(
    r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</word>'
)


def made(hub, printed: Path) -> Path:  # type: ignore[no-untyped-def]
    """The PDF the hub made for the report version that ``printed`` is a print of (the
    box got these bytes, checked by their SHA-256; cups-pdf names its file after the
    job: ``radsetu-report-<id>-v<n>``)."""
    m = re.search(r"radsetu-report-(\w+)-v(\d+)", printed.name)
    assert m, printed.name
    return Path(hub.data_dir) / "reports" / f"{m[1]}-v{m[2]}.pdf"


def raster(pdf: Path) -> np.ndarray:
    """Page 1 in grey, DPI dots per inch."""
    out = subprocess.run(["pdftoppm", "-r", str(DPI), "-gray", "-f", "1", "-l", "1", str(pdf)],
                         capture_output=True, check=True).stdout  # fmt: skip
    _magic, size, _max, pixels = out.split(b"\n", 3)
    w, h = map(int, size.split())
    return np.frombuffer(pixels, dtype=np.uint8)[: w * h].reshape(h, w)


def phrase_box(pdf: Path, phrase: str) -> tuple[float, float, float, float]:
    """The box (points) around ``phrase`` on page 1, found in the PDF's own text
    (spaces ignored: pdftotext may split an Indic syllable)."""
    xhtml = subprocess.run(["pdftotext", "-bbox", "-f", "1", "-l", "1", str(pdf), "-"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    words = [(html.unescape(m[5]), *map(float, m.groups()[:4])) for m in _WORD.finditer(xhtml)]
    joined, owner = "", []
    for n, (text, *_box) in enumerate(words):
        joined += text
        owner += [n] * len(text)
    want = "".join(phrase.split())
    at = joined.find(want)
    assert at >= 0, f"{phrase!r} is not in the box's copy of the report"
    used = [words[i] for i in sorted(set(owner[at : at + len(want)]))]
    return (min(w[1] for w in used), min(w[2] for w in used),
            max(w[3] for w in used), max(w[4] for w in used))  # fmt: skip


def _grow(ink: np.ndarray) -> np.ndarray:
    g = ink.copy()
    g[1:] |= ink[:-1]
    g[:-1] |= ink[1:]
    g[:, 1:] |= ink[:, :-1]
    g[:, :-1] |= ink[:, 1:]
    return g


def mismatch(printed: Path, original: Path, phrase: str) -> float:
    """The share of ink around ``phrase`` that one page has and the other has not
    (a pixel's neighbours count: the two renderings differ by a pixel here and there)."""
    x0, y0, x1, y1 = (int(round(v * DPI / 72)) for v in phrase_box(original, phrase))
    a, b = raster(printed), raster(original)
    assert a.shape == b.shape, "the printed page is not the report's page size"
    a, b = a[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] < 128, b[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] < 128
    differ = (a & ~_grow(b)).sum() + (b & ~_grow(a)).sum()
    return float(differ / max(a.sum() + b.sum(), 1))


def assert_printed(printed: Path, original: Path, *phrases: str) -> None:
    """The printed page shows each phrase where the box's copy has it."""
    for phrase in phrases:
        share = mismatch(printed, original, phrase)
        assert share < TOLERANCE, f"{phrase!r}: {share:.2f} of its ink differs on the print"
