"""Lossless sync over links that behave like rural cellular (devkit/cellular.py): the
box in a network namespace of its own, Mosquitto and the hub here, every IP packet
between them delayed, rate-limited and dropped in user space.

Profiles (each direction): 256 kbit/s and 1 Mbit/s, 600 ms round trip, 2 % random
loss; and the 1 Mbit/s one with bursts of loss as well. The study: a real CT slice
(pydicom-data 693_UNCI, 512x512x16) replicated with new UIDs into N instances, sent
to the box with storescu inside the namespace; the default codec (dicom-jxl, effort 3).

Printed per profile: encoded bytes, time from the manifest at the hub to the study
verified, goodput (encoded bytes / time) as a share of the link rate and of what one
TCP connection can carry there (the Mathis limit, MSS / RTT * 1.22 / sqrt(loss)), and
the packets the emulator dropped each way.

    sudo .venv/bin/python bench/cellular.py [--slices 20] [--profiles 256,1000,1000b]
        [--congestion bbr,cubic]

Each profile runs once per TCP congestion control the box asks for
(``mqtt.congestion_control``); the table says which one its connections used.

No target of its own: it answers issue 19's question whether one MQTT connection is
the bottleneck on such a link. Anchor: the clean 1 Mbit/s line of bench/link.py
(tbf only), where goodput is about 93 % of the rate.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit import namespaced  # noqa: E402
from devkit.box import Box  # noqa: E402
from devkit.broker import Broker, Hub  # noqa: E402
from devkit.cellular import CellularLink, Profile, mathis_bps  # noqa: E402
from devkit.corpus import data_file, replicate  # noqa: E402

PROFILES = {
    "256": Profile(rate_kbps=256, rtt_ms=600, loss=0.02),
    "1000": Profile(rate_kbps=1000, rtt_ms=600, loss=0.02),
    "1000b": Profile(rate_kbps=1000, rtt_ms=600, loss=0.02, burst_enter=0.01, burst_exit=0.3),
}
MSS = 1448


def run(name: str, profile: Profile, args: argparse.Namespace, work: Path, cc: str) -> dict:  # type: ignore[type-arg]
    link = CellularLink(profile).start()
    broker = Broker(work / f"broker-{name}", host=link.hub_ip).start()
    hub = Hub(work / f"hub-{name}", {"host": link.hub_ip, "port": broker.port}).start()
    box = Box(work / f"box-{name}", mqtt={"host": link.hub_ip, "port": broker.port,
                                          "keepalive": 30, "congestion_control": cc},
              box_id=f"cell-{name}", quiet_seconds=2)  # fmt: skip
    proc, log = namespaced.start_box(link.inside(), box)
    try:
        files = replicate(data_file("693_UNCI.dcm"), work / f"study-{name}", args.slices)
        namespaced.storescu(link.inside(), box.dicom_port, files)
        while namespaced.hub_transfer(hub) is None:
            time.sleep(0.05)
        start = time.monotonic()
        while (t := namespaced.hub_transfer(hub)) and t["state"] != "verified":
            time.sleep(0.1)
            if time.monotonic() - start > args.timeout:
                raise TimeoutError(f"{name}: not verified within {args.timeout} s")
        took = time.monotonic() - start
        assert t is not None
        db = sqlite3.connect(box.data_dir / "index.db")
        (stream,) = db.execute("SELECT stream_bytes FROM transfers").fetchone()
        db.close()
        goodput = stream * 8 / took
        used = re.findall(r"TCP congestion control (\w+)", box.log_text())
        return {
            "profile": name, "cc": ",".join(sorted(set(used))) or "?",
            "encoded_bytes": stream, "seconds": took, "goodput_bps": goodput,
            "rate_share": goodput / (profile.rate_kbps * 1000),
            "mathis_share": goodput / mathis_bps(MSS, profile.rtt_ms / 1000, profile.loss),
            "stats": link.stats(),
        }  # fmt: skip
    finally:
        namespaced.stop(proc, log)
        hub.stop()
        broker.stop()
        link.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=20)
    ap.add_argument("--profiles", default="256,1000,1000b")
    ap.add_argument("--timeout", type=float, default=1200)
    cc_help = "the box's mqtt.congestion_control values, each profile with each"
    ap.add_argument("--congestion", default="bbr,cubic", help=cc_help)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="radsetu-cell-") as tmp:
        for name in args.profiles.split(","):
            for cc in args.congestion.split(","):
                results.append(run(name, PROFILES[name], args, Path(tmp) / cc, cc))
    print(f"\n{args.slices} CT slices (693_UNCI with new UIDs), dicom-jxl effort 3, one MQTT "
          "connection, 600 ms round trip, 2 % loss each way")  # fmt: skip
    print(f"{'profile':<8} {'TCP cc':<7} {'enc MB':>7} {'took s':>7} {'goodput':>9} {'of rate':>8} "
          f"{'of Mathis':>9} {'dropped up':>10} {'dropped down':>12}")  # fmt: skip
    for r in results:
        up, down = r["stats"]["up"], r["stats"]["down"]
        lost_up = up["random_loss"] + up["burst_loss"] + up["queue_drop"]
        lost_down = down["random_loss"] + down["burst_loss"] + down["queue_drop"]
        print(
            f"{r['profile']:<8} {r['cc']:<7} {r['encoded_bytes'] / 1e6:>7.2f} {r['seconds']:>7.1f} "
            f"{r['goodput_bps'] / 1000:>6.0f} kb {r['rate_share'] * 100:>7.1f}% "
            f"{r['mathis_share'] * 100:>8.1f}% {lost_up:>5}/{up['packets']:<5}"
            f"{lost_down:>6}/{down['packets']:<6}"
        )
    print("Mathis limit (one Reno-like TCP flow): 256 and 1000 kbit/s at 600 ms and 2 %: "
          f"{mathis_bps(MSS, 0.6, 0.02) / 1000:.0f} kbit/s. Anchor: bench/link.py's clean "
          "1 Mbit/s line, goodput about 93 % of the rate.")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
