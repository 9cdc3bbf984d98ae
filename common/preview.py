"""The lossy preview of an instance: its pixels as JPEG 2000 at a set compression
ratio, marked lossy, everything else as it was.

A STAT study's preview crosses the link first so that a radiologist can start reading
while the lossless study follows (docs/preview.md). The ratio is the largest the
clinic's table allows for the modality and body part (``sync.preview_ratios``, after
the Canadian Association of Radiologists' standard for irreversible compression); an
instance whose modality the table does not name gets no preview and simply waits for
the lossless transfer.

JPEG 2000 (OpenJPEG, through Pillow) hits a requested ratio in one pass, which a
quality-driven coder cannot; every viewer reads it. ``bench/preview_quality.py``
measures its error beside JPEG XL at the same ratio.

Each frame is coded once, reversibly (the 5/3 wavelet), in two quality layers: the
first, at the table's ratio, is the preview; the second completes it to lossless.
The completion of every frame is kept as a ``dicom-j2k-rest`` record
(``wire.layered``), which the lossless transfer sends instead of the whole image:
the hub joins it to the preview it holds and gets the original file back, byte for
byte. ``bench/layered.py`` measures what that saves.

Only grayscale images are previewed. A signed image is shifted to unsigned (Pillow
codes 16-bit unsigned samples) and its Rescale Intercept moved by the same amount, so
every modality value (HU for CT) is unchanged; a signed image without a rescale is
left to the lossless transfer.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000

from common.ratios import ratio_for
from wire import layered

METHOD = "ISO_15444_1"  # DICOM's defined term for JPEG 2000 (PS3.3 C.7.6.1.1.5)
MAX_PREVIEW_PIXELS = 32 * 1024 * 1024  # samples (a box's memory): more go lossless only
MIN_PREVIEW_BYTES = 128 * 1024  # smaller pixel data gains little and codes badly
# A preview of more than this share of its image's lossless coding brings reading little
# sooner (the lossless record the box would send instead is often smaller still), and
# the lossless study comes later by all of it: such an image goes lossless only
MAX_PREVIEW_SHARE = 0.75


class NoPreview(Exception):
    """The instance gets no preview (the reason says why); it is not a fault."""


@dataclass(frozen=True)
class Preview:
    data: bytes  # the preview's Part 10 file
    ratio: float  # what the pixel data was compressed by
    rest: bytes | None = None  # the dicom-j2k-rest record back to the original, if any


def _frames(ds: pydicom.Dataset) -> np.ndarray:
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise NoPreview("not a grayscale image")
    if int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "NumberOfFrames", 1) or 1) > (
        MAX_PREVIEW_PIXELS
    ):
        raise NoPreview("too many pixels")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - a codec's boundary: no preview, no fault
        raise NoPreview(f"pixel data does not decode: {exc}") from exc
    return pixels.reshape((-1, int(ds.Rows), int(ds.Columns)))


def _unsigned(ds: pydicom.Dataset, frames: np.ndarray) -> tuple[np.ndarray, int]:
    """The samples as unsigned words, moving the Rescale Intercept with them, and what
    was taken from each."""
    if frames.dtype.kind == "u":
        return frames.astype(np.uint16 if frames.dtype.itemsize > 1 else np.uint8), 0
    if "RescaleIntercept" not in ds:
        raise NoPreview("signed samples without a rescale")
    low = int(frames.min())
    shifted = frames.astype(np.int32) - low
    if int(shifted.max()) > 0xFFFF:
        raise NoPreview("samples span more than 16 bits")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    ds.RescaleIntercept = f"{float(ds.RescaleIntercept) + slope * low:.6g}"
    if "PixelPaddingValue" in ds:
        padding = int(ds.PixelPaddingValue) - low
        if 0 <= padding <= 0xFFFF:
            ds.PixelPaddingValue = padding
        else:
            del ds.PixelPaddingValue
    return shifted.astype(np.uint16), low


def _code(frames: np.ndarray, ratio: float) -> list[tuple[bytes, bytes]]:
    """(preview, rest) codestreams of each frame, the preview at ``ratio``."""
    return [layered.split(code_layered(frame, ratio)) for frame in frames]


def code_layered(frame: np.ndarray, ratio: float) -> bytes:
    """A frame as reversible JPEG 2000 in two quality layers, the first at ``ratio``
    and the second lossless, layer first and with packet lengths: what
    ``wire.layered.split`` cuts into a preview and its rest."""
    out = io.BytesIO()
    Image.fromarray(frame).save(
        out,
        format="JPEG2000",
        no_jp2=True,
        irreversible=False,  # the 5/3 wavelet: integers only, lossless at the end
        quality_mode="rates",
        quality_layers=[ratio, 0],  # 0: the last layer is lossless
        progression="LRCP",
        plt=True,
    )
    return out.getvalue()


def make(data: bytes, ratios: dict[str, float], level: int = 3) -> Preview:
    """The preview of a Part 10 file, or NoPreview. The SOP Instance UID stays: the
    lossless instance replaces its preview at the hub under the same UID."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - anything unreadable simply goes lossless
        raise NoPreview(f"not readable: {exc}") from exc
    if "PixelData" not in ds or "Rows" not in ds:
        raise NoPreview("no pixel data")
    ratio = ratio_for(
        ratios, str(getattr(ds, "Modality", "")), str(getattr(ds, "BodyPartExamined", ""))
    )
    if ratio is None:
        raise NoPreview(f"no ratio for modality {getattr(ds, 'Modality', '')!r}")
    frames = _frames(ds)
    if frames.nbytes < MIN_PREVIEW_BYTES:
        raise NoPreview("small enough to wait for the lossless transfer")
    frames, low = _unsigned(ds, frames)
    raw = frames.nbytes
    coded, target, got = [], ratio * 0.99, 0.0  # OpenJPEG lands up to ~1 % past its rate
    for _ in range(3):  # never past the table's ratio
        coded = _code(frames, target)
        got = raw / max(1, sum(len(c) for c, _ in coded))
        if got <= ratio:
            break
        target *= ratio / got * 0.99
    else:  # the coder had nothing more to give: the image codes losslessly within it
        raise NoPreview(f"codes at {got:.1f}:1 losslessly, within the ratio")
    share = sum(len(c) for c, _ in coded) / sum(len(c) + len(r) for c, r in coded)
    if share > MAX_PREVIEW_SHARE:
        raise NoPreview(f"a preview would be {share:.0%} of its lossless coding")
    bits = 16 if frames.dtype == np.uint16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    _mark_lossy(ds, got)
    ds.PixelData = encapsulate([c for c, _ in coded])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000
    out = io.BytesIO()
    # as Explicit VR Little Endian, whatever the original was (big-endian files too)
    ds.preamble = b"\0" * 128
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    made = out.getvalue()
    # None when the record would not rebuild this very file
    rest = layered.rest_record(data, held_of(made), [r for _, r in coded], low, level)
    return Preview(made, got, rest)


def _mark_lossy(ds: pydicom.Dataset, ratio: float) -> None:
    """Lossy Image Compression 01, with this ratio and method after any earlier ones."""
    earlier = ds.get("LossyImageCompression") == "01"
    ratios, methods = [], []
    if earlier:
        ratios = [str(r) for r in _values(ds.get("LossyImageCompressionRatio"))]
        methods = [str(m) for m in _values(ds.get("LossyImageCompressionMethod"))]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"]
    ds.LossyImageCompressionMethod = [*methods, METHOD]


def _values(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def held_of(data: bytes) -> layered.Held:
    """A preview file as a ``dicom-j2k-rest`` record takes it: its codestreams (one a
    frame) and the bytes before the first. The box and the hub both call this on the
    same file. Raises ValueError as ``codestreams_of`` does."""
    frames = codestreams_of(data)
    if len(frames) == 1:
        return layered.Held(frames[0], data[: data.rfind(frames[0])])
    return layered.Held(frames[0], data[: data.find(frames[0])], tuple(frames))


def codestreams_of(data: bytes) -> list[bytes]:
    """The JPEG 2000 codestream of each frame of a preview file (what a
    ``dicom-j2k-rest`` record completes). Raises ValueError for anything else."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if ds.file_meta.TransferSyntaxUID != JPEG2000:
            raise ValueError("not a JPEG 2000 preview")
        count = int(getattr(ds, "NumberOfFrames", 1) or 1)
        frames = list(generate_frames(ds.PixelData, number_of_frames=count))
        if len(frames) != count:
            raise ValueError(f"{len(frames)} frames where the preview says {count}")
        # a fragment is of even length: an odd codestream got a pad byte after its EOC
        return [f[:-1] if f.endswith(b"\xff\xd9\x00") else f for f in frames]
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises on a bad file
        raise ValueError(f"preview does not read: {exc}") from exc
