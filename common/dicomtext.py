"""DICOM values as text for pages and APIs, the way DICOM itself writes them."""

from __future__ import annotations

from typing import Any

from pydicom.multival import MultiValue


def dicom_text(value: Any) -> str:
    """A value as DICOM writes it: the values of a multi-valued element joined by a
    backslash (``PR\\US``), a person name in its DICOM form (``Family^Given``, groups
    joined by ``=``), numbers as they print; None as an empty string. Never the text of
    a Python list."""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(dicom_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)
