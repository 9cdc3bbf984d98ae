"""Peak memory of `radsetu pack` and `radsetu unpack` on a study of >= 1 GB.

The study is made for the run from one real CT slice (pydicom-data 693_UNCI.dcm,
0.5 MB) replicated with new UIDs (2,000 instances, about 1.05 GB) in a temporary
folder, then packed with the default codec (dicom-jxl, effort 3) and unpacked, each
in its own process, whose peak RSS is read from the kernel.

    .venv/bin/python bench/pack_memory.py [--count 2000] [--bomb-only]

Target: peak RSS < 150 MB for packing a >= 1 GB study.

Then a pack file that is small on disk and large inside: one instance of 1 GiB of
zeros (about 33 KB packed), unpacked as it is, and again with its manifest forged to
declare a 1 MiB instance (the record's data must be refused at the declared size, not
inflated first). Anchor: the security review saw 1.1 GB of RSS for such a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit.corpus import data_file, replicate  # noqa: E402
from wire.codec import Packer  # noqa: E402
from wire.manifest import Manifest, Priority  # noqa: E402
from wire.packfile import header  # noqa: E402


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Run a command in a child; its wall time and peak RSS in MB."""
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child becomes the command, so its rusage is its own
        os.execvp(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:4]} failed", usage.ru_maxrss / 1024)
    return time.perf_counter() - t, usage.ru_maxrss / 1024


def zeros_pack(out: Path, size: int, declared: int | None = None) -> int:
    """A pack of one instance of ``size`` zero bytes (fed in 1 MiB pieces); with
    ``declared`` its manifest claims that size instead. Returns the file's size."""
    p = Packer(box_id="bench-box", study_uid="1.2.826.0.1.3680043.8.498.2",
               transfer_id="bench-bomb", priority=Priority.ROUTINE, chunk_size=1 << 20)  # fmt: skip
    chunks: list[bytes] = []
    p.begin_instance("1.2.826.0.1.3680043.8.498.1", size=size)
    block = bytes(1 << 20)
    for _ in range(size // len(block)):
        p.feed(block)
        chunks += p.chunks()
    p.end_instance()
    manifest, last = p.finish()
    if declared is not None:
        doc = json.loads(manifest.to_json())
        doc["instances"][0]["size"] = declared
        manifest = Manifest.from_json(json.dumps(doc).encode())
    out.write_bytes(header(manifest) + b"".join(chunks + last))
    return out.stat().st_size


def run_bomb(work: Path) -> None:
    py = [sys.executable, "-m", "radsetu"]
    small = zeros_pack(work / "zeros.pack", 1 << 30)
    dt, rss = run_measured([*py, "unpack", str(work / "zeros.pack"), "-o", str(work / "z")])
    print(
        f"1 GiB of zeros in a {small / 1e3:.0f} KB pack: unpacked in {dt:.1f} s, "
        f"peak RSS {rss:6.1f} MB (anchor: 1.1 GB before the caps)"
    )
    (work / "z" / "1.2.826.0.1.3680043.8.498.1.dcm").unlink()
    zeros_pack(work / "forged.pack", 1 << 30, declared=1 << 20)
    try:
        dt, rss = run_measured([*py, "unpack", str(work / "forged.pack"), "-o",
                                str(work / "f")])  # fmt: skip
        print(f"forged (declares 1 MiB): ACCEPTED in {dt:.1f} s, peak RSS {rss:.1f} MB")
    except RuntimeError as exc:
        print(f"forged (declares 1 MiB): refused, peak RSS {exc.args[1]:6.1f} MB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--bomb-only", action="store_true", help="only the small-outside pack")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="radsetu-mem-") as tmp:
        work = Path(tmp)
        run_bomb(work)
        if args.bomb_only:
            return 0
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
