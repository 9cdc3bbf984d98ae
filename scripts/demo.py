"""`make demo`: a box on this machine, a real study sent to it with dcmtk's storescu.

Starts `radsetu edge serve` with a throwaway data folder, sends a CT study (20 slices
made from pydicom-data's real 693_UNCI.dcm with new UIDs) and an MR instance, waits
until the box marks the study ready to send, and prints what happened. With --keep it
leaves the box running until Ctrl-C so you can open the URLs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit.box import Box  # noqa: E402
from devkit.corpus import data_file, replicate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the box running until Ctrl-C")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="radsetu-demo-") as tmp:
        work = Path(tmp)
        box = Box(work / "box", quiet_seconds=3)
        print(f"starting a box (data in {box.data_dir}) ...")
        box.start()
        try:
            files = replicate(data_file("693_UNCI.dcm"), work / "ct", 20)
            files.append(data_file("MR2_UNCR.dcm"))
            print(
                f"sending {len(files)} real instances with storescu to "
                f"RADSETU@127.0.0.1:{box.dicom_port} ..."
            )
            t = time.monotonic()
            r = subprocess.run(
                ["storescu", "-aec", "RADSETU", "127.0.0.1", str(box.dicom_port), *map(str, files)],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            print(
                f"  all acknowledged in {time.monotonic() - t:.2f} s (each one fsynced "
                "and indexed before its ack)"
            )
            print("waiting for the studies to be quiet for 3 s (store.quiet_seconds) ...")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                studies = box.api("/api/studies")["studies"]
                if studies and all(s["state"] == "ready" for s in studies):
                    break
                time.sleep(0.5)
            for s in studies:
                print(
                    f"  {s['state']:<9} {s['modality']:<3} {s['patient_name']:<24} "
                    f"{s['instances']:>3} instances {s['bytes'] / 1e6:7.1f} MB  "
                    f"{s['study_uid']}"
                )
            api = f"http://127.0.0.1:{box.web_port}/api/studies"
            print(f"\nthe box's API: {api}")
            print(
                json.dumps(
                    box.api(f"/api/studies/{studies[0]['study_uid']}")["instances"][0], indent=2
                )
            )
            if not all(s["state"] == "ready" for s in studies):
                print("a study did not become ready in time", file=sys.stderr)
                return 1
            if args.keep:
                print("\nthe box keeps running; Ctrl-C to stop")
                try:
                    box.proc.wait()
                except KeyboardInterrupt:
                    pass
        finally:
            box.stop()
    print("demo done: the study is on the box, whole, and ready to send")
    return 0


if __name__ == "__main__":
    sys.exit(main())
