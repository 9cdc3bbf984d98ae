"""A fleet of simulated boxes against the hub: one process on SQLite, then 1, 2 and 3
ingest workers on PostgreSQL, in one run.

Each simulated box is a light MQTT client that speaks the real protocol (``wire``'s
packer, ``Uplink`` and frames; MQTT v5, QoS 1, the manifest's correlation data) and
sends one small study: two instances made from pydicom's CT_small.dcm with new UIDs
for each box, in memory, each run. Half the boxes are on each of two Mosquitto brokers;
the hub listens on both (``mqtt.other_brokers``). Many boxes share a client process.

Per configuration: studies and MB per second verified at the hub (from the first
manifest to the last verifying ack), the 50th and 99th percentile from a box's last
chunk to the hub's ack that verified its study, and the peak memory (VmHWM) of each
hub process.

    .venv/bin/python bench/fleet.py [--boxes 1000] [--clients 4]

Anchor: the single-process SQLite hub's figures, printed first in the same run; on
this 2-core machine the cluster configurations should be no slower.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit.broker import Broker  # noqa: E402
from devkit.servers import end_group, spawn  # noqa: E402

CHUNK = 64 * 1024


def study_for(box_id: str, template: bytes) -> tuple[str, list[tuple[str, bytes]]]:
    """Two instances with UIDs of this box's own."""
    import pydicom
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    out = []
    for _ in range(2):
        ds = pydicom.dcmread(io.BytesIO(template))
        sop = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.PatientID = box_id
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((sop, buf.getvalue()))
    return study, out


class SimBox:
    """One box: a paho client, its study packed, an Uplink deciding what goes next."""

    def __init__(self, box_id: str, port: int, template: bytes):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from wire.codec import pack_bytes
        from wire.manifest import Priority
        from wire.transfer import Uplink

        self.box_id = box_id
        study, instances = study_for(box_id, template)
        self.manifest, self.chunks = pack_bytes(
            instances, chunk_size=CHUNK, transfer_id=f"{box_id}-t", pixel_effort=0,
            box_id=box_id, study_uid=study, priority=Priority.ROUTINE,
        )  # fmt: skip
        self.bytes = sum(len(c) for c in self.chunks)
        self.uplink = Uplink(window=8, ack_timeout=30)
        self.uplink.queue(self.manifest, 0)
        self.token = os.urandom(8)
        self.lock = threading.Lock()
        self.first = self.last_chunk = self.done = 0.0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=box_id, protocol=mqtt.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.port = port

    def start(self) -> None:
        self.client.connect_async("127.0.0.1", self.port, keepalive=60, clean_start=True)
        self.client.loop_start()

    def _publish_manifest(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from wire import frames

        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = self.token
        body = frames.encode_manifest(self.manifest.to_json())  # as a box sends it
        self.client.publish(
            frames.topic(self.box_id, frames.UP_MANIFEST), body, 1, properties=props
        )
        self.first = self.first or time.monotonic()

    def _on_connect(self, client, _u, _f, rc, _p) -> None:  # type: ignore[no-untyped-def]
        from wire import frames

        client.subscribe(f"{frames.PREFIX}/{self.box_id}/down/#", qos=1)
        with self.lock:
            self.uplink.disconnected()
            self.uplink.reconnected()
            self._publish_manifest()

    def _on_message(self, _c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        from wire import frames
        from wire.messages import parse_ack
        from wire.transfer import TransferVerified

        if not msg.topic.endswith(frames.DOWN_ACK):
            return
        corr = getattr(msg.properties, "CorrelationData", None)
        with self.lock:
            ack = parse_ack(msg.payload)
            if ack.get("unknown"):
                self._publish_manifest()
                return
            events = self.uplink.receive_ack(ack, fresh=corr == self.token)
            if any(isinstance(e, TransferVerified) for e in events):
                self.done = self.done or time.monotonic()
                return
            self.pump()

    def pump(self) -> None:
        from wire import frames

        for tid, i in self.uplink.next_chunks(time.monotonic()):
            payload = frames.encode_chunk(tid, i, self.chunks[i])
            self.client.publish(frames.topic(self.box_id, frames.UP_CHUNK), payload, qos=1)
            self.last_chunk = time.monotonic()


def client_main(args: argparse.Namespace) -> None:
    """A client process: its boxes, until every study is verified or time runs out."""
    from devkit.corpus import pydicom_file

    template = pydicom_file("CT_small.dcm").read_bytes()
    ports = [int(p) for p in args.ports.split(",")]
    boxes = [SimBox(f"{args.prefix}-{n:04d}", ports[n % len(ports)], template)
             for n in range(args.first, args.first + args.count)]  # fmt: skip
    print("ready", flush=True)
    sys.stdin.readline()  # all clients start together
    for b in boxes:
        b.start()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and not all(b.done for b in boxes):
        time.sleep(1)
        for b in boxes:
            with b.lock:
                if not b.done and not b.uplink.awaiting():
                    b.pump()  # chunks whose ack timed out go again
    print(json.dumps([[b.first, b.last_chunk, b.done, b.bytes] for b in boxes]), flush=True)
    for b in boxes:
        b.client.disconnect()
        b.client.loop_stop()


def vm_hwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_round(
    work: Path, name: str, args: argparse.Namespace, index_url: str, workers: int
) -> dict:
    one = Broker(work / name / "broker-1", persistence=False, verbose=False).start()
    two = Broker(work / name / "broker-2", persistence=False, verbose=False).start()
    hubs = []
    try:
        for w in range(workers):
            cfg = work / name / f"hub-{w}.toml"
            lines = [f'data_dir = "{work / name / "hub"}"', 'log_level = "WARNING"', "[mqtt]",
                     f"port = {one.port}", f'client_id = "bench-hub-{w}"',
                     f'other_brokers = ["127.0.0.1:{two.port}"]']  # fmt: skip
            if index_url:
                lines += ["[index]", f'url = "{index_url}"']
            cfg.write_text("\n".join(lines) + "\n")
            cmd = [sys.executable, "-m", "radsetu", "hub", "ingest", "--config", str(cfg)]
            hubs.append(spawn(cmd, work / name / f"hub-{w}.log"))
            time.sleep(1.5 if w == 0 else 0.2)  # the first applies the migrations
        per = -(-args.boxes // args.clients)
        clients = []
        for c in range(args.clients):
            count = min(per, args.boxes - c * per)
            cmd = [sys.executable, __file__, "--client", "--prefix", f"{name}", "--first",
                   str(c * per), "--count", str(count), "--ports", f"{one.port},{two.port}",
                   "--timeout", str(args.timeout)]  # fmt: skip
            clients.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            text=True))  # fmt: skip
        for p in clients:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in clients:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        rows = []
        for p in clients:
            out, _ = p.communicate(timeout=args.timeout + 120)
            rows += json.loads(out.strip().splitlines()[-1])
        memory = [vm_hwm(h.pid) for h in hubs]
    finally:
        for h in hubs:
            end_group(h, 15, 20)
        one.stop()
        two.stop()
    done = [r for r in rows if r[2]]
    start, end = min(r[0] for r in rows if r[0]), max((r[2] for r in done), default=0.0)
    secs = max(end - start, 1e-9)
    lat = sorted(r[2] - r[1] for r in done)
    pct = statistics.quantiles(lat, n=100) if len(lat) > 1 else [0.0] * 99
    return {
        "verified": len(done), "boxes": len(rows), "seconds": secs,
        "studies_s": len(done) / secs, "mb_s": sum(r[3] for r in done) / secs / 1e6,
        "p50_ms": pct[49] * 1000, "p99_ms": pct[98] * 1000, "rss_mb": memory,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boxes", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default="box")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--ports", default="")
    args = ap.parse_args()
    if args.client:
        client_main(args)
        return
    from devkit.postgres import Postgres

    with tempfile.TemporaryDirectory(prefix="radsetu-fleet-") as tmp:
        work = Path(tmp)
        pg = Postgres(work / "postgres").start()
        try:
            rounds = [("sqlite-1", "", 1)]
            rounds += [(f"pg-{w}", pg.create_database(f"fleet{w}"), w) for w in (1, 2, 3)]
            results = {}
            for name, url, workers in rounds:
                results[name] = r = run_round(work, name, args, url, workers)
                print(f"{name:9s} {r['verified']:5d}/{r['boxes']} studies in {r['seconds']:6.1f} s"
                      f"  {r['studies_s']:6.1f} studies/s  {r['mb_s']:5.2f} MB/s"
                      f"  last chunk -> ack p50 {r['p50_ms']:7.0f} ms p99 {r['p99_ms']:7.0f} ms"
                      f"  hub RSS {', '.join(f'{m:.0f}' for m in r['rss_mb'])} MB",
                      flush=True)  # fmt: skip
            base = results["sqlite-1"]["studies_s"]
            print(f"anchor: the single-process SQLite hub, {base:.1f} studies/s in this run")
            for name, r in results.items():
                print(f"  {name:9s} {r['studies_s'] / base:5.2f}x the anchor's studies/s")
        finally:
            pg.stop()
            pg.remove()


if __name__ == "__main__":
    main()
