"""How far a lossy preview is from the original, per modality, on every corpus image the
clinic's ratio table previews (issue 19's third point).

For each image: the preview exactly as the box makes it (common/preview.py: JPEG 2000
through OpenJPEG, rate-controlled to the table's ratio for the modality and body part,
the codec the Canadian Association of Radiologists' reader study used), and, beside
it, JPEG XL at the same achieved ratio (libjxl through imagecodecs, its distance
searched until the ratio is met), the codec considered instead.

Errors are in the modality's units after the rescale (HU for CT; stored values
elsewhere): the largest and the mean absolute error; and PSNR over the clinical
window, the image's own Window Center/Width when it has one, else CT brain (40/80)
for a head and CT soft tissue (40/400) otherwise, else the image's whole range.

    .venv/bin/python bench/preview_quality.py [--limit N]

Prints one line per modality and codec: images, ratio, median and worst of the
largest error, mean of the mean error, median and lowest PSNR, and the box's coding
time. Anchor: lossless is 0 error (infinite PSNR); the CAR study found these ratios
diagnostically acceptable for JPEG 2000 and JPEG.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import preview  # noqa: E402
from common.ratios import parse_ratios  # noqa: E402
from devkit.corpus import corpus_files  # noqa: E402
from edge.config import PREVIEW_RATIOS  # noqa: E402


def modality_values(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    return pixels.astype(np.float64) * slope + float(getattr(ds, "RescaleIntercept", 0) or 0)


def window(ds: pydicom.Dataset, values: np.ndarray) -> tuple[float, float]:
    def first(v: object) -> float:
        return float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)  # type: ignore[index]

    try:
        if "WindowCenter" in ds and "WindowWidth" in ds and first(ds.WindowWidth) > 1:
            return first(ds.WindowCenter), first(ds.WindowWidth)
    except (TypeError, ValueError):
        pass
    if ds.get("Modality") == "CT":
        head = str(ds.get("BodyPartExamined", "")).upper() in ("HEAD", "BRAIN")
        return (40.0, 80.0) if head else (40.0, 400.0)
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0)


def psnr(a: np.ndarray, b: np.ndarray, centre: float, width: float) -> float:
    def shown(v: np.ndarray) -> np.ndarray:
        return np.clip((v - (centre - width / 2)) / width, 0, 1) * 255

    mse = float(np.mean((shown(a) - shown(b)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def jxl_at(frames: np.ndarray, target: float) -> np.ndarray:
    """JPEG XL at the largest distance whose ratio stays at or under ``target``."""
    low = int(frames.min())
    shifted = (frames.astype(np.int64) - low).astype(np.uint16)
    bits = max(8, int(shifted.max()).bit_length())
    best, lo, hi = None, 0.01, 25.0
    for _ in range(14):
        d = (lo * hi) ** 0.5
        coded = [imagecodecs.jpegxl_encode(f, distance=d, effort=3, bitspersample=bits)
                 for f in shifted]  # fmt: skip
        if frames.nbytes / sum(map(len, coded)) <= target:
            best, lo = coded, d
        else:
            hi = d
    if best is None:
        raise ValueError("JPEG XL cannot reach the ratio")
    return np.stack([imagecodecs.jpegxl_decode(c) for c in best]).astype(np.int64) + low


def measure(path: Path, table: dict[str, float]) -> tuple[str, dict[str, tuple]] | None:  # type: ignore[type-arg]
    data = path.read_bytes()
    t = time.perf_counter()
    try:
        made = preview.make(data, table)
    except preview.NoPreview:
        return None
    took = time.perf_counter() - t
    ds0 = pydicom.dcmread(io.BytesIO(data))
    ds1 = pydicom.dcmread(io.BytesIO(made.data))
    frames0 = ds0.pixel_array.reshape((-1, int(ds0.Rows), int(ds0.Columns)))
    original = modality_values(ds0, frames0)
    centre, width = window(ds0, original)
    out: dict[str, tuple] = {}  # type: ignore[type-arg]
    codecs = [("JPEG 2000 (preview)", modality_values(ds1, ds1.pixel_array.reshape(frames0.shape)))]
    try:
        codecs.append(("JPEG XL", modality_values(ds0, jxl_at(frames0, made.ratio))))
    except Exception as exc:  # noqa: BLE001 - counted: libjxl refuses some images
        print(f"  {path.name}: JPEG XL failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    for name, shown in codecs:
        err = np.abs(shown - original)
        out[name] = (made.ratio, float(err.max()), float(err.mean()),
                     psnr(original, shown, centre, width), took)  # fmt: skip
    return str(ds0.Modality), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=0, help="at most N images (0: all)")
    args = ap.parse_args()
    table = parse_ratios(PREVIEW_RATIOS)
    results: dict[tuple[str, str], list[tuple]] = defaultdict(list)  # type: ignore[type-arg]
    seen = skipped = 0
    for cf in corpus_files():
        try:
            got = measure(cf.path, table)
        except Exception as exc:  # noqa: BLE001 - an odd file is counted, never fatal
            print(f"  {cf.path.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            got = None
        seen += 1
        if got is None:
            skipped += 1
            continue
        modality, per_codec = got
        for codec, figures in per_codec.items():
            results[(modality, codec)].append(figures)
        if args.limit and len(results) and sum(map(len, results.values())) >= 2 * args.limit:
            break
    print(f"{seen} corpus files; {seen - skipped} previewed, {skipped} not (no pixel data, "
          "colour, under 128 KiB of pixels, or a modality without a ratio)")  # fmt: skip
    print(f"{'modality':<8} {'codec':<20} {'images':>6} {'ratio':>6} {'max err med':>11} "
          f"{'worst':>7} {'mean err':>8} {'PSNR med':>8} {'min':>5} {'ms/image':>8}")  # fmt: skip
    for (modality, codec), rows in sorted(results.items()):
        ratios, maxes, means, psnrs, secs = zip(*rows, strict=True)
        print(f"{modality:<8} {codec:<20} {len(rows):>6} {statistics.median(ratios):>6.1f} "
              f"{statistics.median(maxes):>11.0f} {max(maxes):>7.0f} "
              f"{statistics.mean(means):>8.2f} {statistics.median(psnrs):>8.1f} "
              f"{min(psnrs):>5.1f} {statistics.median(secs) * 1000:>8.0f}")  # fmt: skip
    print("Errors in HU for CT, stored values elsewhere; PSNR over the clinical window. "
          "ms/image: the box's preview (JPEG 2000) on this machine, for both rows.")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
