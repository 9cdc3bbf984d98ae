"""Images for the viewer, rendered at the hub: one frame of an instance, windowed to
8 bits, as PNG. No plug-in in the browser.

Pixel data in a compressed transfer syntax is decoded with imagecodecs (JPEG
baseline/extended, JPEG lossless, JPEG-LS, JPEG 2000); RLE and the uncompressed ones
by pydicom. Windowing is the DICOM linear VOI function (PS3.3 C.11.2.1.2.1) applied
to the modality values (Rescale Slope/Intercept: Hounsfield units for CT).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
from pydicom.encaps import generate_frames

from common.dicomtext import dicom_text

# CT presets: (center, width) in HU
PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40, 80),
    "subdural": (75, 215),
    "lung": (-600, 1500),
    "bone": (400, 1800),
    "soft_tissue": (50, 400),
}

_DECODERS = {
    "1.2.840.10008.1.2.4.50": imagecodecs.jpeg8_decode,
    "1.2.840.10008.1.2.4.51": imagecodecs.jpeg8_decode,
    "1.2.840.10008.1.2.4.57": imagecodecs.ljpeg_decode,
    "1.2.840.10008.1.2.4.70": imagecodecs.ljpeg_decode,
    "1.2.840.10008.1.2.4.80": imagecodecs.jpegls_decode,
    "1.2.840.10008.1.2.4.81": imagecodecs.jpegls_decode,
    "1.2.840.10008.1.2.4.90": imagecodecs.jpeg2k_decode,
    "1.2.840.10008.1.2.4.91": imagecodecs.jpeg2k_decode,
}


class RenderError(Exception):
    """The image cannot be shown; the message says why."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    source: str  # "preset brain", "dataset", "auto"


def frame_count(ds: pydicom.Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def stored_frame(ds: pydicom.Dataset, frame: int) -> np.ndarray:
    """The stored values of one frame (rows x columns, or x samples for colour)."""
    n = frame_count(ds)
    if not 0 <= frame < n:
        raise RenderError(f"frame {frame} outside 0..{n - 1}")
    if "PixelData" not in ds:
        raise RenderError("the instance has no pixel data (a report or a structured document?)")
    ts = str(ds.file_meta.TransferSyntaxUID)
    decode = _DECODERS.get(ts)
    if decode is None:
        try:
            arr = ds.pixel_array
        except Exception as exc:  # pydicom names what it cannot do
            raise RenderError(f"cannot decode pixel data in {ts}: {exc}") from exc
        return np.asarray(arr[frame] if n > 1 else arr)
    for i, data in enumerate(generate_frames(ds.PixelData, number_of_frames=n)):
        if i == frame:
            arr = np.asarray(decode(data))
            if int(ds.get("PixelRepresentation", 0)) == 1 and arr.dtype.kind == "u":
                arr = arr.astype(arr.dtype.str.replace("u", "i"))
            return arr
    raise RenderError(f"frame {frame} is missing from the encapsulated pixel data")


def modality_values(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return stored.astype(np.float64) * slope + intercept


def choose_window(ds: pydicom.Dataset, values: np.ndarray, preset: str | None) -> Window:
    if preset:
        if preset not in PRESETS:
            raise RenderError(f"unknown preset {preset!r}; one of {', '.join(PRESETS)}")
        c, w = PRESETS[preset]
        return Window(c, w, f"preset {preset}")
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is not None and w is not None:
        c = c[0] if isinstance(c, pydicom.multival.MultiValue) else c
        w = w[0] if isinstance(w, pydicom.multival.MultiValue) else w
        if float(w) >= 1:
            return Window(float(c), float(w), "dataset")
    lo, hi = np.percentile(values, [0.5, 99.5])  # CR, DX, MR: what the image holds
    return Window((lo + hi) / 2, max(hi - lo, 1.0), "auto")


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """The DICOM linear VOI function to 0..255."""
    c, w = window.center, window.width
    if w <= 1:
        return np.where(values <= c - 0.5, 0, 255).astype(np.uint8)
    y = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def picture(
    ds: pydicom.Dataset, frame: int = 0, preset: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """One frame windowed to 8 bits (colour as it is), and what was done."""
    stored = stored_frame(ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if stored.ndim == 3:  # colour: shown as it is
        img = stored.astype(np.uint8) if stored.dtype != np.uint8 else stored
        info: dict[str, Any] = {"window": None}
    else:
        values = modality_values(ds, stored)
        window = choose_window(ds, values, preset)
        img = apply_window(values, window)
        if photometric == "MONOCHROME1":
            img = 255 - img
        info = {"window": {"center": window.center, "width": window.width, "source": window.source}}
    info.update(
        {"frame": frame, "frames": frame_count(ds), "rows": img.shape[0], "columns": img.shape[1]}
    )
    return np.ascontiguousarray(img), info


def render(path: Path, frame: int = 0, preset: str | None = None) -> tuple[bytes, dict[str, Any]]:
    """PNG bytes of one frame, and what was done (window, size)."""
    img, info = picture(pydicom.dcmread(path), frame, preset)
    return bytes(imagecodecs.png_encode(img)), info


KEY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
    "BodyPartExamined",
    "SliceThickness",
    "KVP",
    "Rows",
    "Columns",
    "PixelSpacing",
    "NumberOfFrames",
    "PhotometricInterpretation",
)


def key_tags(path: Path) -> dict[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {k: dicom_text(ds.get(k)) for k in KEY_TAGS if k in ds}
