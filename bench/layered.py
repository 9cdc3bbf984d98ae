"""What the layered reversible JPEG 2000 preview costs and gives (issue 19), against
two separate codings (what the box did before): an irreversible JPEG 2000 preview,
then the lossless study as ``dicom-jxl`` records.

For every grayscale corpus image the default preview table gives a ratio (a
multi-frame image in a group of its own, each frame coded as the box codes it), and for
pylinac's head CT series on its own:
- two codings: the preview (9/7 wavelet, at the table's ratio) plus the whole lossless
  record (JPEG XL at effort 3, the box's fast setting, and 7, its slow-link one);
- layered (the box now): one 5/3 codestream of two layers, the first at the table's
  ratio. The preview is its first layer (``wire.layered.split``); the lossless
  transfer carries only the rest, and the far end joins them (checked: byte for byte).
Sizes are of pixel data only (the header goes the same way in both).

Printed per modality: bytes as a share of the lossless-only record (the issue's goal:
the lossless study no more than 10 % later with a preview than without), the
preview's share (goal: the whole preview in at most 0.4 of the lossless-only time),
and the two previews' mean absolute error in stored values (HU for CT).

    .venv/bin/python bench/layered.py [--limit N]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections import defaultdict
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.preview import code_layered  # noqa: E402
from common.ratios import parse_ratios, ratio_for  # noqa: E402
from devkit.corpus import corpus_files, head_ct_slices  # noqa: E402
from edge.config import PREVIEW_RATIOS  # noqa: E402
from wire import layered  # noqa: E402

KEYS = ("raw", "jxl3", "jxl7", "two", "first", "rest", "err97", "err53", "n", "t53", "t97")


def irreversible(image: np.ndarray, ratio: float) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG2000", no_jp2=True, irreversible=True,
                                quality_mode="rates", quality_layers=[ratio])  # fmt: skip
    return out.getvalue()


def images(limit: int) -> list[tuple[str, list[np.ndarray], float]]:
    table, out = parse_ratios(PREVIEW_RATIOS), []
    head = {str(p) for p in head_ct_slices()}
    for f in corpus_files():
        try:
            ds = pydicom.dcmread(f.path)
            modality = str(ds.get("Modality", ""))
            ratio = ratio_for(table, modality, str(ds.get("BodyPartExamined", "")))
            if ratio is None or int(ds.get("SamplesPerPixel", 1)) != 1:
                continue
            a = ds.pixel_array
        except Exception:  # noqa: BLE001, S112 - unreadable files are the corpus test's concern
            continue
        many = int(ds.get("NumberOfFrames", 1) or 1) > 1
        if a.ndim != (3 if many else 2) or a.nbytes < 128 * 1024:
            continue
        a = a.astype(np.int32) - int(a.min())
        a = a.astype(np.uint16 if a.max() > 255 else np.uint8)
        group = "CT head series" if str(f.path) in head else modality
        out.append((f"{group} multi-frame" if many else group, list(a) if many else [a], ratio))
    return out[:limit] if limit else out


def measure(frames: list[np.ndarray], ratio: float, t: dict[str, float]) -> None:
    t["n"] += 1
    for image in frames:
        _frame(image, ratio, t, len(frames))


def _frame(image: np.ndarray, ratio: float, t: dict[str, float], of: int) -> None:
    t["raw"] += image.nbytes
    for effort in (3, 7):
        t[f"jxl{effort}"] += len(imagecodecs.jpegxl_encode(image, lossless=True, effort=effort))
    s = time.perf_counter()
    two = irreversible(image, ratio)
    t["t97"] += time.perf_counter() - s
    t["two"] += len(two)
    s = time.perf_counter()
    codestream = code_layered(image, ratio)
    t["t53"] += time.perf_counter() - s
    first, rest = layered.split(codestream)
    if layered.join(first, rest) != codestream:
        raise AssertionError("the layers did not join back")
    t["first"] += len(first)
    t["rest"] += len(rest)
    for key, coded in (("err97", two), ("err53", first)):
        shown = imagecodecs.jpeg2k_decode(coded).astype(np.int32)
        t[key] += float(np.abs(shown - image).mean()) / of  # an image's mean


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=0, help="only the first N images")
    args = ap.parse_args()
    totals: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(KEYS, 0.0))
    for group, frames, ratio in images(args.limit):
        measure(frames, ratio, totals[group])
    print("shares of the lossless-only record (JPEG XL effort 3 / effort 7)")
    for group, t in sorted(totals.items()):
        n = t["n"]
        print(f"\n{group}: {n:.0f} images, lossless JPEG XL {t['raw'] / t['jxl3']:.2f}:1 "
              f"(effort 3) / {t['raw'] / t['jxl7']:.2f}:1 (effort 7)")  # fmt: skip
        for label, preview, extra in (
            ("two codings: 9/7 preview, then the whole study", t["two"], None),
            ("layered: 5/3 first layer, then the rest", t["first"], t["rest"]),
        ):
            shares = []
            for effort in (3, 7):
                lossless_only = t[f"jxl{effort}"]
                both = preview + (lossless_only if extra is None else extra)
                shares.append(f"{preview / lossless_only:.2f} / {both / lossless_only:.2f}")
            print(f"  {label}: preview / preview + lossless = {shares[0]} at effort 3, "
                  f"{shares[1]} at effort 7 (goals <= 0.40 / <= 1.10)")  # fmt: skip
        print(f"  preview mean abs error: 9/7 {t['err97'] / n:.2f}, 5/3 first layer "
              f"{t['err53'] / n:.2f}; coding {1000 * t['t97'] / n:.0f} / "
              f"{1000 * t['t53'] / n:.0f} ms per image")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
