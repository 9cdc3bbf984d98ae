"""One bad actor against the box's DICOM port and against the hub's shared ingest.

The box (each DICOM engine): the modality's C-ECHO round trip and a C-STORE of a real
study (pydicom-data's 693_UNCI CT slice replicated with new UIDs, made in a temporary
folder each run), first alone, then while the attacker holds 1,000 idle sockets (from
16 addresses), drips bytes on 8 more, and sends PDU headers that claim 4 GiB and 60
MiB; the box's peak memory (VmRSS) and threads.

The hub: a good box's study from storescu to "verified at the hub", alone and while
another box floods the broker with malformed messages (bad statuses, report acks,
study updates, chunks for transfers that do not exist); the hub's peak memory.

    .venv/bin/python bench/dos.py [--sockets 1000] [--count 100] [--engine native]

Anchors (issue 14, measured on main before the fix): 20 idle sockets made C-ECHO fail
("Local Limit Exceeded"); 1,000 sockets made 1,000 threads; two 6-byte headers
claiming 4 GiB took the pynetdicom engine to 4.26 GB; one box's malformed message held
every other box's messages for about 25 s. Targets: C-ECHO and C-STORE keep working
under attack, threads stay under 64 per engine's thread count, memory stays within
100 MB of the quiet figure, the good box's study arrives at the hub in about the
same time with and without the flood.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt  # noqa: E402

from devkit.box import Box  # noqa: E402
from devkit.broker import Broker, Hub  # noqa: E402
from devkit.corpus import data_file, replicate  # noqa: E402
from devkit.procs import proc_status  # noqa: E402
from wire import dul, frames  # noqa: E402


class Peak:
    """Samples a process's VmRSS and threads every 50 ms in the background."""

    def __init__(self, pid: int):
        self.pid, self.rss, self.threads = pid, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                s = proc_status(self.pid)
            except OSError:
                return
            self.rss, self.threads = max(self.rss, s["VmRSS"]), max(self.threads, s["Threads"])
            time.sleep(0.05)

    def done(self) -> tuple[float, int]:
        self.stop.set()
        self.thread.join()
        return self.rss / 1024, self.threads


def echo_ms(port: int) -> float | None:
    t = time.perf_counter()
    r = subprocess.run(["echoscu", "-to", "10", "-aec", "RADSETU", "127.0.0.1", str(port)],
                       capture_output=True, timeout=60)  # fmt: skip
    return (time.perf_counter() - t) * 1000 if r.returncode == 0 else None


def store_s(port: int, files: list[Path]) -> float | None:
    t = time.perf_counter()
    r = subprocess.run(["storescu", "-aec", "RADSETU", "127.0.0.1", str(port),
                        *map(str, files)], capture_output=True, timeout=600)  # fmt: skip
    return time.perf_counter() - t if r.returncode == 0 else None


def associate_rq() -> bytes:
    rq = struct.pack(">HH", 1, 0) + b"RADSETU".ljust(16) + b"ATTACKER".ljust(16) + bytes(32)
    rq += dul._item(0x10, dul.APPLICATION_CONTEXT.encode())
    sub = dul._item(0x30, b"1.2.840.10008.1.1") + dul._item(0x40, b"1.2.840.10008.1.2")
    rq += dul._item(0x20, bytes([1, 0, 0, 0]) + sub)
    rq += dul._item(0x50, dul._item(0x51, struct.pack(">L", 16384)))
    return dul._pdu(dul.ASSOCIATE_RQ, rq)


def attack(port: int, sockets: int, stop: threading.Event) -> dict[str, int]:
    """Idle sockets, drippers and PDUs that claim too much, until ``stop``."""
    held: list[socket.socket] = []
    counts = {"connected": 0, "refused": 0}
    for i in range(sockets):
        try:
            held.append(
                socket.create_connection(
                    ("127.0.0.1", port), timeout=5, source_address=(f"127.0.1.{1 + i % 16}", 0)
                )
            )
            counts["connected"] += 1
        except OSError:
            counts["refused"] += 1
    for claim in (0xFFFFFFF0, 0xFFFFFFF0, 60 << 20, 60 << 20):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5,
                                         source_address=("127.0.2.1", 0))  # fmt: skip
            s.sendall(struct.pack(">BBL", dul.ASSOCIATE_RQ, 0, claim) + bytes(65536))
            held.append(s)
        except OSError:
            pass
    drippers = []
    for i in range(8):
        try:
            drippers.append(
                socket.create_connection(
                    ("127.0.0.1", port), timeout=5, source_address=(f"127.0.3.{i + 1}", 0)
                )
            )
        except OSError:
            pass
    rq = associate_rq()
    pos = 0
    while not stop.wait(1):
        for s in drippers:
            try:
                s.sendall(rq[pos % len(rq) : pos % len(rq) + 1])
            except OSError:
                pass
        pos += 1
    for s in held + drippers:
        s.close()
    return counts


def bench_box(engine: str, files: list[Path], more: list[Path], sockets: int, work: Path) -> None:
    box = Box(work / f"box-{engine}", quiet_seconds=60)
    box.start(env={"RADSETU_DICOM_ENGINE": engine})
    try:
        quiet = proc_status(box.proc.pid)
        e0 = [echo_ms(box.dicom_port) for _ in range(5)]
        s0 = store_s(box.dicom_port, files)
        peak = Peak(box.proc.pid)
        stop = threading.Event()
        counts: dict[str, int] = {}
        t = threading.Thread(target=lambda: counts.update(attack(box.dicom_port, sockets, stop)))
        t.start()
        time.sleep(3)
        e1 = [echo_ms(box.dicom_port) for _ in range(5)]
        s1 = store_s(box.dicom_port, more)
        stop.set()
        t.join()
        rss, threads = peak.done()
        ok = sum(x is not None for x in e1)
        print(f"box, {engine} engine: quiet {quiet['VmRSS'] / 1024:.0f} MB, "
              f"{quiet['Threads']} threads")  # fmt: skip
        print(
            f"  C-ECHO alone: {min(x for x in e0 if x):.0f} ms; under attack: {ok}/5 "
            f"answered, best {min((x for x in e1 if x), default=float('nan')):.0f} ms"
        )
        print(
            f"  C-STORE {len(files)} slices alone: {s0:.1f} s; under attack: "
            + (f"{s1:.1f} s" if s1 else "FAILED")
        )
        print(
            f"  attack: {counts.get('connected', 0)} of {sockets} sockets connected, "
            f"{counts.get('refused', 0)} refused at connect; peak {rss:.0f} MB "
            f"(+{rss - quiet['VmRSS'] / 1024:.0f}), {threads} threads"
        )
    finally:
        box.stop()


def flood(port: int, stop: threading.Event) -> int:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mallory", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    bad = [
        (frames.STATUS, json.dumps({"box_id": "mallory", "backlog_bytes": {"x": 1}}).encode()),
        (frames.UP_REPORT_ACK, json.dumps({"report_id": "r1", "version": 2**70}).encode()),
        (frames.UP_STUDY, json.dumps({"study_uid": "1.2", "priority": ["stat"]}).encode()),
        (frames.STATUS, b"\xff" * 100_000),
    ]
    sent = 0
    while not stop.is_set():
        for leaf, payload in bad:
            c.publish(frames.topic("mallory", leaf), payload, qos=1)
            sent += 1
        time.sleep(0.01)
    c.loop_stop()
    c.disconnect()
    return sent


def bench_hub(files: list[Path], more: list[Path], work: Path) -> None:
    broker = Broker(work / "broker").start()
    hub = Hub(work / "hub", broker.mqtt_config("hub")).start()
    box = Box(work / "good-box", mqtt=broker.mqtt_config("box"), box_id="good-box",
              quiet_seconds=1).start()  # fmt: skip
    try:

        def through(study: list[Path]) -> float:
            uid = (
                subprocess.run(
                    ["dcmdump", "+P", "StudyInstanceUID", str(study[0])],
                    capture_output=True,
                    text=True,
                )
                .stdout.split("[")[1]
                .split("]")[0]
            )
            t = time.perf_counter()
            store_s(box.dicom_port, study)
            while True:
                s = box.api(f"/api/studies/{uid}")
                if s.get("state") == "delivered":
                    return time.perf_counter() - t
                time.sleep(0.2)

        alone = through(files)
        peak = Peak(hub.proc.pid)
        stop = threading.Event()
        sent: list[int] = []
        t = threading.Thread(target=lambda: sent.append(flood(broker.port, stop)))
        t.start()
        flooded = through(more)
        stop.set()
        t.join()
        rss, _ = peak.done()
        mallory = next((b for b in hub.api("/api/boxes")["boxes"] if b["box_id"] == "mallory"), {})
        print(
            f"hub: good box's {len(files)} slices to the hub alone {alone:.1f} s, "
            f"during the flood {flooded:.1f} s; {sent[0] if sent else 0} bad messages sent, "
            f"{mallory.get('rejected', 0)} refused and counted; hub peak {rss:.0f} MB"
        )
    finally:
        box.stop()
        hub.stop()
        broker.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--count", type=int, default=100, help="slices per study")
    p.add_argument("--engine", choices=["native", "pynetdicom", "both"], default="both")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = data_file("693_UNCI.dcm")
        studies = [replicate(src, work / f"study{i}", args.count) for i in range(4)]
        engines = ["native", "pynetdicom"] if args.engine == "both" else [args.engine]
        for i, engine in enumerate(engines):
            bench_box(engine, studies[0], studies[1], args.sockets, work)
            if i == 0:
                bench_hub(studies[2], studies[3], work)


if __name__ == "__main__":
    main()
