"""Peak memory of `radsetu pack` and `radsetu unpack` on a study of >= 1 GB.

The study is made for the run from one real CT slice (pydicom-data 693_UNCI.dcm,
0.5 MB) replicated with new UIDs (2,000 instances, about 1.05 GB) in a temporary
folder, then packed with the default codec (dicom-jxl, effort 3) and unpacked, each
in its own process, whose peak RSS is read from the kernel.

    .venv/bin/python bench/pack_memory.py [--count 2000]

Target: peak RSS < 150 MB for packing a >= 1 GB study.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit.corpus import data_file, replicate  # noqa: E402


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Run a command in a child; its wall time and peak RSS in MB."""
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child becomes the command, so its rusage is its own
        os.execvp(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:4]} failed")
    return time.perf_counter() - t, usage.ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="radsetu-mem-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        files = replicate(data_file("693_UNCI.dcm"), work / "study", args.count)
        total = sum(f.stat().st_size for f in files)
        print(
            f"study: {args.count} instances, {total / 1e9:.2f} GB, made in "
            f"{time.perf_counter() - t:.0f} s from pydicom-data 693_UNCI.dcm (real CT "
            "slice) with new UIDs"
        )
        py = [sys.executable, "-m", "radsetu"]
        dt, rss = run_measured([*py, "pack", str(work / "study"), "-o", str(work / "s.pack")])
        size = (work / "s.pack").stat().st_size
        print(
            f"pack:   {dt:6.1f} s, {total / dt / 1e6:5.1f} MB/s, ratio {total / size:.2f}, "
            f"peak RSS {rss:6.1f} MB (target < 150 MB)"
        )
        dt, rss = run_measured([*py, "unpack", str(work / "s.pack"), "-o", str(work / "out")])
        print(f"unpack: {dt:6.1f} s, {total / dt / 1e6:5.1f} MB/s, peak RSS {rss:6.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
