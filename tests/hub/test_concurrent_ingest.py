"""Several ingest processes take the chunks of one transfer at once (as with shared
subscriptions over several hub machines): every chunk is counted once as held, each
arrival once as received, each second arrival as a duplicate, and the study is kept
once. On PostgreSQL (``--hub-index=postgres``, make test's second pass)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devkit.corpus import data_file, replicate
from hub.ingest import take_manifest
from hub.store import FileHubStore
from wire.codec import pack_bytes
from wire.manifest import Priority

WORKER = """
import json, sys
from pathlib import Path
from hub.ingest import take_chunk
from hub.store import FileHubStore
root, chunks, order = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
store = FileHubStore(root, prepare=False)
for i in order:
    take_chunk(store, "t-conc", i, (chunks / str(i)).read_bytes(), "test")
store.close()
"""


def test_three_processes_take_every_chunk_of_one_transfer_at_once(tmp_path, hub_index):
    if hub_index != "postgres":
        # a SQLite hub runs one ingest process (docs/scale.md): make test runs this
        # test in its PostgreSQL pass, where several processes are what it is for
        pytest.skip("several ingest processes need the PostgreSQL index")
    files = replicate(data_file("693_UNCI.dcm"), tmp_path / "study", 6)
    manifest, chunks = pack_bytes(
        [(f.stem, f.read_bytes()) for f in files],
        chunk_size=16 * 1024,
        box_id="box-c",
        study_uid="1.2.826.0.1.3680043.8.498.77",
        transfer_id="t-conc",
        priority=Priority.ROUTINE,
    )
    assert len(chunks) > 40
    (tmp_path / "chunks").mkdir()
    for i, c in enumerate(chunks):
        (tmp_path / "chunks" / str(i)).write_bytes(c)
    store = FileHubStore(tmp_path / "hub")
    take_manifest(store, manifest.to_json(), "test")
    n = len(chunks)
    orders = [list(range(n)), list(reversed(range(n))), [*range(1, n, 2), *range(0, n, 2)]]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(tmp_path / "hub"),
                str(tmp_path / "chunks"),
                json.dumps(o),
            ]
        )  # fmt: skip
        for o in orders
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]

    (row,) = list(
        store.db.query(
            "SELECT state, chunks_held, chunks_received, duplicates FROM transfers "
            "WHERE transfer_id='t-conc'"
        )
    )
    assert row == {"state": "verified", "chunks_held": n, "chunks_received": 3 * n,
                   "duplicates": 2 * n}  # fmt: skip
    kept = store.study(manifest.study_uid)
    assert sorted(i["sha256"] for i in kept) == sorted(e.sha256 for e in manifest.instances)
    store.close()
