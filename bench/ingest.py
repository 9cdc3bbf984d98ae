"""C-STORE ingest: the box beside dcmtk's storescp and Orthanc, in one run.

The study: one real CT slice (pydicom-data 693_UNCI, 512x512x16) replicated with new
UIDs into N instances (default 400), made in a temporary folder each run. dcmtk's
storescu sends it to each receiver twice: with TCP_NODELAY=1 in the sender's
environment, and with dcmtk's default (Nagle on). The box runs with fsync on (always).

    .venv/bin/python bench/ingest.py [--count 400]

Anchors (seen before on a machine like this one): storescp 336 MB/s and Orthanc 95 MB/s with
TCP_NODELAY=1; both about 10 MB/s with dcmtk's default. Target: the box >= 1.0x
Orthanc's MB/s in the same run, with either sender setting.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit.box import Box, free_port, wait_port  # noqa: E402
from devkit.corpus import data_file, replicate, tree_size  # noqa: E402


def send(files: list[Path], port: int, nodelay: bool) -> float:
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    t = time.perf_counter()
    r = subprocess.run(
        ["storescu", "-aec", "ANY-SCP", "127.0.0.1", str(port), *map(str, files)],
        env=env,
        capture_output=True,
        text=True,
    )
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr[-500:]}")
    return dt


class Storescp:
    name = "dcmtk storescp"

    def __init__(self, work: Path, env: dict[str, str]):
        self.out = work / "storescp"
        self.out.mkdir(parents=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["storescp", "-od", str(self.out), "-aet", "ANY-SCP", str(self.port)],
            stderr=subprocess.DEVNULL,
            env=env,
        )
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


class Orthanc:
    name = "Orthanc"

    def __init__(self, work: Path, env: dict[str, str]):
        self.work = work / "orthanc"
        self.work.mkdir(parents=True)
        self.port = free_port()
        self.http = free_port()
        self.storage = self.work / "db"
        cfg = {
            "Name": "bench",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "DicomAet": "ANY-SCP",
            "DicomPort": self.port,
            "HttpPort": self.http,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": [],
            "StorageCompression": False,
            "SyncStorageArea": True,
        }
        (self.work / "orthanc.json").write_text(json.dumps(cfg))
        self.proc = subprocess.Popen(
            ["Orthanc", str(self.work / "orthanc.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        wait_port(self.port, timeout=60, proc=self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


class RadSetuBox:
    name = "RadSetu box (fsync on)"

    def __init__(self, work: Path, env: dict[str, str]):
        self.work = work / "box"
        self.box = Box(self.work).start(env=env)
        self.port = self.box.dicom_port

    def stop(self) -> None:
        self.box.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is shown")
    args = ap.parse_args()
    if not shutil.which("Orthanc"):
        print("Orthanc is not installed: run `make bench` (it installs it)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="radsetu-bench-") as tmp:
        work = Path(tmp)
        files = replicate(data_file("693_UNCI.dcm"), work / "study", args.count)
        mb = tree_size(files) / 1e6
        print(
            f"study: {args.count} instances, {mb:.1f} MB, made from pydicom-data "
            "693_UNCI.dcm (real CT slice) with new UIDs"
        )
        print(f"median of {args.repeat} runs per cell, each into a fresh receiver")
        print(f"{'receiver':<26} {'sender':<16} {'MB/s':>8} {'inst/s':>8}")
        results: dict[tuple[str, bool], float] = {}
        for kind in (Storescp, Orthanc, RadSetuBox):
            for nodelay in (True, False):
                # dcmtk reads TCP_NODELAY from the environment on both ends (Orthanc too);
                # each receiver starts afresh, so nothing is deduplicated
                env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
                if nodelay:
                    env["TCP_NODELAY"] = "1"
                times = []
                for run in range(args.repeat):
                    rx = kind(work / f"{kind.__name__}-{int(nodelay)}-{run}", env)
                    try:
                        times.append(send(files, rx.port, nodelay))
                    finally:
                        rx.stop()
                dt = statistics.median(times)
                results[(kind.name, nodelay)] = mb / dt
                sender = "TCP_NODELAY=1" if nodelay else "dcmtk default"
                print(
                    f"{kind.name:<26} {sender:<16} {mb / dt:8.1f} {args.count / dt:8.0f}",
                    flush=True,
                )
        print()
        print("anchors: storescp 336 MB/s, Orthanc 95 MB/s (TCP_NODELAY=1); ~10 MB/s default")
        for nodelay in (True, False):
            ratio = results[(RadSetuBox.name, nodelay)] / results[(Orthanc.name, nodelay)]
            sender = "TCP_NODELAY=1" if nodelay else "dcmtk default"
            print(f"box / Orthanc, {sender}: {ratio:.2f}x (target >= 1.0x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
