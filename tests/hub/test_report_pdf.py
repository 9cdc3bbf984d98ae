"""The report's PDF in the clinic's scripts (hub/pdf.py): Devanagari and Kannada beside
Latin, shaped, in embedded subsets of the Noto fonts; poppler's tools read it back."""

from __future__ import annotations

import subprocess

import pytest

from hub import pdf
from hub.errors import HubError
from tests.conftest import need

KANNADA = "ಶ್ರೀನಿವಾಸ ಕುಲಕರ್ಣಿ"
DEVANAGARI = "प्रियंका शर्मा ने क्षेत्र में"
BLOCKS = [
    ("title", "Radiology report"),
    ("line", f"Patient: {KANNADA} (ID 7)"),
    ("heading", "Findings"),
    # Latin after a Devanagari line in one paragraph: fpdf2's own fallback fonts printed
    # this second line with the wrong glyphs
    ("para", f"{DEVANAGARI}।\nRight lower lobe consolidation. " + "More words. " * 40),
    ("heading", "Impression"),
    ("para", f"{KANNADA} and {DEVANAGARI}, mixed on one line."),
]


def poppler(tool: str, data: bytes, tmp_path) -> str:  # type: ignore[no-untyped-def]
    f = tmp_path / "report.pdf"
    f.write_bytes(data)
    return subprocess.run([need(tool), str(f), *(["-"] if tool == "pdftotext" else [])],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


def test_indic_scripts_beside_latin_come_back_as_written(tmp_path):
    data = pdf.render(BLOCKS, title="t")
    fonts = poppler("pdffonts", data, tmp_path)
    embedded = {line.split()[0].split("+", 1)[1]: line.split()[-5:-2]
                for line in fonts.splitlines()[2:]}  # fmt: skip
    assert set(embedded) == {"NotoSans", "NotoSansBold", "NotoSansDevanagari",
                             "NotoSansKannada"}  # fmt: skip
    assert all(flags == ["yes", "yes", "yes"] for flags in embedded.values()), fonts
    # pdftotext may put a space inside a syllable whose vowel sign is drawn first
    text = "".join(poppler("pdftotext", data, tmp_path).split())
    for words in (KANNADA, DEVANAGARI, "Rightlowerlobeconsolidation.", "Moreword"):
        assert "".join(words.split()) in text
    assert text.count("Morewords.") == 40


def test_text_is_cut_into_runs_of_one_script():
    assert pdf.runs(f"Patient: {KANNADA} (ID 7) {DEVANAGARI}") == [
        ("NotoSans", "Patient: "),
        ("NotoSansKannada", KANNADA),
        ("NotoSans", " (ID 7) "),
        ("NotoSansDevanagari", DEVANAGARI),
    ]


def test_missing_fonts_say_which_package(tmp_path, monkeypatch):
    monkeypatch.setattr(pdf, "FONT_DIR", tmp_path)
    with pytest.raises(HubError, match="fonts-noto-core"):
        pdf.render(BLOCKS)
