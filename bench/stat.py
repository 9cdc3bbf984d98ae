"""A STAT study behind a routine backlog on links like rural cellular (issue 19): how soon
a radiologist can start reading with the lossy preview, against lossless only, and
against Orthanc's peer store on the same emulated link in the same run.

The link: devkit/cellular.py (the box in a network namespace of its own, every IP
packet shaped in user space), 256 kbit/s and 1 Mbit/s each way, 600 ms round trip,
2 % random loss. The studies: a real head CT series (pylinac's demo CBCT "High quality
head", 65 slices of 512 x 512 x 16, taken in turn) with new UIDs: a routine backlog of
``--backlog-mb`` (studies of 100 slices, all packed and on their way before the STAT
study comes), then a STAT study of ``--slices`` slices sent by the modality "ER_CT"
(a ``[stat]`` rule). An earlier version replicated one slice, pydicom-data's 693_UNCI;
that slice was made by enlarging a smaller image, so a wavelet coder codes it
losslessly at 250:1 and it says nothing about a real study.

Per link, three runs:
- ``preview``: ``sync.preview = "stat"``: the time from the STAT study's last C-STORE
  to its first preview images readable at the hub, to the whole preview, and to the
  lossless study verified;
- ``lossless``: ``sync.preview = "off"``: the time to the lossless study verified;
- ``orthanc``: Orthanc 1.10's peer store (``Compress``: gzip) of the STAT study alone,
  clinic Orthanc in the namespace, hub Orthanc here; no backlog ahead of it (Orthanc
  has no way to put a study before a running job), so this is its best case.

Goodput while the STAT study crosses is given as a share of the link rate and of the
Mathis limit of one TCP connection (MSS / RTT * 1.22 / sqrt(loss)).

    sudo .venv/bin/python bench/stat.py [--profiles 256,1000] [--slices 100] [--backlog-mb 300]

Goals (issue 19): the whole preview readable in at most 0.4 x the lossless-only time;
the lossless study no more than 10 % later than without a preview.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit import namespaced  # noqa: E402
from devkit.box import Box, free_port  # noqa: E402
from devkit.broker import Broker, Hub  # noqa: E402
from devkit.cellular import CellularLink, Profile, mathis_bps  # noqa: E402
from devkit.corpus import head_ct_slices, series_from  # noqa: E402

PROFILES = {
    "256": Profile(rate_kbps=256, rtt_ms=600, loss=0.02),
    "1000": Profile(rate_kbps=1000, rtt_ms=600, loss=0.02),
}
MSS = 1448
CHUNK = 131072


def studies(work: Path, slices: int, backlog_mb: int) -> tuple[list[list[Path]], list[Path]]:
    srcs = head_ct_slices()
    per_study = 100
    size = sum(p.stat().st_size for p in srcs) / len(srcs)
    count = max(1, round(backlog_mb * 1e6 / (size * per_study)))
    backlog = [series_from(srcs, work / f"routine-{i}", per_study) for i in range(count)]
    return backlog, series_from(srcs, work / "stat", slices)


def study_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def query(db_path: Path, sql: str, args: list[Any] | None = None) -> Any:
    try:
        with sqlite3.connect(db_path, timeout=5) as db:
            return db.execute(sql, args or []).fetchone()
    except sqlite3.OperationalError:
        return None  # not made yet


def box_run(
    name: str,
    profile: Profile,
    preview: str,
    files: Any,
    work: Path,
    cc: str = "bbr",
    chunk: int = CHUNK,
) -> dict[str, Any]:
    backlog, stat = files
    uid = study_uid(stat)
    link = CellularLink(profile, seed=19).start()
    broker = Broker(work / "broker", host=link.hub_ip).start()
    hub = Hub(work / "hub", {"host": link.hub_ip, "port": broker.port}).start()
    mqtt = {"host": link.hub_ip, "port": broker.port, "keepalive": 30, "congestion_control": cc}
    box = Box(work / "box", mqtt=mqtt,
              box_id=f"stat-{name}", quiet_seconds=2,
              sync={"preview": preview, "chunk_bytes": chunk},
              stat={"calling_ae_titles": ["ER_CT"]})  # fmt: skip
    proc, log = namespaced.start_box(link.inside(), box)
    box_db, hub_db = box.data_dir / "index.db", hub.data_dir / "hub.db"
    try:
        for files_of_one in backlog:
            namespaced.storescu(link.inside(), box.dicom_port, files_of_one)
        while (query(box_db, "SELECT count(*) FROM transfers") or (0,))[0] < len(backlog):
            time.sleep(0.5)  # the whole backlog packed and queued
        while not query(hub_db, "SELECT 1 FROM transfers"):
            time.sleep(0.2)  # and on its way
        time.sleep(15)  # for a while, as a backlog is when an emergency comes
        namespaced.storescu(link.inside(), box.dicom_port, stat, aet="ER_CT")
        t0 = time.monotonic()
        held0 = query(hub_db, "SELECT sum(chunks_held) FROM transfers")[0] or 0
        first = whole = None
        while True:
            shown = query(hub_db, "SELECT count(*), sum(lossy) FROM shown_instances "
                          "WHERE study_uid=?", [uid]) or (0, 0)  # fmt: skip
            lossless = shown[0] - (shown[1] or 0)
            now = time.monotonic() - t0
            if first is None and shown[0]:
                first = now
            if whole is None and shown[0] == len(stat):
                whole = now
            if lossless == len(stat):
                done = now
                break
            if now > 7200:
                raise TimeoutError(f"{name}/{preview}: not verified in 2 hours")
            time.sleep(0.2)
        held = query(hub_db, "SELECT sum(chunks_held) FROM transfers")[0] - held0
        kinds = {}
        with sqlite3.connect(box_db) as db:
            for kind, stream in db.execute(
                "SELECT t.kind, sum(t.stream_bytes) FROM transfers t JOIN studies s "
                "ON s.study_uid=t.study_uid WHERE s.priority='stat' GROUP BY t.kind"
            ):
                kinds[kind] = stream
        return {"first": first, "whole": whole, "lossless": done, "bytes": kinds,
                "goodput_bps": held * chunk * 8 / done, "stats": link.stats()}  # fmt: skip
    finally:
        namespaced.stop(proc, log)
        hub.stop()
        broker.stop()
        link.stop()


def orthanc(
    inside: list[str], name: str, work: Path, host: str, peer: str = "", timeout: int = 60
) -> Any:
    """An Orthanc with its own folders; ``inside``: the namespace prefix (or [])."""
    http, dicom = free_port(), free_port()
    cfg = {"Name": name, "StorageDirectory": str(work / name), "IndexDirectory": str(work / name),
           "HttpPort": http, "DicomPort": dicom, "RemoteAccessAllowed": True,
           "AuthenticationEnabled": False, "HttpTimeout": timeout, "Plugins": [],
           "OrthancPeers": {"hub": [peer]} if peer else {}}  # fmt: skip
    path = work / f"{name}.json"
    (work / name).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    log = open(work / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([*inside, "Orthanc", str(path)], stdout=log, stderr=log)
    for _ in range(200):
        r = subprocess.run([*inside, "curl", "-sf", f"http://{host}:{http}/system"],
                           capture_output=True)  # fmt: skip
        if r.returncode == 0:
            return proc, log, http, dicom
        time.sleep(0.1)
    raise RuntimeError(f"Orthanc {name} did not start (see {work / name}.log)")


def orthanc_run(
    name: str, profile: Profile, files: Any, work: Path, timeout: int
) -> dict[str, Any]:
    """Orthanc's peer store of the STAT study, ``timeout``: its HttpTimeout (60 s is
    Orthanc's own default)."""
    _backlog, stat = files
    link = CellularLink(profile, seed=19).start()
    inside = link.inside()
    hub = orthanc([], "hub", work, "127.0.0.1")
    peer = f"http://{link.hub_ip}:{hub[2]}/"
    clinic = orthanc(inside, "clinic", work, "127.0.0.1", peer, timeout)
    try:
        namespaced.storescu(inside, clinic[3], stat)
        ids = subprocess.run([*inside, "curl", "-sf", f"http://127.0.0.1:{clinic[2]}/studies"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        body = json.dumps({"Resources": json.loads(ids), "Compress": True, "Synchronous": True})
        t0 = time.monotonic()
        r = subprocess.run([*inside, "curl", "-sS", "-X", "POST", "-d", body,
                            f"http://127.0.0.1:{clinic[2]}/peers/hub/store"],
                           capture_output=True, text=True)  # fmt: skip
        took = time.monotonic() - t0
        out = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{hub[2]}/statistics"],
                             capture_output=True, text=True).stdout  # fmt: skip
        count = json.loads(out or "{}").get("CountInstances", 0)
        answer = (r.stdout[-300:] + r.stderr[-300:]).strip()
        return {"lossless": took, "instances": count, "answer": answer, "timeout": timeout}
    finally:
        for proc, log, *_ in (clinic, hub):
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
        link.stop()


def report(name: str, profile: Profile, runs: dict[str, dict[str, Any]], slices: int) -> None:
    p, ll, orth = runs["preview"], runs["lossless"], runs["orthanc"]
    mathis = mathis_bps(MSS, profile.rtt_ms / 1000, profile.loss)
    rate = profile.rate_kbps * 1000
    print(f"\n{name} kbit/s, {profile.rtt_ms} ms round trip, {profile.loss:.0%} loss; STAT "
          f"study of {slices} CT slices behind the backlog;"
          " seconds from its last C-STORE")  # fmt: skip
    print(f"  preview: first images readable {p['first']:.1f} s, whole preview "
          f"{p['whole']:.1f} s, lossless verified {p['lossless']:.1f} s;"
          f" bytes {p['bytes']}")  # fmt: skip
    print(f"  lossless only: verified {ll['lossless']:.1f} s; bytes {ll['bytes']}")
    failed = "" if orth["instances"] >= slices else f": FAILED ({orth.get('answer', '')!r})"
    print(f"  Orthanc peer store (gzip, no backlog, HttpTimeout {orth.get('timeout')} s): "
          f"{orth['lossless']:.1f} s, {orth['instances']} of {slices} instances at its hub"
          f"{failed}")  # fmt: skip
    print(f"  whole preview / lossless only: {p['whole'] / ll['lossless']:.2f} (goal <= 0.40);"
          f" lossless with preview / without: {p['lossless'] / ll['lossless']:.2f}"
          " (goal <= 1.10)")  # fmt: skip
    for label, r in (("preview run", p), ("lossless run", ll)):
        g = r["goodput_bps"]
        print(f"  goodput, {label}: {g / 1000:.0f} kbit/s = {g / rate:.0%} of the rate, "
              f"{g / mathis:.0%} of the Mathis limit ({mathis / 1000:.0f} kbit/s)")  # fmt: skip
        up = r["stats"]["up"]
        print(f"    the link up, whole run: {up['packets']} packets, {up['bytes'] / 1e6:.1f} MB;"
              f" lost at random {up['random_loss']}, in bursts {up['burst_loss']},"
              f" dropped by the full queue {up['queue_drop']}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", default="256,1000")
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--backlog-mb", type=int, default=300)
    ap.add_argument("--skip-orthanc", action="store_true")
    ap.add_argument("--orthanc-only", action="store_true", help="Orthanc's runs alone")
    ap.add_argument("--orthanc-timeout", type=int, default=60, help="Orthanc's HttpTimeout")
    ap.add_argument("--congestion", default="bbr", help="the box's mqtt.congestion_control")
    ap.add_argument("--chunk-kib", type=int, default=CHUNK // 1024, help="sync.chunk_bytes")
    ap.add_argument("--keep", action="store_true", help="keep the logs and stores (path printed)")
    args = ap.parse_args()
    if not args.skip_orthanc and shutil.which("Orthanc") is None:
        print("Orthanc is not installed: apt-get install orthanc (or --skip-orthanc)")
        return 2
    with contextlib.ExitStack() as stack:
        if args.keep:
            base = Path(tempfile.mkdtemp(prefix="radsetu-stat-"))
            print(f"kept in {base}")
        else:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="radsetu-stat-")))
        files = studies(base / "studies", args.slices, args.backlog_mb)
        size = sum(f.stat().st_size for study in files[0] for f in study)
        stat_mb = sum(f.stat().st_size for f in files[1]) / 1e6
        print(f"backlog: {len(files[0])} routine studies, {size / 1e6:.0f} MB; STAT: "
              f"{args.slices} slices, {stat_mb:.1f} MB; the box's TCP congestion control: "
              f"{args.congestion}")  # fmt: skip
        for name in args.profiles.split(","):
            profile, runs = PROFILES[name], {}
            if args.orthanc_only:
                o = orthanc_run(
                    name, profile, files, base / f"{name}-orthanc", args.orthanc_timeout
                )
                print(f"{name} kbit/s, Orthanc peer store (HttpTimeout {args.orthanc_timeout} s):"
                      f" {o['lossless']:.1f} s, {o['instances']} of {args.slices} instances,"
                      f" {o['answer']!r}")  # fmt: skip
                continue
            for mode in ("preview", "lossless"):
                work = base / f"{name}-{mode}"
                runs[mode] = box_run(name, profile, "stat" if mode == "preview" else "off",
                                     files, work, args.congestion,
                                     args.chunk_kib * 1024)  # fmt: skip
                if not args.keep:
                    shutil.rmtree(work, ignore_errors=True)
                print(f"  {name} {mode}: {runs[mode]['lossless']:.1f} s", flush=True)
            if args.skip_orthanc:
                runs["orthanc"] = {"lossless": float("nan"), "instances": 0, "answer": "skipped"}
            else:
                runs["orthanc"] = orthanc_run(
                    name, profile, files, base / f"{name}-orthanc", args.orthanc_timeout
                )
            report(name, profile, runs, args.slices)
    return 0


if __name__ == "__main__":
    sys.exit(main())
