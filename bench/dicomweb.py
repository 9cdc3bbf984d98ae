"""DICOMweb's study search on a hub that holds many studies: what a viewer waits for
when it opens one study (``/studies?StudyInstanceUID=...``), and for the study list
(``/studies``), and for its first page as OHIF asks for it (``limit=101``).

The hub: a real ``radsetu hub serve`` (gunicorn, one worker) over a data folder filled
through the ingest with ``--studies`` studies of ``--instances`` real CT slices each
(pydicom's CT_small, 128 x 128, with new UIDs per study and instance, made in a
temporary folder each run). Each search is asked ``--repeat`` times over HTTP with an
API token; the median is printed.

    .venv/bin/python bench/dicomweb.py [--studies 200] [--instances 50] [--repeat 5]
        [--undescribed]

``--undescribed`` measures a hub upgraded from before migration m022, whose index did
not keep each instance's series and modality: its first study list reads every header
and writes them down.

No outside anchor: run it on two versions of the hub to compare them.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit.broker import Broker, Hub  # noqa: E402
from devkit.corpus import pydicom_file  # noqa: E402
from hub.ingest import take_chunk, take_manifest  # noqa: E402
from hub.store import FileHubStore  # noqa: E402
from wire.codec import pack_bytes  # noqa: E402
from wire.manifest import Priority  # noqa: E402


def fill(data_dir: Path, studies: int, instances: int) -> list[str]:
    """The hub's data folder with the studies, through the ingest; their UIDs."""
    store = FileHubStore(data_dir)
    src = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    uids = []
    for n in range(studies):
        study, series = generate_uid(), generate_uid()
        files = []
        for i in range(instances):
            src.StudyInstanceUID, src.SeriesInstanceUID = study, series
            src.SOPInstanceUID = src.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            src.InstanceNumber, src.PatientID = i + 1, f"P{n}"
            buf = io.BytesIO()
            src.save_as(buf)
            files.append((str(src.SOPInstanceUID), buf.getvalue()))
        tid = f"bench{n:06d}"
        m, chunks = pack_bytes(files, chunk_size=1 << 20, transfer_id=tid, box_id="box-1",
                               study_uid=study, priority=Priority.ROUTINE)  # fmt: skip
        take_manifest(store, m.to_json(), "bench")
        for i, c in enumerate(chunks):
            take_chunk(store, tid, i, c, "bench")
        uids.append(study)
    store.close()
    return uids


def forget_series(data_dir: Path) -> None:
    store = FileHubStore(data_dir)
    store.db.execute("UPDATE instances SET series_uid=NULL, modality=NULL, "
                     "series_number=NULL, instance_number=NULL")  # fmt: skip
    store.close()
    print("  every instance's series and modality taken out of the index, as before m022")


def timed(url: str, token: str, repeat: int) -> tuple[float, int]:
    """The median seconds of ``repeat`` GETs, and the answer's length."""
    times, size = [], 0
    for _ in range(repeat):
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as r:
            size = len(r.read())
        times.append(time.perf_counter() - t)
    return statistics.median(times), size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--instances", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--undescribed", action="store_true",
                    help="instances without their series in the index, as a hub upgraded "
                         "from before migration m022 holds them")  # fmt: skip
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="radsetu-dicomweb-") as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker").start()
        hub = Hub(work / "hub", broker.mqtt_config("hub"))
        t = time.perf_counter()
        uids = fill(hub.data_dir, args.studies, args.instances)
        print(f"{args.studies} studies of {args.instances} CT slices (CT_small, new UIDs) "
              f"ingested in {time.perf_counter() - t:.0f} s")  # fmt: skip
        if args.undescribed:
            forget_series(hub.data_dir)
        hub.start()
        try:
            base = f"http://127.0.0.1:{hub.web_port}/dicomweb/studies"
            one = uids[len(uids) // 2]
            for label, url in (
                ("one study by its UID, as a viewer opens it", f"{base}?StudyInstanceUID={one}"),
                ("the study list's first page, as OHIF asks (limit=101)", f"{base}?limit=101"),
                ("the study list", base),
            ):
                first, _ = timed(url, hub.token, 1)
                median, size = timed(url, hub.token, args.repeat)
                print(f"  {label}: first {first * 1000:.0f} ms, then a median of "
                      f"{median * 1000:.0f} ms ({size} bytes)")  # fmt: skip
        finally:
            hub.stop()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
