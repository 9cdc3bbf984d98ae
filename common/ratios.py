"""The clinic's table of lossy-preview ratios (``sync.preview_ratios``): parsed once,
looked up per instance by modality and body part (common/preview.py)."""

from __future__ import annotations


def parse_ratios(items: list[str]) -> dict[str, float]:
    """``["CT=12", "CT CHEST=15"]`` as {"CT": 12.0, "CT CHEST": 15.0}; ValueError names
    the item that is not MODALITY[ BODYPART]=RATIO with a ratio from 2 to 100."""
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        words = key.split()
        try:
            ratio = float(value)
        except ValueError:
            ratio = 0.0
        if not sep or not 1 <= len(words) <= 2 or not 2 <= ratio <= 100:
            raise ValueError(f"{item!r} is not MODALITY[ BODYPART]=RATIO (CT HEAD=12)")
        out[" ".join(w.upper() for w in words)] = ratio
    return out


def ratio_for(ratios: dict[str, float], modality: str, body_part: str) -> float | None:
    """The table's ratio for the body part, else the modality's, else None."""
    modality, body_part = modality.strip().upper(), body_part.strip().upper()
    return ratios.get(f"{modality} {body_part}") or ratios.get(modality)
