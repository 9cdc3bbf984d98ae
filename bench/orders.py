"""The reading room's list of orders still coming (``hub/orders.py: expected``), which
the worklist page and ``/api/orders/expected`` ask for on every view: how long it takes
on a hub whose clinic has sent many studies.

The index is filled directly (the studies' summaries in ``hub_studies``, as the ingest
writes them once a study is verified, with accession numbers; the orders through
``orders.take``, as the MQTT handler keeps them), in a temporary folder each run;
``--index-url`` runs it on PostgreSQL instead of SQLite. The median of ``--repeat``
calls is printed.

    .venv/bin/python bench/orders.py [--studies 50000] [--orders 200] [--repeat 5]
        [--index-url postgresql://...]

No outside anchor: run it on two versions of the hub to compare them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.clock import iso_ago  # noqa: E402
from hub import orders  # noqa: E402
from hub.store import FileHubStore  # noqa: E402
from wire.messages import OrderNotice  # noqa: E402


def fill(store: FileHubStore, studies: int, count: int) -> None:
    with store.db.atomic():
        for i in range(studies):
            store.db.execute(
                "INSERT INTO hub_studies(study_uid, box_id, patient_name, patient_id, modality,"
                " description, priority, verified_at, accession) VALUES (?,?,?,?,?,?,?,?,?)",
                [f"1.2.{i}", "box-1", "Patient", f"P{i}", "CT", "", "routine", iso_ago(i),
                 f"A{i:09d}"],
            )  # fmt: skip
    for i in range(count):  # half of them met by their study, by UID or by accession
        uid, acc = (f"1.2.{i}", f"B{i:09d}") if i % 4 == 0 else (f"1.3.{i}", f"B{i:09d}")
        if i % 4 == 1:
            acc = f"A{i:09d}"
        orders.take(store, "box-1", OrderNotice(acc, uid, "scheduled", "routine", "CT", "HEAD",
                                                "", "Patient", "P", iso_ago(60)))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=50000)
    ap.add_argument("--orders", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--index-url", default="")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = FileHubStore(Path(tmp) / "hub", index_url=a.index_url)
        fill(store, a.studies, a.orders)
        times, found = [], 0
        for _ in range(a.repeat):
            t = time.perf_counter()
            found = len(orders.expected(store))
            times.append(time.perf_counter() - t)
        store.close()
    engine = "PostgreSQL" if a.index_url else "SQLite"
    print(f"{a.studies} studies of one clinic, {a.orders} orders ({found} still coming), "
          f"{engine}: the list of orders coming in {statistics.median(times) * 1000:.1f} ms "
          f"(median of {a.repeat})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
