"""The hub's ingest with its large things in the data folder and in an S3-compatible
object store (a real SeaweedFS on loopback), in one run.

The study: one real CT slice (pydicom-data 693_UNCI, 0.5 MB) replicated with new UIDs
into N instances (default 200), made in a temporary folder each run. A box receives it
with dcmtk's storescu and syncs it through a real Mosquitto to a real hub; the time is
from the box holding the whole study to the box hearing that the hub verified it, so
it covers every chunk's put, the reassembly's reads and the instances' puts.

    .venv/bin/python bench/objects.py [--count 200]

No outside anchor: the folder's figure in the same run is the one to compare with.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit.box import Box  # noqa: E402
from devkit.broker import Broker, Hub  # noqa: E402
from devkit.corpus import data_file, replicate, tree_size  # noqa: E402
from devkit.seaweed import SeaweedFS  # noqa: E402


def run_once(work: Path, files: list[Path], objects: dict[str, str] | None) -> float:
    """Seconds from the box holding the study to its verification at the hub."""
    broker = Broker(work / "broker").start()
    hub = Hub(work / "hub", broker.mqtt_config("hub"),
              sections={"objects": objects} if objects else None).start()  # fmt: skip
    box = Box(work / "box", mqtt=broker.mqtt_config(), quiet_seconds=1).start()
    try:
        subprocess.run(["storescu", "-aec", "RADSETU", "127.0.0.1", str(box.dicom_port),
                        *map(str, files)], check=True, capture_output=True)  # fmt: skip
        t = time.perf_counter()
        while True:
            studies = box.api("/api/studies")["studies"]
            if studies and studies[0]["state"] == "delivered":
                break
            if time.perf_counter() - t > 900:
                raise RuntimeError("the study did not reach the hub in 15 min")
            time.sleep(0.2)
        return time.perf_counter() - t
    finally:
        box.stop()
        hub.stop()
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="radsetu-objects-") as tmp:
        work = Path(tmp)
        files = replicate(data_file("693_UNCI.dcm"), work / "study", args.count)
        mb = tree_size(files) / 1e6
        print(f"study: {args.count} instances, {mb:.0f} MB (693_UNCI.dcm, new UIDs)")
        dt = run_once(work / "folder", files, None)
        print(f"folder:    {dt:6.1f} s, {mb / dt:5.1f} MB/s verified at the hub")
        weed = SeaweedFS(work / "seaweed").start()
        try:
            dt = run_once(work / "s3", files, weed.objects_config("bench"))
        finally:
            weed.stop()
        print(f"SeaweedFS: {dt:6.1f} s, {mb / dt:5.1f} MB/s verified at the hub")
    return 0


if __name__ == "__main__":
    sys.exit(main())
